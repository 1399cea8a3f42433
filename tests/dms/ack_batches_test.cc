// AckBatches: a Consume stream's requests waiting for the settle in
// progress are merged in arrival order; the wait is bounded; what is left
// after the stream ends is still settled, and nothing after a failed settle.
#include "ack_batches.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"

namespace formica::dms {
namespace {

v1::ConsumeRequest Acks(std::vector<uint64_t> offsets, std::vector<uint64_t> retries = {}) {
  v1::ConsumeRequest req;
  for (uint64_t o : offsets) req.add_acks()->set_offset(o);
  for (uint64_t o : retries) req.add_retries()->set_offset(o);
  return req;
}

std::vector<uint64_t> AckOffsets(const v1::ConsumeRequest& req) {
  std::vector<uint64_t> out;
  for (const v1::MessageRef& r : req.acks()) out.push_back(r.offset());
  return out;
}

TEST(AckBatches, RequestsThatWaitedAreTakenAsOneInArrivalOrder) {
  AckBatches batches(1000, 1 << 20);
  ASSERT_TRUE(batches.Push(Acks({1, 2})));
  ASSERT_TRUE(batches.Push(Acks({}, {3})));
  ASSERT_TRUE(batches.Push(Acks({4})));
  v1::ConsumeRequest merged;
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(AckOffsets(merged), (std::vector<uint64_t>{1, 2, 4}));
  ASSERT_EQ(merged.retries_size(), 1);
  EXPECT_EQ(merged.retries(0).offset(), 3u);
  ASSERT_TRUE(batches.Push(Acks({5})));
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(AckOffsets(merged), (std::vector<uint64_t>{5})) << "the last take is not repeated";
}

TEST(AckBatches, WhatWaitsWhenTheStreamEndsIsStillTakenThenTakeEnds) {
  AckBatches batches(1000, 1 << 20);
  ASSERT_TRUE(batches.Push(Acks({7})));
  batches.Finish();
  v1::ConsumeRequest merged;
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(AckOffsets(merged), (std::vector<uint64_t>{7}));
  EXPECT_FALSE(batches.Take(&merged));
}

TEST(AckBatches, APushWaitsWhileTheWaitingRequestsHoldTheLimit) {
  AckBatches batches(2, 1 << 20);
  ASSERT_TRUE(batches.Push(Acks({1, 2})));
  std::atomic<bool> pushed{false};
  std::thread reader([&] {
    EXPECT_TRUE(batches.Push(Acks({3})));
    pushed = true;
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(pushed.load()) << "two refs wait: the limit";
  v1::ConsumeRequest merged;
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(AckOffsets(merged), (std::vector<uint64_t>{1, 2}));
  reader.join();
  EXPECT_TRUE(pushed.load());
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(AckOffsets(merged), (std::vector<uint64_t>{3}));
}

// A request counts one at least, and its bytes count too: requests
// without acks, or carrying little else than bytes, cannot pile up unbounded.
TEST(AckBatches, RequestsCountOneAtLeastAndTheirBytesCountToo) {
  AckBatches by_count(2, 1 << 20);
  ASSERT_TRUE(by_count.Push(v1::ConsumeRequest()));
  ASSERT_TRUE(by_count.Push(v1::ConsumeRequest()));
  std::atomic<bool> third{false};
  std::thread reader([&] {
    EXPECT_TRUE(by_count.Push(v1::ConsumeRequest()));
    third = true;
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(third.load()) << "two empty requests wait: the limit";
  v1::ConsumeRequest merged;
  ASSERT_TRUE(by_count.Take(&merged));
  reader.join();

  AckBatches by_bytes(1000, 64);
  v1::ConsumeRequest big;
  for (int i = 0; i < 20; ++i) big.add_acks()->set_offset(1000000 + i);
  ASSERT_GT(big.ByteSizeLong(), 64u);
  ASSERT_TRUE(by_bytes.Push(big));
  std::atomic<bool> second{false};
  std::thread writer([&] {
    EXPECT_TRUE(by_bytes.Push(Acks({1})));
    second = true;
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(second.load()) << "the waiting request holds more than the byte limit";
  ASSERT_TRUE(by_bytes.Take(&merged));
  EXPECT_EQ(merged.acks_size(), 20);
  writer.join();
  EXPECT_TRUE(second.load());
}

TEST(AckBatches, ARequestLargerThanTheLimitIsTakenWhenNothingWaits) {
  AckBatches batches(2, 1 << 20);
  ASSERT_TRUE(batches.Push(Acks({1, 2, 3, 4})));
  v1::ConsumeRequest merged;
  ASSERT_TRUE(batches.Take(&merged));
  EXPECT_EQ(merged.acks_size(), 4);
}

TEST(AckBatches, AfterAFailedSettleWhatWaitsIsDroppedAndPushesAreRefused) {
  AckBatches batches(1, 1 << 20);
  ASSERT_TRUE(batches.Push(Acks({1})));
  std::atomic<int> refused{0};
  std::thread reader([&] {
    if (!batches.Push(Acks({2}))) ++refused;  // waits: the limit is reached
  });
  absl::SleepFor(absl::Milliseconds(100));
  batches.Abandon();
  reader.join();
  EXPECT_EQ(refused.load(), 1) << "Abandon frees a waiting push";
  EXPECT_FALSE(batches.Push(Acks({3})));
  v1::ConsumeRequest merged;
  EXPECT_FALSE(batches.Take(&merged)) << "nothing is settled after a failed settle";
}

}  // namespace
}  // namespace formica::dms
