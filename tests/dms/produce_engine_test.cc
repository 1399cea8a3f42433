// ProduceEngine and the dedup index with a fake clock, without a daemon and
// over an in-memory DedupStore: a dedup key sent again within the window is
// answered with the first send's receipt, and once the window has passed
// the message is stored again.
#include "produce_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
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
    for (const auto& [key, e] : entries) {
      if (key == held_key_) {  // a slow index write
        if (!entered_.HasBeenNotified()) entered_.Notify();
        held_.WaitForNotification();
      }
    }
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
  // Index writes holding `key` wait until Release.
  void Hold(const std::string& key) { held_key_ = key; }
  void Release() { held_.Notify(); }
  // Returns once an index write holding the key waits.
  void AwaitHeld() { entered_.WaitForNotification(); }

 private:
  std::string held_key_;
  absl::Notification held_, entered_;
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

  // A send of one message with `dedup_key` (to `queue` if >= 0), answered
  // in `done`.
  struct Call {
    v1::ProduceRequest req;
    v1::ProduceReply reply;
    absl::Notification done;
    absl::Status result;
  };
  std::unique_ptr<Call> Start(const std::string& body, const std::string& dedup_key,
                              int queue = -1) {
    auto c = std::make_unique<Call>();
    c->req.set_topic("orders");
    v1::Message* m = c->req.add_messages();
    m->set_body(body);
    m->set_dedup_key(dedup_key);
    if (queue >= 0) c->req.add_queues(queue);
    Call* raw = c.get();
    engine_->Produce(raw->req, &raw->reply, [raw](absl::Status st) {
      raw->result = st;
      raw->done.Notify();
    });
    return c;
  }

  // Sends one message with `dedup_key`; its receipt.
  v1::Receipt Send(const std::string& body, const std::string& dedup_key) {
    std::unique_ptr<Call> c = Start(body, dedup_key);
    c->done.WaitForNotification();
    EXPECT_TRUE(c->result.ok()) << c->result;
    return c->reply.receipts_size() == 1 ? c->reply.receipts(0) : v1::Receipt();
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

// The index writes of a topic's sends run at once, not one after another
// (in a broker group each is a commit of its log), and a mark written by a
// later send never passes an earlier send's offset whose index write is
// still under way: a restart then indexes it from the log.
TEST_F(DmsProduce, AnIndexWriteUnderWayHoldsNeitherOtherSendsNorLetsAMarkPassIt) {
  store_.Hold("slow");
  // Without syncs the engine indexes on the sending thread: the slow send
  // gets a thread of its own.
  std::unique_ptr<Call> slow;
  absl::Notification slow_started;
  std::thread sender([&] {
    slow = std::make_unique<Call>();
    Call* raw = slow.get();
    slow_started.Notify();
    raw->req.set_topic("orders");
    raw->req.add_messages()->set_body("first");
    raw->req.mutable_messages(0)->set_dedup_key("slow");
    raw->req.add_queues(0);
    engine_->Produce(raw->req, &raw->reply, [raw](absl::Status st) {
      raw->result = st;
      raw->done.Notify();
    });
  });
  slow_started.WaitForNotification();
  store_.AwaitHeld();
  std::unique_ptr<Call> fast;
  absl::Notification fast_done;
  std::thread other([&] {
    fast = Start("second", "fast", /*queue=*/0);
    fast->done.WaitForNotification();
    fast_done.Notify();
  });
  const bool in_time = fast_done.WaitForNotificationWithTimeout(absl::Seconds(5));
  if (!in_time) store_.Release();  // free both before failing
  other.join();
  ASSERT_TRUE(in_time) << "a send waited for another send's index write";
  ASSERT_TRUE(fast->result.ok()) << fast->result;
  EXPECT_FALSE(slow->done.HasBeenNotified());
  ASSERT_EQ(fast->reply.receipts(0).offset(), 1u);
  absl::StatusOr<std::optional<uint64_t>> mark = store_.Mark("orders", 0);
  ASSERT_TRUE(mark.ok());
  EXPECT_TRUE(!mark->has_value() || **mark <= 0u)
      << "the mark passed offset 0, whose key is not indexed yet: " << **mark;
  store_.Release();
  sender.join();
  slow->done.WaitForNotification();
  ASSERT_TRUE(slow->result.ok()) << slow->result;
  // Both indexed: a resend of either is a duplicate.
  EXPECT_TRUE(Send("first", "slow").duplicate());
  EXPECT_TRUE(Send("second", "fast").duplicate());
}

}  // namespace
}  // namespace formica::dms
