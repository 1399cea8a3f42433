// dsrd's link to etcd, unit by unit against a real etcd: config
// compare-and-set through lost replies, and watch bookkeeping across
// watch-stream reconnects.
#include "cluster_link.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "etcd.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_store.h"

namespace formica::registry {
namespace {

using formica::testing::EtcdCluster;
using ::testing::HasSubstr;

class Ignore : public ClusterLink::Listener {
 public:
  void OnServiceUpdate(const std::string&, uint64_t, bool, std::vector<InstanceChange>) override {}
  void OnConfigUpdate(const StoredConfig&) override {}
  void OnLeaseLost(uint64_t) override {}
};

class ClusterLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdCluster::Start(1);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    ClusterOptions options;
    options.endpoints = {etcd_->endpoint(0)};
    options.prefix = "/unit/";
    options.node_id = "unit";
    options.node_address = "127.0.0.1:1";
    auto link = ClusterLink::Start(options, &listener_);
    ASSERT_TRUE(link.ok()) << link.status();
    link_ = std::move(*link);
    store_ = link_->NewConfigStore();
  }
  void TearDown() override {
    store_.reset();
    link_.reset();
  }

  // Watchers etcd has, from its metrics.
  int Watchers() {
    auto curl = formica::testing::Subprocess::Start(
        {"/usr/bin/curl", "-s", absl::StrCat("http://", etcd_->endpoint(0), "/metrics")},
        dir_.File(absl::StrCat("metrics.", ++fetches_)));
    if (!curl.ok() || (*curl)->Wait(absl::Seconds(10)) != 0) return -1;
    for (absl::string_view line : absl::StrSplit((*curl)->Output(), '\n')) {
      int n = 0;
      if (absl::ConsumePrefix(&line, "etcd_debugging_mvcc_watcher_total ") &&
          absl::SimpleAtoi(line, &n)) {
        return n;
      }
    }
    return -1;
  }
  // Waits until etcd has `n` watchers; the last count seen.
  int WaitWatchers(int n, absl::Duration timeout) {
    absl::Time end = absl::Now() + timeout;
    int seen = Watchers();
    while (seen != n && absl::Now() < end) {
      absl::SleepFor(absl::Milliseconds(100));
      seen = Watchers();
    }
    return seen;
  }

  formica::testing::TempDir dir_;
  int fetches_ = 0;
  std::unique_ptr<EtcdCluster> etcd_;
  Ignore listener_;
  std::unique_ptr<ClusterLink> link_;
  std::unique_ptr<RegistryStore> store_;
};

TEST_F(ClusterLinkTest, ACompareAndSetWhoseReplyWasLostAnswersWithTheVersionItWrote) {
  absl::StatusOr<StoredConfig> first = store_->PutConfig("app.limit", "1", std::nullopt);
  ASSERT_TRUE(first.ok()) << first.status();

  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> second = store_->PutConfig("app.limit", "2", first->version);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GT(second->version, first->version);
  absl::StatusOr<StoredConfig> read = store_->GetConfig("app.limit");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value, "2");
  EXPECT_EQ(read->version, second->version);

  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> deleted = store_->DeleteConfig("app.limit", second->version);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(deleted->exists);
  EXPECT_GT(deleted->version, second->version);
  read = store_->GetConfig("app.limit");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(read->exists);

  // Create-if-absent (expected version 0) the same way.
  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> created = store_->PutConfig("app.fresh", "a", 0);
  ASSERT_TRUE(created.ok()) << created.status();
  read = store_->GetConfig("app.fresh");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->version, created->version);
}

TEST_F(ClusterLinkTest, ARepeatedCompareAndSetStillSeesARealConflict) {
  absl::StatusOr<StoredConfig> first = store_->PutConfig("app.limit", "1", std::nullopt);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<StoredConfig> theirs = store_->PutConfig("app.limit", "2", first->version);
  ASSERT_TRUE(theirs.ok()) << theirs.status();

  // Sent once, refused, its reply lost, sent again: refused again, naming
  // the version someone else wrote.
  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> mine = store_->PutConfig("app.limit", "3", first->version);
  EXPECT_EQ(mine.status().code(), absl::StatusCode::kFailedPrecondition) << mine.status();
  EXPECT_THAT(mine.status().message(),
              HasSubstr(absl::StrCat("is at version ", theirs->version, ", not the expected ",
                                     first->version)));
  // Had the first change after the expected version been this very value,
  // a repeat could not tell whose attempt wrote it; it answers with that
  // version, since what the caller asked for holds.
  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> same = store_->PutConfig("app.limit", "2", first->version);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->version, theirs->version);
  // Without a repeat, a conflict is a conflict.
  absl::StatusOr<StoredConfig> once = store_->PutConfig("app.limit", "2", first->version);
  EXPECT_EQ(once.status().code(), absl::StatusCode::kFailedPrecondition) << once.status();

  link_->DropTxnRepliesForTesting(1);
  absl::StatusOr<StoredConfig> gone = store_->DeleteConfig("app.limit", first->version);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition) << gone.status();
  absl::StatusOr<StoredConfig> read = store_->GetConfig("app.limit");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value, "2");
}

TEST_F(ClusterLinkTest, ARepeatedCompareAndSetExpectingAFutureVersionIsRefusedAtOnce) {
  absl::StatusOr<StoredConfig> first = store_->PutConfig("app.limit", "1", std::nullopt);
  ASSERT_TRUE(first.ok()) << first.status();
  // A version the store has not reached: no change after it exists to wait
  // for, so the repeat is a plain conflict, answered without waiting.
  uint64_t future = first->version + 1000;
  link_->DropTxnRepliesForTesting(1);
  absl::Time start = absl::Now();
  absl::StatusOr<StoredConfig> mine = store_->PutConfig("app.limit", "2", future);
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(mine.status().code(), absl::StatusCode::kFailedPrecondition) << mine.status();
  EXPECT_THAT(mine.status().message(), HasSubstr(absl::StrCat("is at version ", first->version,
                                                              ", not the expected ", future)));
  EXPECT_LT(took, absl::Seconds(2));
  link_->DropTxnRepliesForTesting(1);
  start = absl::Now();
  absl::StatusOr<StoredConfig> gone = store_->DeleteConfig("app.limit", future);
  took = absl::Now() - start;
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition) << gone.status();
  EXPECT_LT(took, absl::Seconds(2));
  absl::StatusOr<StoredConfig> read = store_->GetConfig("app.limit");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->value, "1");
}

// A watch dropped while its create, sent again on a fresh watch stream, is
// not answered yet: the cancel waits for etcd's answer, so etcd is left no
// watcher that nobody cancels.
TEST_F(ClusterLinkTest, AnUnwatchDuringAWatchStreamReconnectLeavesEtcdNoWatcher) {
  int base = Watchers();
  ASSERT_GE(base, 0) << "etcd's metrics name no watcher count";
  link_->WatchService("svc.a");
  ASSERT_EQ(WaitWatchers(base + 1, absl::Seconds(10)), base + 1);

  absl::Notification reconnected, release;
  link_->BreakWatchStreamForTesting([&] {
    reconnected.Notify();
    release.WaitForNotification();
  });
  ASSERT_TRUE(reconnected.WaitForNotificationWithTimeout(absl::Seconds(10)));
  link_->UnwatchService("svc.a");
  absl::SleepFor(absl::Milliseconds(300));  // a cancel sent now would overtake the create
  release.Notify();
  EXPECT_EQ(WaitWatchers(base, absl::Seconds(10)), base);

  // Watching again works as before.
  link_->WatchService("svc.a");
  EXPECT_EQ(WaitWatchers(base + 1, absl::Seconds(10)), base + 1);
  link_->UnwatchService("svc.a");
  EXPECT_EQ(WaitWatchers(base, absl::Seconds(10)), base);
}

}  // namespace
}  // namespace formica::registry
