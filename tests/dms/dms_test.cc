// DMS end to end: a real dsrd and a real dmsd (started, killed -9 and
// restarted as a user would), this process producing and consuming through
// dms::Producer and dms::Consumer. What matters: no acknowledged message is
// lost, an acked one never comes again, order per key, retries and dead
// letters, delays, filters, groups, and clear errors on bad input.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "dms_fixture.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/activity.h"
#include "formica/rpc/client.h"
#include "json.h"

namespace formica::dms {
namespace {

using formica::testing::Subprocess;
using testing::DmsTest;
using testing::Msg;
using testing::Seen;

dts::ActivityOptions Purchase() {
  dts::ActivityOptions o;
  o.name = "fund.Purchase";
  return o;
}

TEST_F(DmsTest, ProducedMessagesAreConsumedOnceAndLagDrains) {
  CreateTopic("orders", 4);
  auto producer = NewProducer();
  for (int i = 0; i < 200; ++i) {
    auto r = producer->Send("orders", Msg(absl::StrCat("m", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->duplicate);
  }
  Seen seen;
  auto consumer = Consume(Options("g1", "orders", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(200, absl::Seconds(20)));
  EXPECT_EQ(seen.Distinct().size(), 200u);
  {
    absl::MutexLock lock(&seen.mu);
    EXPECT_EQ(seen.handled.size(), 200u);  // nothing failed: nothing twice
  }
  grpc::ClientContext ctx;
  v1::GetLagRequest req;
  req.set_group("g1");
  v1::GetLagReply lag;
  ASSERT_TRUE(broker_->GetLag(&ctx, req, &lag).ok());
  EXPECT_EQ(lag.total(), 0u);
  EXPECT_EQ(lag.queues_size(), 4);
  auto [code, topics] = Ctl({"dms", "topics"});
  EXPECT_EQ(code, 0) << topics;
  EXPECT_THAT(topics, ::testing::HasSubstr("orders"));
  auto [bad_code, bad] = Ctl({"dms", "lag", "nobody"});
  EXPECT_EQ(bad_code, 1);
  EXPECT_THAT(bad, ::testing::HasSubstr("group 'nobody' has not consumed any topic"));
}

TEST_F(DmsTest, FormicactlPrintsEveryReadAsOneJsonDocument) {
  using formica::testing::ParseJson;
  auto [code, out] = Ctl({"-o", "json", "dms", "create-topic", "invoices", "--queues", "2"});
  ASSERT_EQ(code, 0) << out;
  auto created = ParseJson<v1::TopicInfo>(out);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->name(), "invoices");
  EXPECT_EQ(created->queues_size(), 2);
  auto producer = NewProducer();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(producer->Send("invoices", Msg(absl::StrCat(i))).ok());
  Seen seen;
  auto consumer = Consume(Options("billing", "invoices", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(3, absl::Seconds(20)));

  std::tie(code, out) = Ctl({"--output", "json", "dms", "topics"});
  ASSERT_EQ(code, 0) << out;
  auto topics = ParseJson<v1::ListTopicsReply>(out);
  ASSERT_TRUE(topics.ok()) << topics.status();
  uint64_t produced = 0;
  for (const v1::TopicInfo& t : topics->topics()) {
    if (t.name() != "invoices") continue;
    for (const v1::QueueInfo& q : t.queues()) produced += q.end_offset() - q.first_offset();
  }
  EXPECT_EQ(produced, 3u) << out;

  std::tie(code, out) = Ctl({"-o", "json", "dms", "lag", "billing"});
  ASSERT_EQ(code, 0) << out;
  auto lag = ParseJson<v1::GetLagReply>(out);
  ASSERT_TRUE(lag.ok()) << lag.status();
  EXPECT_EQ(lag->queues_size(), 2) << out;
  EXPECT_EQ(lag->total(), 0u);
  EXPECT_THAT(out, ::testing::HasSubstr("\"dead_letters\": \"0\"")) << "zeros are printed";

  std::tie(code, out) = Ctl({"-o", "json", "dms", "dlq", "billing"});
  ASSERT_EQ(code, 0) << out;
  auto letters = ParseJson<v1::ListDeadLettersReply>(out);
  ASSERT_TRUE(letters.ok()) << letters.status();
  EXPECT_EQ(letters->letters_size(), 0);

  std::tie(code, out) = Ctl({"-o", "json", "dms", "half"});
  ASSERT_EQ(code, 0) << out;
  auto halves = ParseJson<v1::ListHalfMessagesReply>(out);
  ASSERT_TRUE(halves.ok()) << halves.status();
  EXPECT_EQ(halves->messages_size(), 0);

  // An error is still text on stderr, exit 1.
  std::tie(code, out) = Ctl({"-o", "json", "dms", "lag", "nobody"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, ::testing::HasSubstr("formicactl: NOT_FOUND"));
}

TEST_F(DmsTest, MessagesWithOneKeyAreHandledInOrderUnderConcurrency) {
  CreateTopic("ledger", 4);
  constexpr int kProducers = 8, kKeys = 16, kPerProducer = 60;
  // Each key's messages come from one producer thread, numbered in order.
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  auto producer = NewProducer();
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        std::string key = absl::StrCat("user", (p * kKeys / kProducers) + i % (kKeys / kProducers));
        if (!producer->Send("ledger", Msg(absl::StrCat(key, ":", i), key)).ok()) ++failures;
      }
    });
  }
  Seen seen;
  ConsumerOptions o = Options("ledger-apply", "ledger", &seen);
  o.ordered = true;
  o.threads = 8;
  auto consumer = Consume(o, &seen);
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  ASSERT_TRUE(seen.WaitConfirmed(kProducers * kPerProducer, absl::Seconds(30)));
  std::map<std::string, int> last;
  absl::MutexLock lock(&seen.mu);
  for (const std::string& body : seen.handled) {
    std::vector<std::string> parts = absl::StrSplit(body, ':');
    int n = std::stoi(parts[1]);
    auto it = last.find(parts[0]);
    if (it != last.end()) {
      EXPECT_GT(n, it->second) << body << " handled after " << it->second;
    }
    last[parts[0]] = n;
  }
  EXPECT_EQ(last.size(), static_cast<size_t>(kKeys));
}

// The broker is killed -9 while producers and a consumer run, and restarted:
// every message whose send was acknowledged is handled, and no message whose
// ack the broker confirmed is ever delivered again.
TEST_F(DmsTest, KillDuringProduceAndConsumeLosesNothingAcknowledged) {
  CreateTopic("payments", 4);
  Seen seen;
  ConsumerOptions o = Options("settle", "payments", &seen);
  o.ack_timeout = absl::Seconds(3);
  o.ordered = false;  // many in flight per queue when the broker dies
  auto consumer = Consume(o, &seen);
  auto producer = NewProducer();
  absl::Mutex mu;
  std::set<std::string> acked;
  std::atomic<bool> stop{false};
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < 4; ++p) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        std::string body = absl::StrCat("pay", next.fetch_add(1));
        if (producer->Send("payments", Msg(body)).ok()) {
          absl::MutexLock lock(&mu);
          acked.insert(body);
        } else {
          absl::SleepFor(absl::Milliseconds(20));
        }
      }
    });
  }
  // Liveness, not throughput: after each start, sends are acknowledged
  // again within a bound made of how long the restart took and the
  // producers' reconnection. (The 4 sends in flight at a kill may be
  // counted late; kProgress is well above them.)
  constexpr size_t kProgress = 50;
  auto await_acks = [&](absl::Duration restart_took) {
    const absl::Duration bound = 4 * restart_took + absl::Seconds(10);
    auto count = [&] {
      absl::MutexLock lock(&mu);
      return acked.size();
    };
    size_t before = count();
    absl::Time start = absl::Now();
    while (count() < before + kProgress && absl::Now() - start < bound) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GE(count(), before + kProgress) << "dmsd (up in " << restart_took << ") acknowledged "
                                           << count() - before << " sends within " << bound;
  };
  await_acks(absl::ZeroDuration());
  for (int round = 0; round < 2; ++round) {
    absl::Time killed = absl::Now();
    dmsd_->Kill();
    absl::SleepFor(absl::Milliseconds(200));
    StartDmsd();
    await_acks(absl::Now() - killed);
  }
  stop = true;
  for (auto& t : threads) t.join();
  std::set<std::string> must;
  {
    absl::MutexLock lock(&mu);
    must = acked;
  }
  ASSERT_TRUE(seen.WaitDistinct(must.size(), absl::Seconds(30)));
  absl::SleepFor(absl::Milliseconds(500));
  std::set<std::string> got = seen.Distinct();
  for (const std::string& body : must) EXPECT_TRUE(got.count(body) > 0) << body << " was lost";
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.redelivered_after_confirm, 0);
}

TEST_F(DmsTest, TornOrCorruptTailIsCutAndEveryWholeMessageBeforeItKept) {
  CreateTopic("journal", 1);
  auto producer = NewProducer();
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(producer->Send("journal", Msg(absl::StrCat("j", i))).ok());
  dmsd_->Kill();
  // A crash in the middle of a write: the last record is torn.
  std::string seg = NewestSegment("journal", 0);
  std::filesystem::resize_file(seg, std::filesystem::file_size(seg) - 7);
  StartDmsd();
  EXPECT_TRUE(dmsd_->WaitForOutput("cut a damaged tail", absl::Seconds(5))) << dmsd_->Output();
  Seen seen;
  auto consumer = Consume(Options("reader", "journal", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(99, absl::Seconds(20)));
  absl::SleepFor(absl::Milliseconds(300));
  {
    std::set<std::string> got = seen.Distinct();
    EXPECT_EQ(got.size(), 99u);
    for (int i = 0; i < 99; ++i) EXPECT_TRUE(got.count(absl::StrCat("j", i))) << i;
  }
  consumer->Stop();
  // Garbage after the last whole record (a write that never finished) is
  // cut too, and nothing is delivered from it.
  ASSERT_TRUE(producer->Send("journal", Msg("j-after")).ok());
  dmsd_->Kill();
  seg = NewestSegment("journal", 0);
  {
    std::ofstream out(seg, std::ios::app | std::ios::binary);
    out << std::string("\x10\x00\x00\x00garbage-garbage-garbage", 27);
  }
  StartDmsd();
  EXPECT_TRUE(dmsd_->WaitForOutput("cut a damaged tail", absl::Seconds(5))) << dmsd_->Output();
  Seen again;
  auto second = Consume(Options("reader2", "journal", &again), &again);
  ASSERT_TRUE(again.WaitConfirmed(100, absl::Seconds(20)));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(again.Distinct().size(), 100u);
  EXPECT_TRUE(again.Distinct().count("j-after"));
}

TEST_F(DmsTest, ARetriedSendWithTheSameDedupKeyIsStoredOnce) {
  CreateTopic("transfers", 2);
  auto producer = NewProducer();
  OutgoingMessage m = Msg("t1", "acct-1");
  m.dedup_key = "order-1";
  auto first = producer->Send("transfers", m);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = producer->Send("transfers", m);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->duplicate);
  EXPECT_EQ(second->queue, first->queue);
  EXPECT_EQ(second->offset, first->offset);
  // Concurrent sends of one key: one stored, all answered with its receipt.
  std::vector<std::thread> threads;
  std::atomic<int> stored{0};
  OutgoingMessage m2 = Msg("t2");
  m2.dedup_key = "order-2";
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto r = producer->Send("transfers", m2);
      if (r.ok() && !r->duplicate) ++stored;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(stored.load(), 1);
  // The index survives a kill -9: a resend after restart is still a duplicate.
  dmsd_->Kill();
  StartDmsd();
  auto third = producer->Send("transfers", m);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->duplicate);
  Seen seen;
  auto consumer = Consume(Options("g", "transfers", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(2, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(500));
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.handled.size(), 2u);
}

TEST_F(DmsTest, RetriedThenDeadLetteredThenReplayed) {
  CreateTopic("jobs", 1);
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("jobs", Msg("poison")).ok());
  Seen seen;
  ConsumerOptions o = Options("workers", "jobs", &seen);
  o.max_attempts = 3;
  std::atomic<bool> heal{false};
  std::vector<int> attempts;
  absl::Mutex mu;
  auto consumer = Consumer::Start(
      o,
      [&](const ReceivedMessage& m) {
        seen.Handle(m);
        absl::MutexLock lock(&mu);
        attempts.push_back(m.attempt);
        return heal.load() ? ConsumeResult::kSuccess : ConsumeResult::kRetryLater;
      },
      rpc_.get());
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  v1::ListDeadLettersReply letters = WaitForDeadLetters("workers", 1, absl::Seconds(10));
  ASSERT_EQ(letters.letters_size(), 1);
  EXPECT_EQ(letters.letters(0).message().body(), "poison");
  EXPECT_THAT(letters.letters(0).reason(), ::testing::HasSubstr("retried 3 times"));
  absl::SleepFor(absl::Milliseconds(500));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(attempts, (std::vector<int>{1, 2, 3}));  // not delivered again once dead
  }
  auto [code, listed] = Ctl({"dms", "dlq", "workers"});
  EXPECT_EQ(code, 0) << listed;
  EXPECT_THAT(listed, ::testing::HasSubstr("poison"));
  EXPECT_THAT(listed, ::testing::HasSubstr("retried 3 times"));
  auto [lag_code, lag] = Ctl({"dms", "lag", "workers"});
  EXPECT_EQ(lag_code, 0) << lag;
  EXPECT_THAT(lag, ::testing::HasSubstr("total lag 0, dead letters 1"));
  heal = true;
  auto [replay_code, replayed] = Ctl({"dms", "dlq", "workers", "--replay", "--yes"});
  EXPECT_EQ(replay_code, 0) << replayed;
  EXPECT_THAT(replayed, ::testing::HasSubstr("1 dead letters replayed to group workers"));
  ASSERT_TRUE(seen.WaitConfirmed(1, absl::Seconds(10)));
  grpc::ClientContext ctx2;
  v1::ListDeadLettersRequest lreq;
  lreq.set_group("workers");
  letters.Clear();
  ASSERT_TRUE(broker_->ListDeadLetters(&ctx2, lreq, &letters).ok());
  EXPECT_EQ(letters.letters_size(), 0);
}

TEST_F(DmsTest, DelayedMessagesAreNeverEarlyAndThenPrompt) {
  CreateTopic("reminders", 2);
  Seen seen;
  auto consumer = Consume(Options("notify", "reminders", &seen), &seen);
  auto producer = NewProducer();
  std::map<std::string, absl::Time> due;
  for (int i = 0; i < 6; ++i) {
    OutgoingMessage m = Msg(absl::StrCat("r", i));
    m.delay = absl::Milliseconds(300 * (i + 1));
    absl::Time sent = absl::Now();
    ASSERT_TRUE(producer->Send("reminders", m).ok());
    due[m.body] = sent + m.delay;
  }
  ASSERT_TRUE(producer->Send("reminders", Msg("now")).ok());
  ASSERT_TRUE(seen.WaitConfirmed(7, absl::Seconds(10)));
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.handled.front(), "now");
  for (const auto& [body, when] : due) {
    absl::Time at = seen.at[body];
    EXPECT_GE(at, when - absl::Milliseconds(5)) << body << " came early";  // clock rounding
    EXPECT_LT(at, when + absl::Milliseconds(500)) << body << " came late";
  }
}

TEST_F(DmsTest, ClusteringSplitsMessagesAndBroadcastGivesEveryMemberAll) {
  CreateTopic("events", 4);
  Seen a, b, x, y;
  auto ca = Consume(Options("cluster", "events", &a), &a);
  auto cb = Consume(Options("cluster", "events", &b), &b);
  ConsumerOptions bx = Options("fanout", "events", &x);
  bx.broadcast = true;
  bx.consumer_id = "node-x";
  ConsumerOptions by = Options("fanout", "events", &y);
  by.broadcast = true;
  by.consumer_id = "node-y";
  auto cx = Consume(bx, &x);
  auto cy = Consume(by, &y);
  auto producer = NewProducer();
  for (int i = 0; i < 200; ++i)
    ASSERT_TRUE(producer->Send("events", Msg(absl::StrCat("e", i))).ok());
  ASSERT_TRUE(x.WaitConfirmed(200, absl::Seconds(20)));
  ASSERT_TRUE(y.WaitConfirmed(200, absl::Seconds(20)));
  ASSERT_TRUE(a.WaitDistinct(1, absl::Seconds(5)));
  absl::Time end = absl::Now() + absl::Seconds(20);
  while (a.Distinct().size() + b.Distinct().size() < 200 && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::set<std::string> sa = a.Distinct(), sb = b.Distinct();
  EXPECT_EQ(sa.size() + sb.size(), 200u);
  EXPECT_GT(sa.size(), 0u);
  EXPECT_GT(sb.size(), 0u);
  for (const std::string& s : sa) EXPECT_EQ(sb.count(s), 0u) << s << " went to both members";
  EXPECT_EQ(x.Distinct().size(), 200u);
  EXPECT_EQ(y.Distinct().size(), 200u);
}

TEST_F(DmsTest, TagFilterDeliversOnlyMatchingMessages) {
  CreateTopic("trades", 2);
  auto producer = NewProducer();
  for (int i = 0; i < 60; ++i) {
    OutgoingMessage m = Msg(absl::StrCat("t", i));
    m.tags = {i % 3 == 0 ? "purchase" : "redeem"};
    ASSERT_TRUE(producer->Send("trades", m).ok());
  }
  Seen seen;
  ConsumerOptions o = Options("purchases", "trades", &seen);
  o.tags = {"purchase"};
  auto consumer = Consume(o, &seen);
  ASSERT_TRUE(seen.WaitConfirmed(20, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(300));
  std::set<std::string> got = seen.Distinct();
  EXPECT_EQ(got.size(), 20u);
  for (const std::string& s : got) EXPECT_EQ(std::stoi(s.substr(1)) % 3, 0) << s;
  // A member subscribing the same group otherwise is refused.
  ConsumerOptions other = Options("purchases", "trades", &seen);
  other.tags = {"redeem"};
  auto refused = Consumer::Start(
      other, [](const ReceivedMessage&) { return ConsumeResult::kSuccess; }, rpc_.get());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("subscribe alike"));
}

TEST_F(DmsTest, BadInputGetsClearErrorsAndChangesNothing) {
  CreateTopic("orders", 2);
  auto producer = NewProducer();
  auto unknown = producer->Send("no-such-topic", Msg("x"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), ::testing::HasSubstr("no-such-topic"));
  auto big = producer->Send("orders", Msg(std::string(5 << 20, 'x')));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.status().message(), ::testing::HasSubstr("max_body_bytes"));
  ConsumerOptions nameless;
  nameless.topic = "orders";
  auto no_group = Consumer::Start(
      nameless, [](const ReceivedMessage&) { return ConsumeResult::kSuccess; }, rpc_.get());
  ASSERT_FALSE(no_group.ok());
  EXPECT_THAT(no_group.status().message(), ::testing::HasSubstr("group is required"));
  ConsumerOptions o;
  o.group = "g";
  o.topic = "missing";
  auto no_topic = Consumer::Start(
      o, [](const ReceivedMessage&) { return ConsumeResult::kSuccess; }, rpc_.get());
  ASSERT_FALSE(no_topic.ok());
  EXPECT_EQ(no_topic.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_topic.status().message(), ::testing::HasSubstr("missing"));
  {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name("bad/name");
    v1::TopicInfo info;
    grpc::Status st = broker_->CreateTopic(&ctx, req, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), ::testing::HasSubstr("bad/name"));
  }
  {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name("orders");
    req.set_queues(3);
    v1::TopicInfo info;
    grpc::Status st = broker_->CreateTopic(&ctx, req, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  }
  {
    // One bad message in a batch stores none of it.
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("orders");
    req.add_messages()->set_body("fine");
    req.add_messages()->set_delay_ms(-5);
    v1::ProduceReply reply;
    grpc::Status st = broker_->Produce(&ctx, req, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), ::testing::HasSubstr("message 1"));
    grpc::ClientContext lctx;
    v1::ListTopicsReply topics;
    ASSERT_TRUE(broker_->ListTopics(&lctx, v1::ListTopicsRequest(), &topics).ok());
    for (const auto& t : topics.topics()) {
      for (const auto& q : t.queues()) EXPECT_EQ(q.end_offset(), 0u) << t.name();
    }
  }
  // A malformed config stops dmsd at start with the key named.
  std::string path = dir_.File("bad.yaml");
  std::ofstream(path) << "storage:\n  flush: sometimes\n";
  auto p = Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--config", path},
                             dir_.File("bad.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(10)), 2);
  EXPECT_THAT((*p)->Output(), ::testing::HasSubstr("storage.flush"));
}

TEST_F(DmsTest, DiskOverWatermarkRefusesProduceKeepsConsumersAndRecovers) {
  std::string fake = dir_.File("disk-used");
  std::ofstream(fake) << "0.10\n";
  setenv("FORMICA_FAULT_DISK_USED_FILE", fake.c_str(), 1);
  dmsd_->Kill();
  StartDmsd({"--set", "storage.disk_full_ratio=0.9"});
  unsetenv("FORMICA_FAULT_DISK_USED_FILE");
  CreateTopic("fills", 1);
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("fills", Msg("before")).ok());
  std::ofstream(fake) << "0.97\n";
  absl::SleepFor(absl::Milliseconds(1500));
  auto refused = producer->Send("fills", Msg("during"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("watermark"));
  Seen seen;
  auto consumer = Consume(Options("g", "fills", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(1, absl::Seconds(10)));  // consumers keep working
  std::ofstream(fake) << "0.50\n";
  absl::Time end = absl::Now() + absl::Seconds(5);
  absl::StatusOr<SendReceipt> r = absl::UnknownError("not tried");
  while (absl::Now() < end && !(r = producer->Send("fills", Msg("after"))).ok()) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(seen.WaitConfirmed(2, absl::Seconds(10)));
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"before", "after"}));
}

TEST_F(DmsTest, SigtermEndsCleanlyAndConsumersResumeAfterRestart) {
  CreateTopic("audit", 2);
  Seen seen;
  auto consumer = Consume(Options("auditors", "audit", &seen), &seen);
  auto producer = NewProducer();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(producer->Send("audit", Msg(absl::StrCat("a", i))).ok());
  ASSERT_TRUE(seen.WaitConfirmed(20, absl::Seconds(10)));
  EXPECT_EQ(dmsd_->Terminate(absl::Seconds(10)), 0) << dmsd_->Output();
  StartDmsd();
  for (int i = 20; i < 40; ++i) {
    auto r = producer->Send("audit", Msg(absl::StrCat("a", i)));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  ASSERT_TRUE(seen.WaitConfirmed(40, absl::Seconds(15)));
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.redelivered_after_confirm, 0);
}

// A consumer started while no broker serves (a broker group electing, a
// dead leader still listed) waits within its start_timeout and subscribes
// once one does, rather than failing at its first UNAVAILABLE.
TEST_F(DmsTest, AConsumerStartedBeforeAnyBrokerSubscribesOnceOneServes) {
  CreateTopic("late", 2);
  EXPECT_EQ(dmsd_->Terminate(absl::Seconds(10)), 0) << dmsd_->Output();
  Seen seen;
  ConsumerOptions o = Options("latecomers", "late", &seen);
  o.start_timeout = absl::Seconds(20);
  o.reconnect_delay = absl::Milliseconds(100);
  std::unique_ptr<Consumer> consumer;
  std::thread starting([&] { consumer = Consume(o, &seen); });
  absl::SleepFor(absl::Seconds(1));
  StartDmsd();
  starting.join();
  ASSERT_NE(consumer, nullptr);
  auto producer = NewProducer();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(producer->Send("late", Msg(absl::StrCat("l", i))).ok());
  EXPECT_TRUE(seen.WaitConfirmed(10, absl::Seconds(10)));
  // With no broker at all, Start gives up after start_timeout naming why.
  EXPECT_EQ(dmsd_->Terminate(absl::Seconds(10)), 0) << dmsd_->Output();
  o.start_timeout = absl::Milliseconds(500);
  auto none = Consumer::Start(
      o, [](const ReceivedMessage&) { return ConsumeResult::kSuccess; }, rpc_.get());
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kDeadlineExceeded) << none.status();
  EXPECT_NE(none.status().message().find("answered the subscription to 'late'"),
            absl::string_view::npos)
      << none.status();
}

TEST_F(DmsTest, RetentionRemovesOldFilesAndGroupsMovePastThem) {
  dmsd_->Kill();
  StartDmsd({"--set", "storage.segment_bytes=4096", "--set", "retention.max_bytes_per_queue=8192",
             "--set", "retention.check_interval=100ms"});
  CreateTopic("ticks", 1);
  auto producer = NewProducer();
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(producer->Send("ticks", Msg(absl::StrCat(i, ":", std::string(1000, 'x')))).ok());
  }
  v1::TopicInfo info;
  absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    grpc::ClientContext ctx;
    v1::ListTopicsReply topics;
    ASSERT_TRUE(broker_->ListTopics(&ctx, v1::ListTopicsRequest(), &topics).ok());
    info = topics.topics(0);
    if (info.queues(0).first_offset() > 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  const v1::QueueInfo& q = info.queues(0);
  ASSERT_GT(q.first_offset(), 0u) << "nothing was removed";
  EXPECT_EQ(q.end_offset(), 60u);
  EXPECT_LE(q.bytes(), 8192u + 4096u + 1100u);  // the limit, plus the file being written
  // A new group starts at the oldest message kept and gets every one after it.
  Seen seen;
  auto consumer = Consume(Options("late", "ticks", &seen), &seen);
  size_t kept = 60 - q.first_offset();
  ASSERT_TRUE(seen.WaitConfirmed(kept, absl::Seconds(10)));
  std::set<std::string> got = seen.Distinct();
  EXPECT_EQ(got.size(), kept);
  for (uint64_t i = q.first_offset(); i < 60; ++i) {
    EXPECT_EQ(got.count(absl::StrCat(i, ":", std::string(1000, 'x'))), 1u) << i;
  }
}

// Transactional messages: the broker checks undecided ones back quickly here.
class DmsTransactionTest : public DmsTest {
 protected:
  void SetUp() override {
    DmsTest::SetUp();
    CreateTopic("orders", 2);
  }

  std::vector<std::string> DmsdFlags() const override {
    return {"--set", "transactions.check_after=300ms",
            "--set", "transactions.check_interval=100ms",
            "--set", "transactions.check_interval_max=200ms",
            "--set", "transactions.max_checks=4"};
  }

  std::unique_ptr<Producer> TxnProducer(TransactionChecker checker = nullptr) {
    ProducerOptions o;
    o.producer_group = "order-service";
    o.checker = std::move(checker);
    return std::move(*Producer::Create(o, rpc_.get()));
  }

  std::vector<v1::HalfMessage> Halves(bool parked_only) {
    grpc::ClientContext ctx;
    v1::ListHalfMessagesRequest req;
    req.set_parked_only(parked_only);
    v1::ListHalfMessagesReply reply;
    EXPECT_TRUE(broker_->ListHalfMessages(&ctx, req, &reply).ok());
    return {reply.messages().begin(), reply.messages().end()};
  }
};

TEST_F(DmsTransactionTest, HalfMessageIsInvisibleUntilCommitAndARolledBackOneNeverComes) {
  Seen seen;
  auto consumer = Consume(Options("shipping", "orders", &seen), &seen);
  auto producer = TxnProducer();
  auto committed = producer->SendInTransaction("orders", Msg("order-1"), [&] {
    absl::SleepFor(absl::Milliseconds(600));  // the local transaction takes its time
    EXPECT_TRUE(seen.Distinct().empty()) << "a half message was delivered";
    return TransactionState::kCommit;
  });
  ASSERT_TRUE(committed.ok()) << committed.status();
  auto rolled = producer->SendInTransaction("orders", Msg("order-2"),
                                            [] { return TransactionState::kRollback; });
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  ASSERT_TRUE(seen.WaitConfirmed(1, absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(1));  // past several check-back rounds
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"order-1"}));
  EXPECT_TRUE(Halves(false).empty());
  // Ending again: the same outcome is fine, the opposite is refused.
  grpc::ClientContext ctx;
  v1::EndTransactionRequest req;
  req.set_transaction_id(rolled->transaction_id);
  req.set_commit(true);
  v1::EndTransactionReply reply;
  EXPECT_EQ(broker_->EndTransaction(&ctx, req, &reply).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(DmsTransactionTest, UndecidedHalfMessagesAreResolvedByCheckBackEvenAcrossAKill) {
  Seen seen;
  auto consumer = Consume(Options("shipping", "orders", &seen), &seen);
  std::atomic<int> checks{0};
  // The producer's local store: what it committed.
  auto producer = TxnProducer([&](const CheckedMessage& m) {
    ++checks;
    if (m.body == "stuck") return TransactionState::kUnknown;  // never knows: parked
    return m.body == "ghost" ? TransactionState::kRollback : TransactionState::kCommit;
  });
  for (const char* body : {"paid", "ghost", "stuck"}) {
    auto r =
        producer->SendInTransaction("orders", Msg(body), [] { return TransactionState::kUnknown; });
    ASSERT_TRUE(r.ok()) << r.status();
  }
  dmsd_->Kill();  // the half messages are on disk; checks resume after restart
  StartDmsd();
  ASSERT_TRUE(seen.WaitConfirmed(1, absl::Seconds(15)));
  absl::Time end = absl::Now() + absl::Seconds(10);
  std::vector<v1::HalfMessage> parked;
  while (absl::Now() < end && (parked = Halves(true)).empty()) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(parked.size(), 1u);  // the one its producer never decides
  EXPECT_EQ(parked[0].message().body(), "stuck");
  EXPECT_EQ(parked[0].checks(), 4);
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"paid"}));
  int before = checks.load();
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_EQ(checks.load(), before) << "a parked message is not checked";
  auto [code, listed] = Ctl({"dms", "half", "--parked"});
  EXPECT_EQ(code, 0) << listed;
  EXPECT_THAT(listed, ::testing::HasSubstr("parked"));
  EXPECT_THAT(listed, ::testing::HasSubstr("order-service"));
  // An operator resumes it once the producer knows.
  producer.reset();
  auto fixed = TxnProducer([](const CheckedMessage&) { return TransactionState::kCommit; });
  auto [resume_code, resumed] = Ctl({"dms", "resume", "--yes"});
  EXPECT_EQ(resume_code, 0) << resumed;
  EXPECT_THAT(resumed, ::testing::HasSubstr("1 half messages resumed"));
  ASSERT_TRUE(seen.WaitConfirmed(2, absl::Seconds(10)));
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"paid", "stuck"}));
}

TEST_F(DmsTransactionTest, AMessageJoinedToAnActivityFollowsItsOutcome) {
  int dtsd_port = formica::testing::PickFreePort();
  auto dtsd = Subprocess::Start(
      {formica::testing::BinaryPath("dts/dtsd"), "--listen", absl::StrCat("127.0.0.1:", dtsd_port),
       "--data-dir", dir_.File("dtsd"), "--registry", dsrd_->address(), "--set",
       "phase_two.retry_initial=50ms", "--set", "phase_two.retry_max=300ms", "--set",
       "server.unpublish_grace=0s"},
      dir_.File("dtsd.log"));
  ASSERT_TRUE(dtsd.ok());
  ASSERT_TRUE((*dtsd)->WaitForOutput("dtsd ready on port", absl::Seconds(20)));
  Seen seen;
  auto consumer = Consume(Options("shipping", "orders", &seen), &seen);
  auto producer = TxnProducer();
  // Committed activity: the message is delivered (dtsd confirms the action).
  absl::Status st = dts::RunActivity(rpc_.get(), Purchase(), [&] {
    absl::StatusOr<std::string> id = producer->SendInActivity("orders", Msg("purchase-1"));
    return id.status();
  });
  ASSERT_TRUE(st.ok()) << st;
  // Rolled back activity: discarded.
  auto activity = dts::Activity::Begin(rpc_.get(), Purchase());
  ASSERT_TRUE(activity.ok());
  ASSERT_TRUE(
      (*activity)
          ->Run([&] { return producer->SendInActivity("orders", Msg("purchase-2")).status(); })
          .ok());
  ASSERT_TRUE((*activity)->Rollback("the debit failed").ok());
  // Decided while dmsd was down: dtsd's phase two (or dmsd's check with
  // dtsd) settles it after the restart.
  auto third = dts::Activity::Begin(rpc_.get(), Purchase());
  ASSERT_TRUE(third.ok());
  ASSERT_TRUE(
      (*third)
          ->Run([&] { return producer->SendInActivity("orders", Msg("purchase-3")).status(); })
          .ok());
  dmsd_->Kill();
  ASSERT_TRUE((*third)->Commit().ok());
  StartDmsd();
  // (Handled, not confirmed: the kill may have cut purchase-1's ack
  // confirmation short after the ack was on disk.)
  ASSERT_TRUE(seen.WaitDistinct(2, absl::Seconds(20)))
      << "seen " << absl::StrJoin(seen.Distinct(), ",") << "\ndmsd:\n"
      << dmsd_->Output() << "\ndtsd:\n"
      << (*dtsd)->Output();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"purchase-1", "purchase-3"}));
  EXPECT_TRUE(Halves(false).empty());
  // Joining a decided activity begun at dtsd is refused (its enlist is),
  // and nothing is stored.
  dts::ActivityOptions at_dtsd = Purchase();
  at_dtsd.begin_at_coordinator = true;
  auto decided = dts::Activity::Begin(rpc_.get(), at_dtsd);
  ASSERT_TRUE(decided.ok()) << decided.status();
  ASSERT_TRUE((*decided)->Rollback("changed my mind").ok());
  auto late = producer->SendInActivity("orders", Msg("late"), (*decided)->id());
  ASSERT_FALSE(late.ok());
  EXPECT_THAT(late.status().message(), ::testing::HasSubstr("cannot join activity"));
  EXPECT_TRUE(Halves(false).empty());
  // One begun by its initiator is joined through the reply, without asking
  // dtsd: sent by hand after its rollback, the message is stored, its
  // report reaches no one, and dmsd's check with dtsd discards it.
  auto lost = producer->SendInActivity("orders", Msg("lost"), (*activity)->id());
  ASSERT_TRUE(lost.ok()) << lost.status();
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (!Halves(false).empty() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_TRUE(Halves(false).empty()) << "the check with dtsd settled it";
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"purchase-1", "purchase-3"}));
}

// A message joined to an activity its initiator began, whose report never
// reached the commit (sent by hand outside Run), follows the activity's
// outcome through dmsd's check with dtsd: delivered when it committed,
// discarded when it was never decided by its deadline.
TEST_F(DmsTransactionTest, AJoinedMessageWhoseReportWasLostFollowsItsActivity) {
  int dtsd_port = formica::testing::PickFreePort();
  auto dtsd =
      Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--listen",
                         absl::StrCat("127.0.0.1:", dtsd_port), "--data-dir", dir_.File("dtsd"),
                         "--registry", dsrd_->address(), "--set", "server.unpublish_grace=0s"},
                        dir_.File("dtsd.log"));
  ASSERT_TRUE(dtsd.ok());
  ASSERT_TRUE((*dtsd)->WaitForOutput("dtsd ready on port", absl::Seconds(20)));
  Seen seen;
  auto consumer = Consume(Options("shipping", "orders", &seen), &seen);
  auto producer = TxnProducer();
  dts::ActivityOptions quick = Purchase();
  quick.timeout = absl::Seconds(1);
  auto committed = dts::Activity::Begin(rpc_.get(), quick);
  auto undecided = dts::Activity::Begin(rpc_.get(), quick);
  ASSERT_TRUE(committed.ok() && undecided.ok());
  ASSERT_TRUE(producer->SendInActivity("orders", Msg("kept"), (*committed)->id()).ok());
  ASSERT_TRUE(producer->SendInActivity("orders", Msg("dropped"), (*undecided)->id()).ok());
  ASSERT_TRUE((*committed)->Commit().ok());
  ASSERT_TRUE(seen.WaitDistinct(1, absl::Seconds(20)));
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (!Halves(false).empty() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_TRUE(Halves(false).empty());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(seen.Distinct(), (std::set<std::string>{"kept"}));
  EXPECT_EQ((*undecided)->Commit().code(), absl::StatusCode::kFailedPrecondition)
      << "dtsd rolled it back for the check";
}

TEST_F(DmsTest, ABadTransactionsParticipantNameStopsStartUpNamingTheKey) {
  // (Each dmsd of an LDC zone takes its own name; tests/ldc/dms_activity_test.cc.)
  auto p = Subprocess::Start(DmsdCommand({"--set", "transactions.participant=formica dms"}),
                             dir_.File("bad-participant.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2) << (*p)->Output();
  EXPECT_THAT((*p)->Output(), ::testing::HasSubstr("transactions.participant: participant name"))
      << (*p)->Output();
}

}  // namespace
}  // namespace formica::dms
