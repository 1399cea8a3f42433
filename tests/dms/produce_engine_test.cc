// ProduceEngine and the dedup index with a fake clock, without a daemon and
// over an in-memory DedupStore: a dedup key sent again within the window is
// answered with the first send's receipt, and once the window has passed
// the message is stored again.
#include "produce_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "dedup_index.h"
#include "dedup_store.h"
#include "disk_watermark.h"
#include "formica/common/clock.h"
#include "group_progress.h"
#include "process.h"
#include "topic_catalog.h"

namespace formica::dms {
namespace {

using formica::testing::TempDir;

constexpr absl::Duration kWindow = absl::Minutes(10);

// The dedup index in memory: the seam the engine is tested through.
class MemoryDedupStore : public DedupStore {
 public:
  absl::StatusOr<std::optional<DedupEntry>> Find(absl::string_view topic,
                                                 absl::string_view key) override {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find({std::string(topic), std::string(key)});
    if (it == entries_.end()) return std::nullopt;
    return it->second;
  }
  absl::StatusOr<std::optional<uint64_t>> Mark(absl::string_view topic, int queue) override {
    absl::MutexLock lock(&mu_);
    auto it = marks_.find({std::string(topic), queue});
    if (it == marks_.end()) return std::nullopt;
    return it->second;
  }
  absl::Status Index(absl::string_view topic,
                     const std::vector<std::pair<std::string, DedupEntry>>& entries,
                     const std::map<int, uint64_t>& marks) override {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, e] : entries) entries_[{std::string(topic), key}] = e;
    for (const auto& [q, mark] : marks) marks_[{std::string(topic), q}] = mark;
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> ForgetFrom(absl::string_view topic,
                                    const std::map<int, uint64_t>& lost_from) override {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto lost = lost_from.find(it->second.queue);
      if (it->first.first == topic && lost != lost_from.end() &&
          it->second.offset >= lost->second) {
        it = entries_.erase(it);
        ++n;
      } else {
        ++it;
      }
    }
    return n;
  }
  void Sweep(int64_t oldest_unix_ms) override {
    absl::MutexLock lock(&mu_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.born_unix_ms < oldest_unix_ms ? entries_.erase(it) : std::next(it);
    }
  }

  size_t size() {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }

 private:
  absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, DedupEntry> entries_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, int>, uint64_t> marks_ ABSL_GUARDED_BY(mu_);
};

class DmsProduce : public ::testing::Test {
 protected:
  void SetUp() override {
    auto progress = GroupProgress::Open(dir_.File("progress"));
    ASSERT_TRUE(progress.ok()) << progress.status();
    progress_ = *std::move(progress);
    dedup_ = std::make_unique<DedupIndex>(&store_, &clock_, kWindow);
    CatalogOptions co;
    co.data_dir = dir_.path();
    co.sync = false;
    topics_ = std::make_unique<TopicCatalog>(co, progress_.get(), dedup_.get(), &clock_);
    ASSERT_TRUE(topics_->Open("orders", 4).ok());
    engine_ = std::make_unique<ProduceEngine>(ProduceOptions(), topics_.get(), dedup_.get(), &disk_,
                                              &clock_);
  }

  // Sends one message with `dedup_key`; its receipt.
  v1::Receipt Send(const std::string& body, const std::string& dedup_key) {
    v1::ProduceRequest req;
    req.set_topic("orders");
    v1::Message* m = req.add_messages();
    m->set_body(body);
    m->set_dedup_key(dedup_key);
    v1::ProduceReply reply;
    absl::Notification done;
    absl::Status result;
    engine_->Produce(req, &reply, [&](absl::Status st) {
      result = st;
      done.Notify();
    });
    done.WaitForNotification();
    EXPECT_TRUE(result.ok()) << result;
    return reply.receipts_size() == 1 ? reply.receipts(0) : v1::Receipt();
  }

  TempDir dir_;
  FakeClock clock_;
  MemoryDedupStore store_;
  DiskWatermark disk_{"/", 1.0};  // never checked: produce is never refused
  std::unique_ptr<GroupProgress> progress_;
  std::unique_ptr<DedupIndex> dedup_;
  std::unique_ptr<TopicCatalog> topics_;
  std::unique_ptr<ProduceEngine> engine_;
};

TEST_F(DmsProduce, ADedupKeySentAgainWithinTheWindowAnswersWithTheFirstReceipt) {
  v1::Receipt first = Send("pay order 7", "order-7");
  EXPECT_FALSE(first.duplicate());
  clock_.Advance(kWindow - absl::Milliseconds(1));
  v1::Receipt again = Send("pay order 7", "order-7");
  EXPECT_TRUE(again.duplicate());
  EXPECT_EQ(again.queue(), first.queue());
  EXPECT_EQ(again.offset(), first.offset());
  v1::Receipt other = Send("pay order 8", "order-8");
  EXPECT_FALSE(other.duplicate()) << "another key is another message";
}

TEST_F(DmsProduce, ADedupKeyOlderThanTheWindowStoresTheMessageAgain) {
  v1::Receipt first = Send("pay order 7", "order-7");
  clock_.Advance(kWindow + absl::Milliseconds(1));
  v1::Receipt later = Send("pay order 7", "order-7");
  EXPECT_FALSE(later.duplicate()) << "outside the window the key is forgotten";
  EXPECT_TRUE(later.queue() != first.queue() || later.offset() != first.offset());
}

TEST_F(DmsProduce, TheSweepDropsKeysOnceTheyLeaveTheWindow) {
  Send("pay order 7", "order-7");
  clock_.Advance(kWindow / 2);
  Send("pay order 8", "order-8");
  clock_.Advance(kWindow / 2 + absl::Milliseconds(1));
  dedup_->Sweep();
  EXPECT_EQ(store_.size(), 1u) << "order-7 left the window, order-8 did not";
}

}  // namespace
}  // namespace formica::dms
