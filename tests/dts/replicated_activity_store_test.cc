// ReplicatedActivityStore on a RaftNode group of one, in-process, over real
// RocksDB stores (docs/ha.md, "dtsd replicated"): writes are taken only
// while open, a sync answers once the buffered writes are committed and
// applied, reads see the engine's own writes, epochs grow, and a snapshot
// restores the same activities into another member's store.
#include <gtest/gtest.h>

#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_store.h"
#include "formica/internal/raft_node.h"
#include "group_commit.h"
#include "process.h"
#include "replicated_activity_store.h"

namespace formica::dts {
namespace {

using formica::testing::PickFreePort;
using formica::testing::TempDir;

v1::Activity Decided(const std::string& id, int actions) {
  v1::Activity a;
  a.set_id(id);
  a.set_name("test.Transfer");
  a.set_state(v1::COMMITTING);
  for (int i = 0; i < actions; ++i) {
    v1::Action* x = a.add_actions();
    x->set_participant("bank.a");
    x->set_name(absl::StrCat("debit-", i));
    x->set_payload(std::string(100, 'p'));
    x->set_state(v1::ENLISTED);
  }
  return a;
}

class ReplicatedStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto local = OpenRocksDbActivityStore(dir_.File("applied"));
    ASSERT_TRUE(local.ok()) << local.status();
    store_ = std::make_unique<ReplicatedActivityStore>(*std::move(local), 1);
    RaftNodeOptions o;
    o.node_id = 1;
    o.peers = {{1, absl::StrCat("127.0.0.1:", PickFreePort())}};
    o.data_dir = dir_.File("raft");
    o.election_timeout = absl::Milliseconds(200);
    o.heartbeat = absl::Milliseconds(50);
    auto node = RaftNode::Start(o, store_.get());
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    store_->Attach(node_.get());
    for (absl::Time limit = absl::Now() + absl::Seconds(10); absl::Now() < limit;) {
      if (node_->status().leader_ready) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "a group of one never became a ready leader";
  }
  void TearDown() override {
    if (node_ != nullptr) node_->Stop();
  }

  TempDir dir_;
  std::unique_ptr<ReplicatedActivityStore> store_;
  std::unique_ptr<RaftNode> node_;
};

TEST_F(ReplicatedStoreTest, RefusesWritesUntilOpenedAndAfterClosedNamingWhy) {
  absl::Status st = store_->PutWithActions(Decided("a", 1), 0, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  store_->OpenForWrites(node_->status().term);
  ASSERT_TRUE(store_->PutWithActions(Decided("a", 1), 0, true).ok());
  ASSERT_TRUE(store_->PutWithActions(Decided("b", 1), 0, false).ok());
  store_->CloseForWrites("the leader is raft member 2");
  st = store_->Sync();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(), "the leader is raft member 2");
  // What was buffered when it closed was dropped, never proposed.
  auto b = store_->Get("b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->has_value());
  EXPECT_TRUE((*store_->Get("a")).has_value());
}

TEST_F(ReplicatedStoreTest, ASyncCarriesEveryBufferedWriteInOneEntryAndReadsSeeThem) {
  store_->OpenForWrites(node_->status().term);
  for (int i = 0; i < 20; ++i) {
    v1::Activity a = Decided(absl::StrCat("act-", i), 2);
    ASSERT_TRUE(store_->PutAction(a.id(), 0, a.actions(0), false).ok());
    ASSERT_TRUE(store_->PutWithActions(a, 1, false).ok());
  }
  uint64_t before = store_->syncs();
  // A read of an activity with writes not applied yet waits for them.
  auto read = store_->Get("act-7");
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ((*read)->actions_size(), 2);
  EXPECT_EQ((*read)->actions(0).payload(), std::string(100, 'p'));
  EXPECT_EQ(store_->syncs(), before + 1) << "one entry for the 40 buffered writes";
  ASSERT_TRUE(store_->Delete("act-3").ok());
  ASSERT_TRUE(store_->Sync().ok());
  int count = 0;
  ASSERT_TRUE(store_
                  ->Scan([&](const v1::Activity&) {
                    ++count;
                    return true;
                  })
                  .ok());
  EXPECT_EQ(count, 19);
}

TEST_F(ReplicatedStoreTest, AWriteWhoseEntryFailsIsNotAcknowledgedAndLaterWritesAreRefused) {
  store_->OpenForWrites(node_->status().term);
  ASSERT_TRUE(store_->PutWithActions(Decided("a", 1), 0, true).ok());
  node_->Stop();  // what is proposed from now on fails, as on a lost leadership
  absl::Status st = store_->PutWithActions(Decided("b", 1), 0, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("did not commit"), absl::string_view::npos) << st;
  st = store_->PutWithActions(Decided("c", 1), 0, false);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_FALSE((*store_->Get("b")).has_value());
}

TEST_F(ReplicatedStoreTest, EachEpochIsGreaterThanTheLast) {
  store_->SetApiAddress("127.0.0.1:7380");
  store_->OpenForWrites(node_->status().term);
  const uint64_t now = static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
  auto first = store_->NextBootEpoch();
  ASSERT_TRUE(first.ok()) << first.status();
  // At least the wall-clock second, not the entry's index: a group created
  // afresh does not issue the ids an earlier group did.
  EXPECT_GE(*first, now);
  ASSERT_TRUE(store_->PutWithActions(Decided("a", 1), 0, true).ok());
  auto second = store_->NextBootEpoch();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(*second, *first);
  EXPECT_EQ(store_->ApiAddressOf(1), "127.0.0.1:7380");
}

TEST_F(ReplicatedStoreTest, ASnapshotRestoresTheSameActivitiesIntoAnotherMembersStore) {
  store_->SetApiAddress("127.0.0.1:7380");
  store_->OpenForWrites(node_->status().term);
  ASSERT_TRUE(store_->NextBootEpoch().ok());
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(store_->PutWithActions(Decided(absl::StrCat("s-", i), 3), 0, false).ok());
  ASSERT_TRUE(store_->Sync().ok());
  absl::StatusOr<std::string> snapshot = store_->Snapshot();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  // Another member's store, holding something the snapshot does not.
  auto local = OpenRocksDbActivityStore(dir_.File("other"));
  ASSERT_TRUE(local.ok());
  ASSERT_TRUE((*local)->PutWithActions(Decided("stale", 1), 0, true).ok());
  ReplicatedActivityStore other(*std::move(local), 2);
  ASSERT_TRUE(other.Restore(*snapshot).ok());
  EXPECT_FALSE((*other.Get("stale")).has_value());
  for (int i = 0; i < 5; ++i) {
    auto a = other.Get(absl::StrCat("s-", i));
    ASSERT_TRUE(a.ok() && a->has_value()) << i;
    EXPECT_EQ((*a)->actions_size(), 3);
    EXPECT_EQ((*a)->actions(2).payload(), std::string(100, 'p'));
  }
  EXPECT_EQ(other.ApiAddressOf(1), "127.0.0.1:7380");
  // The last epoch travels in the snapshot: an epoch entry applied after it
  // (its proposer's clock behind) still gives a greater epoch.
  auto field = [](absl::string_view f) {
    std::string out;
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((f.size() >> (8 * i)) & 0xff));
    return out.append(f.data(), f.size());
  };
  auto first = store_->NextBootEpoch();
  ASSERT_TRUE(first.ok()) << first.status();
  snapshot = store_->Snapshot();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_TRUE(other.Restore(*snapshot).ok());
  std::string behind = "E" + field("2") + field("127.0.0.1:7381") + field("1");
  EXPECT_EQ(other.Apply(1000000, behind), absl::StrCat(*first + 1));
  EXPECT_EQ(other.Restore("not a snapshot").code(), absl::StatusCode::kDataLoss);
}

TEST_F(ReplicatedStoreTest, WritesOpenedForAnotherTermAreNeverAppended) {
  const uint64_t term = node_->status().term;
  store_->OpenForWrites(term + 1);  // a leadership this member no longer holds
  absl::Status st = store_->PutWithActions(Decided("a", 1), 0, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_FALSE(store_->writable()) << "a failed proposal must close the store";
  store_->OpenForWrites(term);
  ASSERT_TRUE(store_->Sync().ok());
  EXPECT_FALSE((*store_->Get("a")).has_value()) << "a write of another term was appended";
  ASSERT_TRUE(store_->PutWithActions(Decided("b", 1), 0, true).ok());
  EXPECT_TRUE((*store_->Get("b")).has_value());
}

TEST_F(ReplicatedStoreTest, AGroupCommitWaiterWhoseWriteWasDroppedIsNeverAnsweredOk) {
  const uint64_t term = node_->status().term;
  store_->OpenForWrites(term);
  GroupCommit commit(store_.get(), /*abort_on_failure=*/false);
  ASSERT_TRUE(store_->PutWithActions(Decided("dropped", 1), 0, false).ok());
  absl::Mutex mu;
  std::optional<absl::Status> answer;
  commit.AfterSync([&](const absl::Status& synced) {
    absl::MutexLock l(&mu);
    answer = synced;
  });
  // The leadership ends (its buffer dropped) and is won again before the
  // syncer thread gets to the waiter.
  store_->CloseForWrites("stepped down");
  store_->OpenForWrites(term);
  commit.Start();
  {
    absl::MutexLock l(&mu);
    mu.Await(absl::Condition(
        +[](std::optional<absl::Status>* a) { return a->has_value(); }, &answer));
    EXPECT_EQ(answer->code(), absl::StatusCode::kUnavailable) << *answer;
  }
  commit.Stop();
  EXPECT_FALSE((*store_->Get("dropped")).has_value());
}

}  // namespace
}  // namespace formica::dts
