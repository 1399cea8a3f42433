// ConsumerGroups with a fake clock, without a daemon: a message not acked
// within its ack timeout goes out again with its attempt count raised,
// after its last attempt it goes to the dead letters, and an ack in time
// stops redelivery. Topics, progress and the meta store are real (in a
// temporary directory); time is the FakeClock's.
#include "consumer_groups.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "db_writes.h"
#include "engine_fixture.h"
#include "formica/internal/rocksdb.h"
#include "rocksdb/db.h"

namespace formica::dms {
namespace {

constexpr absl::Duration kAckTimeout = absl::Seconds(5);
constexpr int kMaxAttempts = 3;

class DmsConsumerGroups : public DmsEngineTest {
 protected:
  void SetUp() override {
    GroupOptions go;
    go.ack_timeout = absl::Seconds(30);  // the subscription's own is used
    go.max_attempts = 16;
    OpenEngines(CatalogOptions(), absl::Minutes(10), go);
    if (HasFatalFailure()) return;
    topic_ = orders_;
  }

  void TearDown() override {
    if (group_ != nullptr) groups_->Leave(*group_, member_);
  }

  void Produce(const std::string& body, absl::Duration delay = absl::ZeroDuration()) {
    v1::StoredMessage m;
    m.set_body(body);
    m.set_born_unix_ms(absl::ToUnixMillis(clock_.Now()));
    if (delay > absl::ZeroDuration()) {
      m.set_deliver_at_unix_ms(absl::ToUnixMillis(clock_.Now() + delay));
    }
    ASSERT_TRUE(topic_->topic->Produce(m).ok());
  }

  // Joins group "billing" as one concurrent member.
  void Subscribe() {
    v1::Subscribe sub;
    sub.set_group("billing");
    sub.set_topic("orders");
    sub.set_concurrent(true);
    sub.set_max_attempts(kMaxAttempts);
    sub.set_ack_timeout_ms(absl::ToInt64Milliseconds(kAckTimeout));
    member_ = groups_->NewMember();
    auto joined = groups_->Join(sub, member_);
    ASSERT_TRUE(joined.ok()) << joined.status();
    group_ = *joined;
  }

  // What the dispatcher hands the member now.
  std::vector<v1::Delivered> Deliveries() {
    groups_->PumpAll();
    v1::ConsumeReply reply;
    ConsumerGroups::Collected got = groups_->Collect(
        *group_, *member_, absl::ZeroDuration(), [] { return false; }, [] { return false; },
        &reply);
    EXPECT_EQ(got, ConsumerGroups::Collected::kReady);
    return {reply.messages().begin(), reply.messages().end()};
  }

  absl::Status Ack(const v1::Delivered& d) {
    v1::ConsumeRequest req;
    *req.add_acks() = d.ref();
    return groups_->Settle(*group_, *member_, req);
  }

  std::vector<v1::DeadLetter> Letters() {
    std::vector<v1::DeadLetter> out;
    EXPECT_TRUE(letters_->List("billing", "orders", 100, &out).ok());
    return out;
  }

  TopicState* topic_ = nullptr;
  std::shared_ptr<Member> member_;
  std::shared_ptr<GroupState> group_;
};

TEST_F(DmsConsumerGroups, AMessageNotAckedWithinTheAckTimeoutGoesOutAgainWithItsAttemptRaised) {
  Produce("order 1");
  Subscribe();
  std::vector<v1::Delivered> first = Deliveries();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].attempt(), 1);
  EXPECT_EQ(first[0].message().body(), "order 1");

  clock_.Advance(kAckTimeout - absl::Milliseconds(1));
  EXPECT_TRUE(Deliveries().empty()) << "not before its ack timeout";

  clock_.Advance(absl::Milliseconds(1));
  std::vector<v1::Delivered> again = Deliveries();
  ASSERT_EQ(again.size(), 1u) << "out again once its ack timeout passed";
  EXPECT_EQ(again[0].ref().offset(), first[0].ref().offset());
  EXPECT_EQ(again[0].attempt(), 2);
  EXPECT_EQ(again[0].message().body(), "order 1");
  EXPECT_TRUE(Letters().empty());
}

TEST_F(DmsConsumerGroups, AMessageNeverAckedGoesToTheDeadLettersAfterItsLastAttempt) {
  Produce("poison");
  Subscribe();
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    std::vector<v1::Delivered> out = Deliveries();
    ASSERT_EQ(out.size(), 1u) << "attempt " << attempt;
    EXPECT_EQ(out[0].attempt(), attempt);
    EXPECT_TRUE(Letters().empty()) << "not dead before its last attempt timed out";
    clock_.Advance(kAckTimeout);
  }
  EXPECT_TRUE(Deliveries().empty()) << "no attempt past the last";
  std::vector<v1::DeadLetter> letters = Letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].topic(), "orders");
  EXPECT_EQ(letters[0].ref().offset(), 0u);
  EXPECT_EQ(letters[0].attempts(), kMaxAttempts);
  EXPECT_EQ(letters[0].message().body(), "poison");
  EXPECT_EQ(letters[0].dead_unix_ms(), absl::ToUnixMillis(clock_.Now()));
  EXPECT_NE(letters[0].reason().find("ack timeout"), std::string::npos) << letters[0].reason();

  clock_.Advance(10 * kAckTimeout);
  EXPECT_TRUE(Deliveries().empty()) << "a dead letter is not delivered again unless replayed";
  v1::GetLagRequest lag_req;
  lag_req.set_group("billing");
  v1::GetLagReply lag;
  ASSERT_TRUE(groups_->Lag(lag_req, &lag).ok());
  EXPECT_EQ(lag.total(), 0u) << "a dead letter counts as consumed";
  EXPECT_EQ(lag.dead_letters(), 1u);
}

// A broker group leader's meta store while it steps down: the group's log
// refuses its engines' writes (UNAVAILABLE) from `refuse` on.
class SteppingDownWrites : public DbWrites {
 public:
  absl::Status Write(rocksdb::DB* db, rocksdb::WriteBatch* batch, bool sync) override {
    if (refuse) return absl::UnavailableError("this dmsd no longer leads its broker group");
    return DirectDbWrites()->Write(db, batch, sync);
  }
  bool durable() const override { return true; }
  std::atomic<bool> refuse{false};
};

TEST_F(DmsConsumerGroups, InABrokerGroupADeadLetterRefusedWhileSteppingDownIsNotFatal) {
  auto db = OpenRocksDb(dir_.File("group-meta"), "the meta store");
  ASSERT_TRUE(db.ok()) << db.status();
  SteppingDownWrites writes;
  std::unique_ptr<MetaStore> meta = MetaStore::Over(db->get(), &writes);
  GroupOptions go;
  go.replicated = true;
  auto engines = [&] {
    letters_ = std::make_unique<DeadLetters>(meta.get(), &clock_);
    groups_ = std::make_unique<ConsumerGroups>(go, topics_.get(), progress_.get(), letters_.get(),
                                               &clock_);
  };
  engines();
  Produce("poison");
  Subscribe();
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    ASSERT_EQ(Deliveries().size(), 1u) << "attempt " << attempt;
    clock_.Advance(kAckTimeout);
  }
  // Its last attempt timed out while the leader steps down: parking it is
  // refused. The engine goes on (a single dmsd would stop here).
  writes.refuse = true;
  EXPECT_TRUE(Deliveries().empty());
  EXPECT_TRUE(Letters().empty());
  // The next leader's engines, built from the group's stores, where it is
  // neither acked nor parked, deliver it again.
  groups_->Leave(*group_, member_);
  group_ = nullptr;
  writes.refuse = false;
  engines();
  Subscribe();
  std::vector<v1::Delivered> again = Deliveries();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].message().body(), "poison");
  groups_->Leave(*group_, member_);
  group_ = nullptr;
  groups_.reset();
  letters_.reset();
}

TEST_F(DmsConsumerGroups, AnAckWithinTheAckTimeoutStopsRedelivery) {
  Produce("order 1");
  Produce("order 2");
  Subscribe();
  std::vector<v1::Delivered> out = Deliveries();
  ASSERT_EQ(out.size(), 2u);
  clock_.Advance(kAckTimeout - absl::Milliseconds(1));
  ASSERT_TRUE(Ack(out[0]).ok());

  clock_.Advance(absl::Milliseconds(1));
  std::vector<v1::Delivered> again = Deliveries();
  ASSERT_EQ(again.size(), 1u) << "only the unacked one goes out again";
  EXPECT_EQ(again[0].ref().offset(), out[1].ref().offset());
  ASSERT_TRUE(Ack(again[0]).ok());

  for (int i = 0; i < 2 * kMaxAttempts; ++i) {
    clock_.Advance(kAckTimeout);
    EXPECT_TRUE(Deliveries().empty()) << "acked: never out again";
  }
  EXPECT_TRUE(Letters().empty());
  v1::GetLagRequest lag_req;
  lag_req.set_group("billing");
  v1::GetLagReply lag;
  ASSERT_TRUE(groups_->Lag(lag_req, &lag).ok());
  ASSERT_EQ(lag.queues_size(), 1);
  EXPECT_EQ(lag.queues(0).committed(), 2u) << "both acked";
}

TEST_F(DmsConsumerGroups, AReplayedDeadLetterNotAckedGoesBackToTheDeadLettersAfterItsAttempts) {
  Produce("poison");
  Subscribe();
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    ASSERT_EQ(Deliveries().size(), 1u);
    clock_.Advance(kAckTimeout);
  }
  EXPECT_TRUE(Deliveries().empty());
  ASSERT_EQ(Letters().size(), 1u);

  auto replayed = groups_->ReplayDeadLetters("billing", "");
  ASSERT_TRUE(replayed.ok()) << replayed.status();
  EXPECT_EQ(*replayed, 1u);
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    std::vector<v1::Delivered> out = Deliveries();
    ASSERT_EQ(out.size(), 1u) << "replay attempt " << attempt;
    EXPECT_TRUE(out[0].ref().replay());
    EXPECT_EQ(out[0].attempt(), attempt);
    EXPECT_EQ(out[0].message().body(), "poison");
    clock_.Advance(kAckTimeout);
  }
  EXPECT_TRUE(Deliveries().empty()) << "no replay attempt past the last";
  std::vector<v1::DeadLetter> letters = Letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_FALSE(letters[0].replaying());
  EXPECT_EQ(letters[0].attempts(), 2 * kMaxAttempts) << "both rounds counted";
  EXPECT_EQ(letters[0].dead_unix_ms(), absl::ToUnixMillis(clock_.Now()));
}

TEST_F(DmsConsumerGroups, AnAckedReplayRemovesTheDeadLetter) {
  Produce("poison");
  Subscribe();
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    ASSERT_EQ(Deliveries().size(), 1u);
    clock_.Advance(kAckTimeout);
  }
  EXPECT_TRUE(Deliveries().empty());
  ASSERT_TRUE(groups_->ReplayDeadLetters("billing", "orders").ok());
  std::vector<v1::Delivered> out = Deliveries();
  ASSERT_EQ(out.size(), 1u);
  ASSERT_TRUE(Ack(out[0]).ok());
  EXPECT_TRUE(Letters().empty());
  clock_.Advance(10 * kAckTimeout);
  EXPECT_TRUE(Deliveries().empty());
}

TEST_F(DmsConsumerGroups, ADelayedMessageGoesOutAtItsTimeAsAFirstAttempt) {
  Produce("remind me", absl::Seconds(60));
  Subscribe();
  EXPECT_TRUE(Deliveries().empty());
  clock_.Advance(absl::Seconds(60) - absl::Milliseconds(1));
  EXPECT_TRUE(Deliveries().empty()) << "not before its time";
  clock_.Advance(absl::Milliseconds(1));
  std::vector<v1::Delivered> out = Deliveries();
  ASSERT_EQ(out.size(), 1u) << "out at its time";
  EXPECT_EQ(out[0].attempt(), 1) << "waiting is not an attempt";
}

}  // namespace
}  // namespace formica::dms
