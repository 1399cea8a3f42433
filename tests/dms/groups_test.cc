// Several broker groups (docs/dms.md, "Several broker groups"): a real dsrd
// and two dmsd, the default group and "g2", started as a user starts them;
// topics placed across both through the registry; queues moved with the
// formicactl binary under steady produce and consume.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "dms_fixture.h"
#include "formica/internal/dms_placement.h"
#include "json.h"

namespace formica::dms::testing {
namespace {

using ::testing::HasSubstr;

class DmsGroupsTest : public DmsTest {
 protected:
  void SetUp() override {
    DmsTest::SetUp();
    if (HasFatalFailure()) return;
    g2_port_ = formica::testing::PickFreePort();
    StartG2();
    if (HasFatalFailure()) return;
    g2_ = v1::Broker::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", g2_port_),
                                                  grpc::InsecureChannelCredentials()));
  }

  std::vector<std::string> G2Command() {
    return DmsdCommandAt(g2_port_, dir_.File("dmsd-g2"), {"--set", "broker_group=g2"});
  }

  void StartG2() {
    auto p =
        Subprocess::Start(G2Command(), dir_.File(absl::StrCat("dmsd-g2.", ++g2_runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    g2_dmsd_ = std::move(*p);
    ASSERT_TRUE(g2_dmsd_->WaitForOutput("dmsd ready on port", absl::Seconds(20)))
        << g2_dmsd_->Output();
  }

  static void Create(v1::Broker::Stub& stub, const std::string& name, int queues) {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name(name);
    req.set_queues(queues);
    v1::TopicInfo info;
    grpc::Status st = stub.CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  void Place(const std::string& topic, const std::vector<std::string>& groups) {
    Placement p;
    p.groups = groups;
    auto put = registry_->PutConfig(PlacementKey(topic), FormatPlacement(p), 0);
    ASSERT_TRUE(put.ok()) << put.status();
  }

  std::optional<Placement> PlacementOf(const std::string& topic) {
    auto v = registry_->GetConfig(PlacementKey(topic));
    if (absl::IsNotFound(v.status())) return std::nullopt;
    EXPECT_TRUE(v.ok()) << v.status();
    if (!v.ok() || !v->exists) return std::nullopt;
    auto p = ParsePlacement(v->value);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::optional<Placement>(*p) : std::nullopt;
  }

  // formicactl with this test's registry: (exit code, output).
  std::pair<int, std::string> Ctl2(std::vector<std::string> args) {
    args.insert(args.begin(), {"--registry", dsrd_->address(), "--timeout", "10"});
    return Ctl(args);
  }

  static std::vector<v1::QueueInfo> Queues(v1::Broker::Stub& stub, const std::string& topic) {
    grpc::ClientContext ctx;
    v1::ListTopicsReply reply;
    grpc::Status st = stub.ListTopics(&ctx, v1::ListTopicsRequest(), &reply);
    EXPECT_TRUE(st.ok()) << st.error_message();
    for (const v1::TopicInfo& t : reply.topics()) {
      if (t.name() == topic) return {t.queues().begin(), t.queues().end()};
    }
    return {};
  }

  // Every record of a queue (placeholders left out), by offset.
  static std::map<uint64_t, v1::StoredMessage> Records(v1::Broker::Stub& stub,
                                                       const std::string& topic, int queue) {
    std::map<uint64_t, v1::StoredMessage> out;
    uint64_t from = 0;
    while (true) {
      grpc::ClientContext ctx;
      v1::ReadQueueRequest req;
      req.set_topic(topic);
      req.set_queue(queue);
      req.set_from(from);
      v1::ReadQueueReply reply;
      grpc::Status st = stub.ReadQueue(&ctx, req, &reply);
      EXPECT_TRUE(st.ok()) << st.error_message();
      if (!st.ok() || reply.records().empty()) return out;
      for (const v1::QueueRecord& r : reply.records()) {
        if (!r.message().lost()) out[r.offset()] = r.message();
        from = r.offset() + 1;
      }
    }
  }

  static grpc::Status ProduceTo(v1::Broker::Stub& stub, const std::string& topic, int queue,
                                const std::string& body) {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);  // a restarted dmsd is waited for
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ProduceRequest req;
    req.set_topic(topic);
    req.add_messages()->set_body(body);
    req.add_queues(queue);
    v1::ProduceReply reply;
    return stub.Produce(&ctx, req, &reply);
  }

  int g2_port_ = 0;
  int g2_runs_ = 0;
  std::unique_ptr<Subprocess> g2_dmsd_;
  std::unique_ptr<v1::Broker::Stub> g2_;
};

// A key whose queue in a topic of `queues` queues is `queue`.
std::string KeyFor(int queue, int queues, int n) {
  for (int i = 0;; ++i) {
    std::string key = absl::StrCat("key", i);
    if (QueueForKey(key, queues) == queue && n-- == 0) return key;
  }
}

// While the registry hangs, sends to a topic whose placement was never read
// go to the default group without each waiting for the registry's timeout
// (one read waits for it); once the registry answers, the watch brings the
// topic's placement and sends follow it.
TEST_F(DmsGroupsTest, WhileTheRegistryHangsATopicNeverReadIsNotReadAgainAtEachSend) {
  Create(*broker_, "early", 1);
  Create(*broker_, "late", 2);
  Create(*g2_, "late", 2);
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("early", Msg("before")).ok());
  constexpr int kSends = 8;
  dsrd_->process()->Signal(SIGSTOP);
  absl::Time start = absl::Now();
  int sent = 0;
  for (int i = 0; i < kSends; ++i) {
    auto r = producer->Send("late", Msg(absl::StrCat("m", i)));
    if (r.ok()) ++sent;
  }
  absl::Duration took = absl::Now() - start;
  dsrd_->process()->Signal(SIGCONT);
  EXPECT_EQ(sent, kSends);
  // The registry client's timeout is 5 s here: one read waited for it.
  EXPECT_LT(took, absl::Seconds(8)) << "each send read the registry";
  uint64_t on_default = 0;
  for (const v1::QueueInfo& q : Queues(*broker_, "late")) on_default += q.end_offset();
  EXPECT_EQ(on_default, static_cast<uint64_t>(kSends));

  Place("late", {"g2", "g2"});
  absl::Time deadline = absl::Now() + absl::Seconds(15);
  uint64_t on_g2 = 0;
  while (on_g2 == 0 && absl::Now() < deadline) {
    ASSERT_TRUE(producer->Send("late", Msg("after")).ok());
    on_g2 = 0;
    for (const v1::QueueInfo& q : Queues(*g2_, "late")) on_g2 += q.end_offset();
    if (on_g2 == 0) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GT(on_g2, 0u) << "the placement written after the outage never reached the producer";
}

TEST_F(DmsGroupsTest, ATopicPlacedAcrossTwoGroupsSendsEachKeyToItsQueuesGroup) {
  Create(*broker_, "orders", 4);
  Create(*g2_, "orders", 4);
  Place("orders", {"", "g2", "", "g2"});
  auto producer = NewProducer();
  std::map<std::string, int> queue_of;
  for (int i = 0; i < 200; ++i) {
    OutgoingMessage m = Msg(absl::StrCat("m", i), absl::StrCat("user", i % 40));
    m.dedup_key = m.body;
    auto r = producer->Send("orders", m);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->queue, QueueForKey(m.key, 4)) << m.key;
    queue_of[m.body] = r->queue;
  }
  // Queues 0 and 2 hold their messages on the default group, 1 and 3 on g2;
  // the other group's copy of each queue stays empty.
  std::vector<v1::QueueInfo> def = Queues(*broker_, "orders"), two = Queues(*g2_, "orders");
  ASSERT_EQ(def.size(), 4u);
  ASSERT_EQ(two.size(), 4u);
  uint64_t total = 0;
  for (int q = 0; q < 4; ++q) {
    const v1::QueueInfo& holder = q % 2 == 0 ? def[q] : two[q];
    const v1::QueueInfo& other = q % 2 == 0 ? two[q] : def[q];
    EXPECT_EQ(other.end_offset(), 0u) << "queue " << q;
    total += holder.end_offset();
    for (const auto& [offset, m] : Records(q % 2 == 0 ? *broker_ : *g2_, "orders", q)) {
      EXPECT_EQ(queue_of[m.body()], q) << m.body();
    }
  }
  EXPECT_EQ(total, 200u);

  // A keyless message sent again with its dedup key (a retry after a lost
  // answer) reaches the same queue, so the same group, and is stored once.
  for (int i = 0; i < 8; ++i) {
    OutgoingMessage m = Msg(absl::StrCat("keyless", i), "");
    m.dedup_key = m.body;
    auto first = producer->Send("orders", m);
    auto again = producer->Send("orders", m);
    ASSERT_TRUE(first.ok() && again.ok()) << first.status() << again.status();
    EXPECT_TRUE(again->duplicate) << m.dedup_key << " stored twice";
    EXPECT_EQ(again->queue, first->queue);
    EXPECT_EQ(again->offset, first->offset);
  }
  def = Queues(*broker_, "orders");
  two = Queues(*g2_, "orders");
  uint64_t keyless_total = 0;
  for (int q = 0; q < 4; ++q) keyless_total += (q % 2 == 0 ? def : two)[q].end_offset();
  EXPECT_EQ(keyless_total, 208u) << "each keyless message stored once";

  // One consumer group gets every message, from both groups.
  Seen seen;
  auto consumer = Consume(Options("billing", "orders", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(208, absl::Seconds(30))) << seen.Distinct().size();
  EXPECT_EQ(seen.Distinct().size(), 208u);

  // formicactl shows each queue's group and the group's leader.
  auto [code, out] = Ctl2({"--output", "json", "dms", "topics"});
  ASSERT_EQ(code, 0) << out;
  auto topics = formica::testing::ParseJson<v1::ListTopicsReply>(out);
  ASSERT_TRUE(topics.ok()) << topics.status() << out;
  int seen_queues = 0;
  for (const v1::TopicInfo& t : topics->topics()) {
    if (t.name() != "orders") continue;
    for (const v1::QueueInfo& q : t.queues()) {
      ++seen_queues;
      EXPECT_EQ(q.group(), q.queue() % 2 == 0 ? "" : "g2");
      EXPECT_EQ(q.leader(), absl::StrCat("127.0.0.1:", q.queue() % 2 == 0 ? port_ : g2_port_));
      EXPECT_EQ(q.end_offset(), (q.queue() % 2 == 0 ? def : two)[q.queue()].end_offset());
    }
  }
  EXPECT_EQ(seen_queues, 4);
  std::tie(code, out) = Ctl2({"dms", "topics"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("g2               127.0.0.1:", g2_port_)));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("default          127.0.0.1:", port_)));
  // Asked of a broker of g2, each queue is still shown with its own group's
  // figures: the answering broker names its group.
  std::tie(code, out) =
      Ctl2({"--dms", absl::StrCat("127.0.0.1:", g2_port_), "--output", "json", "dms", "topics"});
  ASSERT_EQ(code, 0) << out;
  auto from_g2 = formica::testing::ParseJson<v1::ListTopicsReply>(out);
  ASSERT_TRUE(from_g2.ok()) << from_g2.status() << out;
  seen_queues = 0;
  for (const v1::TopicInfo& t : from_g2->topics()) {
    if (t.name() != "orders") continue;
    for (const v1::QueueInfo& q : t.queues()) {
      ++seen_queues;
      EXPECT_EQ(q.group(), q.queue() % 2 == 0 ? "" : "g2");
      EXPECT_EQ(q.end_offset(), (q.queue() % 2 == 0 ? def : two)[q.queue()].end_offset())
          << "queue " << q.queue();
    }
  }
  EXPECT_EQ(seen_queues, 4);
}

// Bodies "<key>|<seq>|<n>" (n unique).
struct History {
  absl::Mutex mu;
  std::map<std::string, SendReceipt> acked ABSL_GUARDED_BY(mu);  // body -> receipt
  std::vector<std::string> failed ABSL_GUARDED_BY(mu);
};

TEST_F(DmsGroupsTest, MovingAQueueUnderProduceAndConsumeLosesNothingAndStoresNothingTwice) {
  constexpr int kQueues = 4, kMoved = 1, kThreads = 4;
  CreateTopic("events", kQueues);
  Seen seen;
  ConsumerOptions co = Options("audit", "events", &seen);
  co.ack_timeout = absl::Seconds(2);
  auto consumer = Consume(co, &seen);
  ASSERT_NE(consumer, nullptr);
  History history;
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::vector<std::thread> producers;
  auto producer = NewProducer();
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      // Each thread owns its keys: two in the moved queue, two elsewhere.
      std::vector<std::string> keys = {KeyFor(kMoved, kQueues, t), KeyFor(kMoved, kQueues, t + 10),
                                       KeyFor((kMoved + 1) % kQueues, kQueues, t),
                                       KeyFor((kMoved + 2) % kQueues, kQueues, t)};
      for (int seq = 0; !stop.load(); ++seq) {
        const std::string& key = keys[seq % keys.size()];
        OutgoingMessage m = Msg(absl::StrCat(key, "|", seq, "|", sent.fetch_add(1)), key);
        m.dedup_key = m.body;
        auto r = producer->Send("events", m);
        absl::MutexLock lock(&history.mu);
        if (r.ok()) {
          history.acked[m.body] = *r;
        } else {
          history.failed.push_back(absl::StrCat(m.body, ": ", r.status().ToString()));
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(1));
  uint64_t before = Queues(*broker_, "events")[kMoved].end_offset();
  absl::Time move_start = absl::Now();
  auto [code, out] = Ctl2({"dms", "move-queue", "events", absl::StrCat(kMoved), "--to", "g2"});
  EXPECT_EQ(code, 0) << out;
  std::cout << "the move under load took " << absl::ToInt64Milliseconds(absl::Now() - move_start)
            << " ms:\n"
            << out;
  EXPECT_THAT(out, HasSubstr("1. sealed queue 1 of events on broker group default"));
  EXPECT_THAT(out, HasSubstr("2. copied"));
  EXPECT_THAT(out, HasSubstr("3. opened queue 1 on broker group g2"));
  EXPECT_THAT(out, HasSubstr("4. placement of events: queue 1 on broker group g2"));
  absl::SleepFor(absl::Seconds(2));
  stop = true;
  for (std::thread& t : producers) t.join();

  absl::MutexLock lock(&history.mu);
  EXPECT_TRUE(history.failed.empty()) << history.failed.front();
  ASSERT_GT(before, 0u);
  // The moved queue: the default group's log is where it was sealed; g2's
  // holds all of it, and what came after.
  std::map<uint64_t, v1::StoredMessage> source = Records(*broker_, "events", kMoved);
  std::map<uint64_t, v1::StoredMessage> dest = Records(*g2_, "events", kMoved);
  ASSERT_FALSE(source.empty());
  uint64_t sealed_end = source.rbegin()->first + 1;
  EXPECT_GT(dest.rbegin()->first + 1, sealed_end) << "nothing was sent to g2 after the move";
  for (const auto& [offset, m] : source) {
    ASSERT_TRUE(dest.count(offset) > 0) << offset;
    EXPECT_EQ(dest[offset].body(), m.body()) << offset;
  }
  // None stored twice in the destination, and every acknowledged message of
  // the moved queue is where its receipt says, in g2.
  std::set<std::string> bodies;
  for (const auto& [offset, m] : dest) {
    EXPECT_TRUE(bodies.insert(m.body()).second) << "stored twice: " << m.body();
  }
  int moved_after = 0;
  for (const auto& [body, r] : history.acked) {
    if (r.queue != kMoved) continue;
    ASSERT_TRUE(dest.count(r.offset) > 0) << body;
    EXPECT_EQ(dest[r.offset].body(), body);
    if (r.offset >= sealed_end) ++moved_after;
  }
  EXPECT_GT(moved_after, 0);
  // Every acknowledged message is delivered (history check).
  size_t acked = history.acked.size();
  history.mu.Unlock();
  EXPECT_TRUE(seen.WaitConfirmed(acked, absl::Seconds(30)))
      << seen.Distinct().size() << " of " << acked;
  history.mu.Lock();
  std::set<std::string> delivered = seen.Distinct();
  for (const auto& [body, r] : history.acked) {
    EXPECT_TRUE(delivered.count(body) > 0) << "acknowledged, never delivered: " << body;
  }
  // Per key, the moved queue's messages sent after the move are first
  // delivered in the order they were sent.
  absl::MutexLock seen_lock(&seen.mu);
  std::map<std::string, int> last;
  std::set<std::string> first_time;
  for (const std::string& body : seen.handled) {
    if (!first_time.insert(body).second) continue;
    auto it = history.acked.find(body);
    if (it == history.acked.end() || it->second.queue != kMoved || it->second.offset < sealed_end) {
      continue;
    }
    std::vector<std::string> parts = absl::StrSplit(body, '|');
    int seq = 0;
    ASSERT_TRUE(absl::SimpleAtoi(parts[1], &seq));
    auto [prev, fresh] = last.try_emplace(parts[0], seq);
    if (!fresh) {
      EXPECT_GT(seq, prev->second) << "key " << parts[0] << " out of order";
      prev->second = seq;
    }
  }
  EXPECT_FALSE(last.empty());
  auto placed = PlacementOf("events");
  ASSERT_TRUE(placed.has_value());
  EXPECT_EQ(placed->groups, (std::vector<std::string>{"", "g2", "", ""}));
}

TEST_F(DmsGroupsTest, RerunningAMoveCutShortAfterTheSealOrAfterTheCopyFinishesIt) {
  CreateTopic("ledger", 2);
  auto producer = NewProducer();
  std::map<int, std::set<std::string>> sent;  // queue -> bodies
  for (int i = 0; i < 60; ++i) {
    auto r = producer->Send("ledger", Msg(absl::StrCat("l", i), absl::StrCat("acct", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    sent[r->queue].insert(absl::StrCat("l", i));
  }
  ASSERT_FALSE(sent[0].empty());
  ASSERT_FALSE(sent[1].empty());
  // A group that consumed part of queue 0 before the move.
  Seen early;
  {
    ConsumerOptions o = Options("books", "ledger", &early);
    auto consumer = Consume(o, &early);
    ASSERT_TRUE(early.WaitConfirmed(60, absl::Seconds(20)));
    consumer->Stop();
  }
  for (int i = 60; i < 80; ++i) {
    auto r = producer->Send("ledger", Msg(absl::StrCat("l", i), absl::StrCat("acct", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    sent[r->queue].insert(absl::StrCat("l", i));
  }

  // Cut short after the seal of queue 0: the source refuses produce to it
  // naming where it moves, and nothing else happened.
  {
    grpc::ClientContext ctx;
    v1::SealQueueRequest req;
    req.set_topic("ledger");
    req.set_queue(0);
    req.set_to_group("g2");
    v1::SealQueueReply reply;
    ASSERT_TRUE(broker_->SealQueue(&ctx, req, &reply).ok());
  }
  grpc::Status refused = ProduceTo(*broker_, "ledger", 0, "refused");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr("moved to broker group 'g2'"));
  // The seal is durable: kill -9 and a restart keep it.
  dmsd_->Signal(SIGKILL);
  dmsd_->Wait(absl::Seconds(10));
  StartDmsd();
  ASSERT_FALSE(HasFatalFailure());
  refused = ProduceTo(*broker_, "ledger", 0, "refused after a restart");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("moved to broker group 'g2'"));
  {
    // A producer refused for longer than its unavailable_retry (the move
    // never finishing) fails with the refusal; nothing was stored.
    ProducerOptions o;
    o.unavailable_retry = absl::Seconds(1);
    auto stuck = Producer::Create(o, rpc_.get());
    ASSERT_TRUE(stuck.ok());
    absl::Time start = absl::Now();
    auto r = (*stuck)->Send("ledger", Msg("stuck", KeyFor(0, 2, 0)));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("moved to broker group 'g2'"));
    EXPECT_GE(absl::Now() - start, absl::Seconds(1));
  }
  auto [code, out] = Ctl2({"dms", "move-queue", "ledger", "0", "--to", "g2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("2. copied ", sent[0].size(), " records")));

  // Cut short after the copy of queue 1 (every record imported, not opened,
  // the placement not switched): the re-run copies nothing again.
  {
    grpc::ClientContext seal_ctx;
    v1::SealQueueRequest seal;
    seal.set_topic("ledger");
    seal.set_queue(1);
    seal.set_to_group("g2");
    v1::SealQueueReply sealed;
    ASSERT_TRUE(broker_->SealQueue(&seal_ctx, seal, &sealed).ok());
    grpc::ClientContext read_ctx;
    v1::ReadQueueRequest read;
    read.set_topic("ledger");
    read.set_queue(1);
    v1::ReadQueueReply got;
    ASSERT_TRUE(broker_->ReadQueue(&read_ctx, read, &got).ok());
    ASSERT_EQ(static_cast<size_t>(got.records_size()), sent[1].size());
    grpc::ClientContext import_ctx;
    v1::ImportQueueRequest import;
    import.set_topic("ledger");
    import.set_queues(2);
    import.set_queue(1);
    import.set_first_offset(0);
    *import.mutable_records() = got.records();
    *import.mutable_progress() = got.progress();
    v1::ImportQueueReply imported;
    grpc::Status st = g2_->ImportQueue(&import_ctx, import, &imported);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(imported.appended(), sent[1].size());
  }
  // Held on g2 until opened: no produce there either.
  grpc::Status held = ProduceTo(*g2_, "ledger", 1, "held");
  EXPECT_EQ(held.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(held.error_message(), HasSubstr("is moving here"));
  std::tie(code, out) = Ctl2({"dms", "move-queue", "ledger", "1", "--to", "g2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("2. copied 0 records to broker group g2 (127.0.0.1:",
                                          g2_port_, ") (", sent[1].size(), " there already)")));
  EXPECT_THAT(out, HasSubstr("3. opened queue 1"));
  // Run once more: nothing to do.
  std::tie(code, out) = Ctl2({"dms", "move-queue", "ledger", "1", "--to", "g2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("is on broker group g2 already: nothing to do"));

  auto placed = PlacementOf("ledger");
  ASSERT_TRUE(placed.has_value());
  EXPECT_EQ(placed->groups, (std::vector<std::string>{"g2", "g2"}));
  for (int q = 0; q < 2; ++q) {
    std::set<std::string> there;
    for (const auto& [offset, m] : Records(*g2_, "ledger", q)) there.insert(m.body());
    EXPECT_EQ(there, sent[q]) << "queue " << q;
  }
  // The group's progress moved with the queues: it gets only the 20 sent
  // after it stopped; a new group gets all 80, from g2 alone.
  Seen later;
  auto again = Consume(Options("books", "ledger", &later), &later);
  ASSERT_TRUE(later.WaitConfirmed(20, absl::Seconds(20)));
  absl::SleepFor(absl::Milliseconds(500));
  for (const std::string& body : later.Distinct()) {
    int n = 0;
    ASSERT_TRUE(absl::SimpleAtoi(body.substr(1), &n)) << body;
    EXPECT_GE(n, 60) << "delivered again after its ack was confirmed: " << body;
  }
  Seen fresh;
  auto all = Consume(Options("archive", "ledger", &fresh), &fresh);
  ASSERT_TRUE(fresh.WaitConfirmed(80, absl::Seconds(20))) << fresh.Distinct().size();
  EXPECT_EQ(ProduceTo(*g2_, "ledger", 1, "open now").error_code(), grpc::StatusCode::OK);

  // Each step is an operator act in its daemon's audit trail.
  std::tie(code, out) = Ctl2({"audit", "dmsd"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("dms.seal-queue"));
  std::tie(code, out) = Ctl2({"--dms", absl::StrCat("127.0.0.1:", g2_port_), "audit", "dmsd"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("dms.import-queue"));
  EXPECT_THAT(out, HasSubstr("dms.open-queue"));

  // Back to the default group, which still holds the queue's records up to
  // its seal: only what came after is copied.
  ASSERT_EQ(ProduceTo(*g2_, "ledger", 0, "after the move").error_code(), grpc::StatusCode::OK);
  std::tie(code, out) = Ctl2({"dms", "move-queue", "ledger", "0", "--to", "default"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("2. copied 1 records to broker group default (127.0.0.1:",
                                          port_, ") (", sent[0].size(), " there already)")));
  EXPECT_EQ(PlacementOf("ledger")->groups, (std::vector<std::string>{"", "g2"}));
  EXPECT_EQ(ProduceTo(*broker_, "ledger", 0, "back").error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(ProduceTo(*g2_, "ledger", 0, "not here").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  std::set<std::string> back;
  for (const auto& [offset, m] : Records(*broker_, "ledger", 0)) back.insert(m.body());
  sent[0].insert({"after the move", "back"});
  EXPECT_EQ(back, sent[0]);
}

// Cut short after the open on the destination and before the placement
// switch: the re-run sees the source sealed for this move and the queue open
// on the destination with every record, and only switches the placement.
TEST_F(DmsGroupsTest, RerunningAMoveCutShortAfterTheOpenSwitchesThePlacement) {
  CreateTopic("tally", 1);
  auto producer = NewProducer();
  std::set<std::string> sent;
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(producer->Send("tally", Msg(absl::StrCat("t", i))).ok());
    sent.insert(absl::StrCat("t", i));
  }
  {
    grpc::ClientContext seal_ctx;
    v1::SealQueueRequest seal;
    seal.set_topic("tally");
    seal.set_queue(0);
    seal.set_to_group("g2");
    v1::SealQueueReply sealed;
    ASSERT_TRUE(broker_->SealQueue(&seal_ctx, seal, &sealed).ok());
    grpc::ClientContext read_ctx;
    v1::ReadQueueRequest read;
    read.set_topic("tally");
    v1::ReadQueueReply got;
    ASSERT_TRUE(broker_->ReadQueue(&read_ctx, read, &got).ok());
    ASSERT_EQ(got.records_size(), 40);
    EXPECT_EQ(got.hold(), v1::ReadQueueReply::SEALED);
    EXPECT_EQ(got.hold_group(), "g2");
    grpc::ClientContext import_ctx;
    v1::ImportQueueRequest import;
    import.set_topic("tally");
    import.set_queues(1);
    *import.mutable_records() = got.records();
    v1::ImportQueueReply imported;
    grpc::Status st = g2_->ImportQueue(&import_ctx, import, &imported);
    ASSERT_TRUE(st.ok()) << st.error_message();
    grpc::ClientContext open_ctx;
    v1::OpenQueueRequest open;
    open.set_topic("tally");
    v1::OpenQueueReply opened;
    st = g2_->OpenQueue(&open_ctx, open, &opened);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_FALSE(PlacementOf("tally").has_value());
  auto [code, out] = Ctl2({"dms", "move-queue", "tally", "0", "--to", "g2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("is sealed on broker group default (offsets 0..40) and open on g2"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("2. copied"))) << out;
  EXPECT_THAT(out, HasSubstr("4. placement of tally: queue 0 on broker group g2"));
  EXPECT_EQ(PlacementOf("tally")->groups, (std::vector<std::string>{"g2"}));
  // Every message delivered once, from g2.
  Seen seen;
  auto consumer = Consume(Options("tally-readers", "tally", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(40, absl::Seconds(20))) << seen.Distinct().size();
  absl::SleepFor(absl::Milliseconds(500));
  consumer->Stop();
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.handled.size(), 40u);
  EXPECT_EQ(seen.confirmed, sent);
}

// Two imports of the same records into one queue at once (two runs of a
// move): each record is stored once, at its offset.
TEST_F(DmsGroupsTest, TwoImportsOfTheSameRecordsAtOnceStoreThemOnce) {
  v1::ImportQueueRequest import;
  import.set_topic("twice");
  import.set_queues(1);
  for (int i = 0; i < 300; ++i) {
    v1::QueueRecord* r = import.add_records();
    r->set_offset(i);
    r->mutable_message()->set_body(absl::StrCat("r", i));
  }
  constexpr int kRuns = 4;
  std::vector<grpc::Status> status(kRuns);
  std::vector<uint64_t> appended(kRuns);
  std::vector<std::thread> runs;
  for (int i = 0; i < kRuns; ++i) {
    runs.emplace_back([&, i] {
      grpc::ClientContext ctx;
      v1::ImportQueueReply reply;
      status[i] = g2_->ImportQueue(&ctx, import, &reply);
      appended[i] = reply.appended();
    });
  }
  for (std::thread& t : runs) t.join();
  uint64_t total = 0;
  for (int i = 0; i < kRuns; ++i) {
    EXPECT_TRUE(status[i].ok()) << status[i].error_message();
    total += appended[i];
  }
  EXPECT_EQ(total, 300u);
  auto stored = Records(*g2_, "twice", 0);
  ASSERT_EQ(stored.size(), 300u);
  for (const auto& [offset, m] : stored) EXPECT_EQ(m.body(), absl::StrCat("r", offset));
  std::vector<v1::QueueInfo> queues = Queues(*g2_, "twice");
  ASSERT_EQ(queues.size(), 1u);
  EXPECT_EQ(queues[0].end_offset(), 300u);
}

// A queue whose source's retention removed its start: the destination's
// log begins at the source's first offset in one step, and a repeated
// import adds nothing.
TEST_F(DmsGroupsTest, AnImportedQueueBeginsAtItsSourcesFirstOffsetWithoutPlaceholders) {
  constexpr uint64_t kFirst = 10'000'000'000;
  v1::ImportQueueRequest import;
  import.set_topic("far");
  import.set_queues(1);
  import.set_first_offset(kFirst);
  for (int i = 0; i < 3; ++i) {
    v1::QueueRecord* r = import.add_records();
    r->set_offset(kFirst + i);
    r->mutable_message()->set_body(absl::StrCat("r", i));
  }
  for (uint64_t expected : {3u, 0u}) {
    grpc::ClientContext ctx;
    v1::ImportQueueReply reply;
    grpc::Status st = g2_->ImportQueue(&ctx, import, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(reply.appended(), expected);
    EXPECT_EQ(reply.end_offset(), kFirst + 3);
  }
  std::vector<v1::QueueInfo> queues = Queues(*g2_, "far");
  ASSERT_EQ(queues.size(), 1u);
  EXPECT_EQ(queues[0].first_offset(), kFirst);
  EXPECT_EQ(queues[0].end_offset(), kFirst + 3);
  EXPECT_LT(queues[0].bytes(), 4096u) << "placeholders were written";
  auto stored = Records(*g2_, "far", 0);
  ASSERT_EQ(stored.size(), 3u);
  EXPECT_EQ(stored.begin()->first, kFirst);
  EXPECT_EQ(stored.rbegin()->second.body(), "r2");
}

// A bad import is refused naming what is wrong before anything changes: no
// topic created, no queue held, no record written.
TEST_F(DmsGroupsTest, ABadImportIsRefusedBeforeItCreatesOrHoldsAnything) {
  auto import = [&](const v1::ImportQueueRequest& req) {
    grpc::ClientContext ctx;
    v1::ImportQueueReply reply;
    return g2_->ImportQueue(&ctx, req, &reply);
  };
  v1::ImportQueueRequest out_of_range;
  out_of_range.set_topic("fresh");
  out_of_range.set_queues(2);
  out_of_range.set_queue(5);
  grpc::Status st = import(out_of_range);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("queue 5 does not exist; topic 'fresh' has 2 queues"));
  EXPECT_TRUE(Queues(*g2_, "fresh").empty()) << "the topic was created";

  Create(*g2_, "kept", 1);
  v1::ImportQueueRequest nameless;
  nameless.set_topic("kept");
  nameless.set_queues(1);
  v1::QueueRecord* r = nameless.add_records();
  r->mutable_message()->set_body("imported");
  nameless.add_progress()->set_committed(1);
  st = import(nameless);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("progress 0: a name is required"));
  v1::ImportQueueRequest gap = nameless;
  gap.clear_progress();
  gap.add_records()->set_offset(7);
  st = import(gap);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("record 1 is at offset 7"));
  EXPECT_TRUE(Records(*g2_, "kept", 0).empty()) << "a record was written";
  st = ProduceTo(*g2_, "kept", 0, "still open");
  EXPECT_TRUE(st.ok()) << "the queue was held: " << st.error_message();
}

// A queue cannot be sealed for a move to the group that serves it.
TEST_F(DmsGroupsTest, SealingAQueueForItsOwnGroupIsRefusedNamingIt) {
  CreateTopic("home", 1);
  Create(*g2_, "home", 1);
  struct Case {
    v1::Broker::Stub* stub;
    std::string to;
    std::string names;
  };
  for (const Case& c : {Case{broker_.get(), "", "is served by the default broker group"},
                        Case{g2_.get(), "g2", "is served by broker group 'g2'"}}) {
    grpc::ClientContext ctx;
    v1::SealQueueRequest seal;
    seal.set_topic("home");
    seal.set_queue(0);
    seal.set_to_group(c.to);
    v1::SealQueueReply sealed;
    grpc::Status st = c.stub->SealQueue(&ctx, seal, &sealed);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.to;
    EXPECT_THAT(st.error_message(), HasSubstr("to_group: queue 0 of topic 'home'"));
    EXPECT_THAT(st.error_message(), HasSubstr(c.names));
    st = ProduceTo(*c.stub, "home", 0, absl::StrCat("still open ", c.to));
    EXPECT_TRUE(st.ok()) << "sealed: " << st.error_message();
  }
}

// Both moves read the topic without a placement before either writes one:
// the placement is written by compare-and-set, so the second write reads
// the first's again and keeps it.
TEST_F(DmsGroupsTest, TwoMovesOfOneTopicAtOnceKeepBothInThePlacement) {
  CreateTopic("pairs", 4);
  auto producer = NewProducer();
  for (int i = 0; i < 400; ++i) {
    ASSERT_TRUE(producer->Send("pairs", Msg(absl::StrCat("p", i), absl::StrCat("k", i))).ok());
  }
  std::vector<std::unique_ptr<Subprocess>> moves;
  for (int q : {1, 2}) {
    auto p = Subprocess::Start(
        {formica::testing::BinaryPath("tools/formicactl"), "--registry", dsrd_->address(),
         "--timeout", "10", "dms", "move-queue", "pairs", absl::StrCat(q), "--to", "g2"},
        dir_.File(absl::StrCat("pairs-move-", q, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    moves.push_back(std::move(*p));
  }
  for (auto& m : moves) EXPECT_EQ(m->Wait(absl::Seconds(30)), 0) << m->Output();
  auto placed = PlacementOf("pairs");
  ASSERT_TRUE(placed.has_value());
  EXPECT_EQ(placed->groups, (std::vector<std::string>{"", "g2", "g2", ""}));
}

// A queue of large messages moves in pieces that fit a call.
TEST_F(DmsGroupsTest, AQueueOfLargeMessagesMoves) {
  CreateTopic("big", 1);
  auto producer = NewProducer();
  constexpr int kMessages = 24;  // 1 MiB each: more than one call can carry
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_TRUE(producer->Send("big", Msg(std::string(1 << 20, static_cast<char>('a' + i)))).ok());
  }
  auto [code, out] = Ctl2({"dms", "move-queue", "big", "0", "--to", "g2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("2. copied ", kMessages, " records")));
  for (int i = 0; i < kMessages; ++i) {
    grpc::ClientContext ctx;
    v1::ReadQueueRequest req;
    req.set_topic("big");
    req.set_from(i);
    req.set_max(1);
    v1::ReadQueueReply reply;
    grpc::Status st = g2_->ReadQueue(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(reply.records_size(), 1);
    EXPECT_EQ(reply.records(0).message().body(), std::string(1 << 20, static_cast<char>('a' + i)));
  }
  // Bodies read are operator acts: each read of the open queue, and each
  // batch the copy read from the sealed one (24 MiB in 8 MiB pieces).
  auto reads = [](const std::string& trail) {
    int n = 0;
    for (size_t at = trail.find("dms.read-queue"); at != std::string::npos;
         at = trail.find("dms.read-queue", at + 1)) {
      ++n;
    }
    return n;
  };
  std::tie(code, out) = Ctl2({"--dms", absl::StrCat("127.0.0.1:", g2_port_), "audit", "dmsd"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_GE(reads(out), kMessages) << out;
  EXPECT_THAT(out, HasSubstr("topic=big queue=0 from=23 records=1"));
  std::tie(code, out) = Ctl2({"audit", "dmsd"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_GE(reads(out), 4) << out;
}

TEST_F(DmsGroupsTest, BadMovesAreRefusedNamingWhatIsWrongAndChangeNothing) {
  CreateTopic("orders", 4);
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  std::vector<Case> cases = {
      {{"orders", "1", "--to", "nope"}, "broker group 'nope' has no broker published"},
      {{"orders", "4", "--to", "g2"}, "QUEUE: topic 'orders' has queues 0 to 3, not 4"},
      {{"orders", "-1", "--to", "g2"}, "QUEUE: topic 'orders' has queues 0 to 3, not -1"},
      {{"nosuch", "0", "--to", "g2"}, "topic 'nosuch' does not exist"},
      {{"orders", "0", "--to", "G2"}, "--to 'G2' has character 'G'"},
      {{"orders", "0", "--to", "default"}, "is on broker group default already"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"dms", "move-queue"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto [code, out] = Ctl2(args);
    EXPECT_EQ(code, c.names.find("already") != std::string::npos ? 0 : 1) << out;
    EXPECT_THAT(out, HasSubstr(c.names)) << absl::StrJoin(c.args, " ");
    EXPECT_THAT(out, ::testing::Not(HasSubstr("sealed"))) << out;
  }
  EXPECT_FALSE(PlacementOf("orders").has_value());
  EXPECT_FALSE(PlacementOf("nosuch").has_value());
  for (int q = 0; q < 4; ++q) {
    grpc::Status st = ProduceTo(*broker_, "orders", q, absl::StrCat("still open ", q));
    EXPECT_TRUE(st.ok()) << q << ": " << st.error_message();
  }
  EXPECT_TRUE(Queues(*g2_, "orders").empty()) << "the topic was created on g2";
  // A queue out of range in a produce, as the client receives it.
  grpc::Status st = ProduceTo(*broker_, "orders", 7, "x");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("queue 7 does not exist; topic 'orders' has 4 queues"));
  // Sealing through the API names the bad part too.
  grpc::ClientContext ctx;
  v1::SealQueueRequest seal;
  seal.set_topic("orders");
  seal.set_queue(9);
  seal.set_to_group("g2");
  v1::SealQueueReply sealed;
  st = broker_->SealQueue(&ctx, seal, &sealed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("queue 9 does not exist"));
}

// A client that names no queue (an older library, another language, a
// committed half message) sends keyless messages and lets the broker pick:
// it never picks a queue sealed for a move, so none is refused.
TEST_F(DmsGroupsTest, TheBrokerNeverPicksASealedQueueForAKeylessMessage) {
  Create(*broker_, "spread", 4);
  Create(*g2_, "spread", 4);
  {
    grpc::ClientContext ctx;
    v1::SealQueueRequest req;
    req.set_topic("spread");
    req.set_queue(1);
    req.set_to_group("g2");
    v1::SealQueueReply reply;
    ASSERT_TRUE(broker_->SealQueue(&ctx, req, &reply).ok());
  }
  for (int i = 0; i < 40; ++i) {
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("spread");
    req.add_messages()->set_body(absl::StrCat("k", i));
    v1::ProduceReply reply;
    grpc::Status st = broker_->Produce(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << i << ": " << st.error_message();
    EXPECT_NE(reply.receipts(0).queue(), 1) << "a sealed queue took a message";
  }
  std::vector<v1::QueueInfo> queues = Queues(*broker_, "spread");
  ASSERT_EQ(queues.size(), 4u);
  EXPECT_EQ(queues[1].end_offset(), 0u);
  EXPECT_EQ(queues[0].end_offset() + queues[2].end_offset() + queues[3].end_offset(), 40u);
}

TEST_F(DmsGroupsTest, ABadBrokerGroupNameIsRefusedAtStartNamingTheKey) {
  for (const std::string& bad :
       std::vector<std::string>{"G2", "a_b", "default", std::string(64, 'a')}) {
    auto p = Subprocess::Start(
        {formica::testing::BinaryPath("dms/dmsd"), "--listen",
         absl::StrCat("127.0.0.1:", formica::testing::PickFreePort()), "--data-dir",
         dir_.File("bad-group"), "--registry", dsrd_->address(), "--set",
         absl::StrCat("broker_group=", bad)},
        dir_.File(absl::StrCat("bad-group-", bad.size(), std::string(1, bad[0]), ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2) << (*p)->Output();
    EXPECT_THAT((*p)->Output(), HasSubstr("broker_group")) << bad;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.File("bad-group")));
}

}  // namespace
}  // namespace formica::dms::testing
