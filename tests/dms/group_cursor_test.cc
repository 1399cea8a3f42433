// GroupCursor with time under the test's control: flow control, acks in
// any order, redelivery after an ack timeout, retry-later backoff, dead
// letters after the last attempt, and one-at-a-time ordered delivery.
#include "group_cursor.h"

#include <gtest/gtest.h>

namespace formica::dms {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000000);

std::vector<uint64_t> Offsets(const NextBatch& b) {
  std::vector<uint64_t> out;
  for (const Delivery& d : b.deliveries) out.push_back(d.offset);
  return out;
}

CursorOptions Options() {
  CursorOptions o;
  o.ack_timeout = absl::Seconds(10);
  o.max_in_flight = 3;
  o.max_attempts = 3;
  o.retry_initial = absl::Seconds(1);
  o.retry_max = absl::Seconds(60);
  return o;
}

TEST(GroupCursor, DeliversInOrderWithinTheInFlightLimitAndCommitsContiguousAcks) {
  GroupCursor c(Options(), 5);
  EXPECT_EQ(Offsets(c.Next(10, kT0, 100)), (std::vector<uint64_t>{5, 6, 7}));
  EXPECT_TRUE(c.Next(10, kT0, 100).deliveries.empty()) << "three out: the limit";
  EXPECT_EQ(c.Lag(10), 5u);
  ASSERT_TRUE(c.Ack(6).ok());  // out of order
  EXPECT_EQ(c.committed(), 5u) << "5 is not acked yet";
  EXPECT_EQ(Offsets(c.Next(10, kT0, 100)), (std::vector<uint64_t>{8}));
  ASSERT_TRUE(c.Ack(5).ok());
  EXPECT_EQ(c.committed(), 7u);
  ASSERT_TRUE(c.Ack(5).ok()) << "a repeated ack is fine";
  EXPECT_EQ(c.Ack(9).code(), absl::StatusCode::kNotFound) << "never delivered";
  EXPECT_EQ(c.Lag(10), 3u);  // 7, 8 out; 9 not delivered
}

TEST(GroupCursor, AnUnackedMessageGoesOutAgainAfterItsTimeoutNotBefore) {
  GroupCursor c(Options(), 0);
  ASSERT_EQ(Offsets(c.Next(1, kT0, 10)), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(c.Next(1, kT0 + absl::Seconds(9), 10).deliveries.empty());
  NextBatch again = c.Next(1, kT0 + absl::Seconds(10), 10);
  ASSERT_EQ(again.deliveries.size(), 1u);
  EXPECT_EQ(again.deliveries[0].offset, 0u);
  EXPECT_EQ(again.deliveries[0].attempt, 2);
  ASSERT_TRUE(c.Ack(0).ok()) << "an ack from either delivery settles it";
  EXPECT_EQ(c.committed(), 1u);
}

TEST(GroupCursor, RetryLaterBacksOffThenDeadLettersAfterTheLastAttempt) {
  GroupCursor c(Options(), 0);
  ASSERT_EQ(c.Next(2, kT0, 1).deliveries.size(), 1u);  // offset 0, attempt 1
  ASSERT_TRUE(*c.RetryLater(0, kT0));
  // Due after 1 s; meanwhile offset 1 goes out.
  EXPECT_EQ(Offsets(c.Next(2, kT0 + absl::Milliseconds(999), 10)), (std::vector<uint64_t>{1}));
  ASSERT_TRUE(c.Ack(1).ok());
  NextBatch second = c.Next(2, kT0 + absl::Seconds(1), 10);
  ASSERT_EQ(second.deliveries.size(), 1u);
  EXPECT_EQ(second.deliveries[0].attempt, 2);
  ASSERT_TRUE(*c.RetryLater(0, kT0 + absl::Seconds(1)));
  EXPECT_TRUE(c.Next(2, kT0 + absl::Seconds(2), 10).deliveries.empty()) << "2 s backoff now";
  NextBatch third = c.Next(2, kT0 + absl::Seconds(3), 10);
  ASSERT_EQ(third.deliveries.size(), 1u);
  EXPECT_EQ(third.deliveries[0].attempt, 3);
  auto fate = c.RetryLater(0, kT0 + absl::Seconds(3));
  ASSERT_TRUE(fate.ok());
  EXPECT_FALSE(*fate) << "third attempt used: dead letter";
  EXPECT_EQ(c.committed(), 2u) << "a dead letter counts as handled here";
  EXPECT_EQ(c.RetryLater(0, kT0).status().code(), absl::StatusCode::kNotFound);
}

TEST(GroupCursor, TimeoutsAlsoCountTowardTheDeadLetterQueue) {
  GroupCursor c(Options(), 0);
  absl::Time t = kT0;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    NextBatch b = c.Next(1, t, 10);
    ASSERT_EQ(b.deliveries.size(), 1u) << attempt;
    EXPECT_EQ(b.deliveries[0].attempt, attempt);
    t += absl::Seconds(10);
  }
  NextBatch last = c.Next(1, t, 10);
  EXPECT_TRUE(last.deliveries.empty());
  EXPECT_EQ(last.dead_letters, (std::vector<uint64_t>{0}));
  EXPECT_EQ(c.committed(), 1u);
  EXPECT_EQ(c.in_flight(), 0u);
}

TEST(GroupCursor, OrderedDeliveryHoldsNewerMessagesWhileTheOldestWaits) {
  CursorOptions o = Options();
  o.ordered = true;
  GroupCursor c(o, 0);
  EXPECT_EQ(Offsets(c.Next(5, kT0, 10)), (std::vector<uint64_t>{0})) << "one at a time";
  EXPECT_TRUE(c.Next(5, kT0, 10).deliveries.empty());
  ASSERT_TRUE(*c.RetryLater(0, kT0));
  EXPECT_TRUE(c.Next(5, kT0 + absl::Milliseconds(500), 10).deliveries.empty())
      << "1 must not overtake 0 while 0 waits for its retry";
  EXPECT_EQ(Offsets(c.Next(5, kT0 + absl::Seconds(1), 10)), (std::vector<uint64_t>{0}));
  ASSERT_TRUE(c.Ack(0).ok());
  EXPECT_EQ(Offsets(c.Next(5, kT0 + absl::Seconds(1), 10)), (std::vector<uint64_t>{1}));
}

TEST(GroupCursor, ADelayedMessageHoldsNoOneUpInOrderedModeAndComesWhenDue) {
  CursorOptions o = Options();
  o.ordered = true;
  o.max_in_flight = 1;
  GroupCursor c(o, 0);
  EXPECT_EQ(Offsets(c.Next(3, kT0, 10)), (std::vector<uint64_t>{0}));
  ASSERT_TRUE(c.Defer(0, kT0 + absl::Seconds(30)).ok());  // not due for 30 s
  EXPECT_EQ(c.in_flight(), 0u);
  EXPECT_EQ(Offsets(c.Next(3, kT0, 10)), (std::vector<uint64_t>{1}));
  ASSERT_TRUE(c.Ack(1).ok());
  EXPECT_EQ(Offsets(c.Next(3, kT0, 10)), (std::vector<uint64_t>{2}));
  ASSERT_TRUE(c.Ack(2).ok());
  EXPECT_EQ(c.committed(), 0u) << "0 is not acked yet";
  EXPECT_TRUE(c.Next(3, kT0 + absl::Seconds(29), 10).deliveries.empty()) << "not before its time";
  NextBatch due = c.Next(3, kT0 + absl::Seconds(30), 10);
  ASSERT_EQ(Offsets(due), (std::vector<uint64_t>{0}));
  EXPECT_EQ(due.deliveries[0].attempt, 1) << "waiting for its time is not an attempt";
  // Once delivered it is an ordinary message: a retry holds newer ones up.
  EXPECT_TRUE(*c.RetryLater(0, kT0 + absl::Seconds(30)));
  EXPECT_TRUE(c.Next(4, kT0 + absl::Seconds(30), 10).deliveries.empty());
  EXPECT_EQ(Offsets(c.Next(4, kT0 + absl::Seconds(32), 10)), (std::vector<uint64_t>{0}));
}

TEST(GroupCursor, AReleasedMessageIsDueAtOnceWithoutUsingAnAttempt) {
  GroupCursor c(Options(), 0);
  EXPECT_EQ(Offsets(c.Next(2, kT0, 10)), (std::vector<uint64_t>{0, 1}));
  c.Release(1, kT0);  // its consumer went away
  NextBatch again = c.Next(2, kT0, 10);
  ASSERT_EQ(Offsets(again), (std::vector<uint64_t>{1}));
  EXPECT_EQ(again.deliveries[0].attempt, 1);
  EXPECT_TRUE(c.WasDelivered(1));
  EXPECT_FALSE(c.WasDelivered(2));
}

TEST(GroupCursor, AnAbandonedMessageUsesAnAttemptAndIsDeadAfterTheLast) {
  CursorOptions o = Options();
  o.max_attempts = 3;
  GroupCursor c(o, 0);
  for (int attempt = 1; attempt <= 3; ++attempt) {
    NextBatch b = c.Next(1, kT0, 10);
    ASSERT_EQ(Offsets(b), (std::vector<uint64_t>{0}));
    EXPECT_EQ(b.deliveries[0].attempt, attempt);
    absl::StatusOr<bool> again = c.Abandon(0, kT0);  // its consumer died
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, attempt < 3);
  }
  EXPECT_TRUE(c.Next(1, kT0, 10).deliveries.empty());
  EXPECT_EQ(c.committed(), 1u) << "dead-lettered: counted as acked";
  EXPECT_TRUE(absl::IsNotFound(c.Abandon(0, kT0).status()));
}

}  // namespace
}  // namespace formica::dms
