// GroupProgress on a real RocksDB: acks survive reopen, fold into the
// committed offset, and a cursor rebuilt from them delivers again exactly
// what was not acked.
#include "group_progress.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <atomic>
#include <thread>

#include "formica/internal/rocksdb.h"
#include "group_cursor.h"
#include "process.h"

namespace formica::dms {
namespace {

using formica::testing::TempDir;

TEST(GroupProgress, AcksSurviveReopenAndARebuiltCursorRedeliversOnlyTheUnacked) {
  TempDir dir;
  const absl::Time now = absl::FromUnixSeconds(1000000);
  {
    auto progress = GroupProgress::Open(dir.File("progress"));
    ASSERT_TRUE(progress.ok()) << progress.status();
    CursorOptions o;
    o.max_in_flight = 10;
    GroupCursor cursor(o, 0);
    ASSERT_EQ(cursor.Next(10, now, 10).deliveries.size(), 10u);
    for (uint64_t offset : {0, 1, 2, 5, 7}) {  // 3, 4, 6, 8, 9 were out when the broker died
      ASSERT_TRUE(cursor.Ack(offset).ok());
      ASSERT_TRUE((*progress)->Ack("billing", "orders", 3, offset, cursor.committed()).ok());
    }
    EXPECT_EQ(cursor.committed(), 3u);
  }
  auto progress = GroupProgress::Open(dir.File("progress"));
  ASSERT_TRUE(progress.ok());
  auto loaded = (*progress)->Load("billing", "orders", 3);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->committed, 3u);
  EXPECT_EQ(loaded->acked, (std::set<uint64_t>{5, 7})) << "acks below 3 folded into it";
  auto other = (*progress)->Load("billing", "orders", 2);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->committed, 0u);
  EXPECT_TRUE(other->acked.empty());

  CursorOptions o;
  o.max_in_flight = 10;
  GroupCursor cursor(o, loaded->committed, loaded->acked);
  std::vector<uint64_t> again;
  for (const Delivery& d : cursor.Next(10, now, 10).deliveries) again.push_back(d.offset);
  EXPECT_EQ(again, (std::vector<uint64_t>{3, 4, 6, 8, 9})) << "never an acked one";
}

TEST(GroupProgress, ConcurrentAcksOfOneQueueNeverMoveTheCommittedOffsetBack) {
  TempDir dir;
  auto progress = GroupProgress::Open(dir.File("progress"));
  ASSERT_TRUE(progress.ok());
  absl::Mutex mu;
  GroupCursor cursor(CursorOptions{}, 0);
  {
    absl::MutexLock lock(&mu);
    CursorOptions o;
    o.max_in_flight = 1000;
    cursor = GroupCursor(o, 0);
    ASSERT_EQ(cursor.Next(800, absl::Now(), 1000).deliveries.size(), 800u);
  }
  std::vector<std::thread> consumers;
  for (int t = 0; t < 8; ++t) {
    consumers.emplace_back([&, t] {
      for (uint64_t offset = t; offset < 800; offset += 8) {
        uint64_t committed;
        {
          absl::MutexLock lock(&mu);
          ASSERT_TRUE(cursor.Ack(offset).ok());
          committed = cursor.committed();
        }
        ASSERT_TRUE((*progress)->Ack("g", "t", 0, offset, committed).ok());
      }
    });
  }
  for (auto& c : consumers) c.join();
  auto loaded = (*progress)->Load("g", "t", 0);
  ASSERT_TRUE(loaded.ok());
  // Whatever order the writes landed in, nothing acked is missing.
  for (uint64_t o = 0; o < 800; ++o) {
    EXPECT_TRUE(o < loaded->committed || loaded->acked.count(o)) << o << " was acked";
  }
}

TEST(GroupProgress, AnAckComputedEarlierButWrittenLaterDoesNotMoveCommittedBack) {
  TempDir dir;
  auto progress = GroupProgress::Open(dir.File("progress"));
  ASSERT_TRUE(progress.ok());
  // Two consumers acked 0 then 1; the second write lands first.
  ASSERT_TRUE((*progress)->Ack("g", "t", 0, 1, /*committed=*/2).ok());
  ASSERT_TRUE((*progress)->Ack("g", "t", 0, 0, /*committed=*/1).ok());
  auto loaded = (*progress)->Load("g", "t", 0);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->committed, 2u) << "offset 1 was acked; it must not come back";
  EXPECT_TRUE(loaded->acked.empty());
}

// Counts the batches written; each one is an entry of a broker group's log.
class CountingWrites : public DbWrites {
 public:
  absl::Status Write(rocksdb::DB* db, rocksdb::WriteBatch* batch, bool sync) override {
    ++writes;
    return DirectDbWrites()->Write(db, batch, sync);
  }
  bool durable() const override { return true; }
  std::atomic<int> writes{0};
};

TEST(GroupProgress, AcksOfSeveralQueuesGoOutAsOneWrite) {
  TempDir dir;
  auto db = OpenRocksDb(dir.File("progress"), "the group progress store");
  ASSERT_TRUE(db.ok()) << db.status();
  CountingWrites writes;
  std::unique_ptr<GroupProgress> progress = GroupProgress::Over(db->get(), &writes);
  std::map<int, GroupProgress::QueueAcks> acks;
  acks[0] = {{0, 1, 2}, 3};
  acks[3] = {{5}, 0};
  acks[7] = {{}, 4};
  ASSERT_TRUE(progress->AckQueues("g", "t", acks).ok());
  EXPECT_EQ(writes.writes.load(), 1) << "one batch (one log entry) for three queues";
  auto q0 = progress->Load("g", "t", 0);
  auto q3 = progress->Load("g", "t", 3);
  auto q7 = progress->Load("g", "t", 7);
  ASSERT_TRUE(q0.ok() && q3.ok() && q7.ok());
  EXPECT_EQ(q0->committed, 3u);
  EXPECT_TRUE(q0->acked.empty());
  EXPECT_EQ(q3->committed, 0u);
  EXPECT_EQ(q3->acked, (std::set<uint64_t>{5}));
  EXPECT_EQ(q7->committed, 4u);
}

TEST(GroupProgress, ConcurrentAcksOfOverlappingQueuesNeitherDeadlockNorMoveCommittedBack) {
  TempDir dir;
  auto progress = GroupProgress::Open(dir.File("progress"));
  ASSERT_TRUE(progress.ok());
  constexpr int kRounds = 300;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 1; i <= kRounds; ++i) {
        // Each thread names a different set of queues, each in its own order
        // of arrival; committed offsets only grow.
        std::map<int, GroupProgress::QueueAcks> acks;
        for (int q = t; q < t + 3; ++q) acks[q % 4] = {{}, static_cast<uint64_t>(i)};
        ASSERT_TRUE((*progress)->AckQueues("g", "t", acks).ok());
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int q = 0; q < 4; ++q) {
    auto loaded = (*progress)->Load("g", "t", q);
    ASSERT_TRUE(loaded.ok());
    EXPECT_EQ(loaded->committed, static_cast<uint64_t>(kRounds)) << "queue " << q;
  }
}

}  // namespace
}  // namespace formica::dms
