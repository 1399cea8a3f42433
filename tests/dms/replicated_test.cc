// A replicated dmsd broker group (docs/ha.md) under failures, as real
// processes: three dmsd members and a dsrd on loopback, a producer sending
// with dedup keys and a consumer group, both following the leader through
// the registry. The history check: every acknowledged message is delivered,
// and each is stored once, retried sends included.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "replicated_fixture.h"

namespace formica::dms::testing {
namespace {

TEST_F(ReplicatedDms, KillNineOfTheLeaderThenAFollowerLosesNoAcknowledgedMessage) {
  WriteConfigs({"orders:4"});
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  History& h = h_;
  std::atomic<bool> stop{false};
  // No retries of its own: the producer follows the leader by itself.
  std::thread producer([&] { ProduceLoop(&h, &stop, 100000, /*app_retry=*/false); });
  struct Join {
    std::atomic<bool>* stop;
    std::thread* t;
    ~Join() {
      stop->store(true);
      if (t->joinable()) t->join();
    }
  } join{&stop, &producer};

  WaitAcked(&h, 150);
  h.Killed();
  Kill9(leader);
  absl::Duration failover = h.Failover(absl::Seconds(15));
  std::printf("failover: kill -9 of the leader to the first acknowledged send: %lld ms\n",
              static_cast<long long>(absl::ToInt64Milliseconds(failover)));
  EXPECT_LT(failover, absl::Seconds(5)) << Logs();
  int next = WaitForLeader(absl::Seconds(10), leader);
  ASSERT_GE(next, 0) << Logs();
  StartMember(leader);  // back as a follower; catches up from the log

  size_t before = h.Acked();
  WaitAcked(&h, before + 150);
  int follower = (next + 1) % 3;
  Kill9(follower);
  WaitAcked(&h, h.Acked() + 100);  // two members of three still commit
  StartMember(follower);
  WaitAcked(&h, h.Acked() + 100);
  stop = true;
  producer.join();
  CheckHistory(&h);
  absl::MutexLock lock(&h.mu);
  EXPECT_TRUE(h.failed.empty()) << h.failed.size() << " sends failed across the failovers";
}

TEST_F(ReplicatedDms, PausedLeaderAcknowledgesNothingAndCatchesUpAsAFollower) {
  WriteConfigs({"orders:4"});
  int old_leader = StartGroupWithClients();
  ASSERT_GE(old_leader, 0) << Logs();
  History& h = h_;
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 50);
  ASSERT_EQ(h.Acked(), 50u);

  members_[old_leader].process->Signal(SIGSTOP);
  // A produce sent straight to the paused leader: answered only after it
  // resumes, and never acknowledged.
  grpc::Status paused_answer;
  std::thread direct([&] {
    auto stub = v1::Broker::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", members_[old_leader].port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::ProduceRequest req;
    req.set_topic(kTopic);
    req.add_messages()->set_body("sent-to-the-paused-leader");
    v1::ProduceReply reply;
    paused_answer = stub->Produce(&ctx, req, &reply);
  });
  int new_leader = WaitForLeader(absl::Seconds(15), old_leader);
  ASSERT_GE(new_leader, 0) << Logs();
  ProduceLoop(&h, &stop, 100);  // m50..m99 through the new leader
  ASSERT_EQ(h.Acked(), 100u);

  members_[old_leader].process->Signal(SIGCONT);
  direct.join();
  EXPECT_FALSE(paused_answer.ok()) << "the deposed leader acknowledged a produce";
  // It is a follower now, naming the leader.
  absl::Time end = absl::Now() + absl::Seconds(10);
  grpc::Status st;
  while (absl::Now() < end) {
    st = Answers(old_leader);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
        st.error_message().find("follower") != std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(st.error_message().find("follower"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(absl::StrCat("node ", members_[new_leader].id)),
            std::string::npos)
      << st.error_message();

  // The old leader caught up: with the new leader killed, the two others
  // (the old leader one of them) hold every acknowledged message.
  Kill9(new_leader);
  ASSERT_GE(WaitForLeader(absl::Seconds(15), new_leader), 0) << Logs();
  CheckHistory(&h);
  absl::MutexLock lock(&h.mu);
  EXPECT_EQ(h.delivered.count("sent-to-the-paused-leader"), 0u);
}

TEST_F(ReplicatedDms, RestartingTheWholeGroupAtOnceLosesNothing) {
  // A snapshot every 64 entries: each member replays its log over its
  // stores from the last one.
  WriteConfigs({"orders:4"}, /*snapshot_threshold=*/64);
  StartAll();
  ASSERT_GE(WaitForLeader(absl::Seconds(15)), 0) << Logs();
  History& h = h_;
  StartClients(&h);
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 200);
  ASSERT_EQ(h.Acked(), 200u);
  // Some consumed and acknowledged before the crash.
  absl::Time end = absl::Now() + absl::Seconds(20);
  while (absl::Now() < end) {
    {
      absl::MutexLock lock(&h.mu);
      if (h.confirmed.size() >= 100) break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  consumer_.reset();
  for (int i = 0; i < 3; ++i) Kill9(i);
  StartAll();  // each replays its log over its stores
  ASSERT_GE(WaitForLeader(absl::Seconds(15)), 0) << Logs();
  {
    absl::MutexLock lock(&h.mu);
    h.delivered.clear();  // what the restarted group delivers, from here
  }
  ProduceLoop(&h, &stop, 300);  // m200..m299 after the restart
  StartClients(&h);
  // Every acknowledged message not confirmed consumed comes, none twice.
  end = absl::Now() + absl::Seconds(30);
  std::vector<std::string> missing;
  while (absl::Now() < end) {
    missing.clear();
    absl::MutexLock lock(&h.mu);
    for (const std::string& id : h.acked) {
      if (h.confirmed.count(id) == 0 && h.delivered.count(id) == 0) missing.push_back(id);
    }
    if (missing.empty()) break;
    h.mu.Unlock();
    absl::SleepFor(absl::Milliseconds(100));
    h.mu.Lock();
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged messages lost\n" << Logs();
  absl::MutexLock lock(&h.mu);
  EXPECT_EQ(h.redelivered_after_confirm, 0);
  for (const auto& [body, places] : h.delivered) EXPECT_EQ(places.size(), 1u) << body;
}

// A stub straight to member `i`.
std::unique_ptr<v1::Broker::Stub> StubOf(int port) {
  return v1::Broker::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
}

TEST_F(ReplicatedDms, HalfMessagesAndDeadLettersSurviveTheLeadersLoss) {
  WriteConfigs({"orders:4"});
  StartAll();
  int leader = WaitForLeader(absl::Seconds(15));
  ASSERT_GE(leader, 0) << Logs();
  // Two half messages prepared on the leader.
  std::vector<std::string> ids;
  for (const char* body : {"half-commit", "half-rollback"}) {
    grpc::ClientContext ctx;
    v1::PrepareRequest req;
    req.set_topic(kTopic);
    req.set_producer_group("group-test");
    req.mutable_message()->set_body(body);
    v1::PrepareReply reply;
    grpc::Status st = StubOf(members_[leader].port)->Prepare(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ids.push_back(reply.transaction_id());
  }
  // A message that goes to the dead letters of group "strict" (one attempt).
  History& h = h_;
  StartClients(&h);
  {
    OutgoingMessage m;
    m.body = "poison";
    m.dedup_key = "poison";
    ASSERT_TRUE(producer_->Send(kTopic, m).ok());
  }
  ConsumerOptions co;
  co.group = "strict";
  co.topic = kTopic;
  co.max_attempts = 1;
  std::atomic<int> attempts{0};
  auto strict = Consumer::Start(
      co,
      [&attempts](const ReceivedMessage&) {
        ++attempts;
        return ConsumeResult::kRetryLater;
      },
      rpc_.get());
  ASSERT_TRUE(strict.ok()) << strict.status();
  auto letters = [&](int member) {
    grpc::ClientContext ctx;
    v1::ListDeadLettersRequest req;
    req.set_group("strict");
    v1::ListDeadLettersReply reply;
    grpc::Status st = StubOf(members_[member].port)->ListDeadLetters(&ctx, req, &reply);
    return st.ok() ? reply.letters_size() : -1;
  };
  absl::Time end = absl::Now() + absl::Seconds(15);
  while (letters(leader) < 1 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(letters(leader), 1) << Logs();
  (*strict)->Stop();

  Kill9(leader);
  int next = WaitForLeader(absl::Seconds(15), leader);
  ASSERT_GE(next, 0) << Logs();
  EXPECT_EQ(letters(next), 1) << "the dead letter is not on the new leader";
  {
    grpc::ClientContext ctx;
    v1::ListHalfMessagesRequest req;
    v1::ListHalfMessagesReply reply;
    ASSERT_TRUE(StubOf(members_[next].port)->ListHalfMessages(&ctx, req, &reply).ok());
    EXPECT_EQ(reply.messages_size(), 2) << "the half messages are not on the new leader";
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    grpc::ClientContext ctx;
    v1::EndTransactionRequest req;
    req.set_transaction_id(ids[i]);
    req.set_commit(i == 0);
    v1::EndTransactionReply reply;
    grpc::Status st = StubOf(members_[next].port)->EndTransaction(&ctx, req, &reply);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  // The committed one is delivered, the rolled-back one never.
  end = absl::Now() + absl::Seconds(15);
  while (absl::Now() < end) {
    {
      absl::MutexLock lock(&h.mu);
      if (h.delivered.count("half-commit") > 0) break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(300));
  absl::MutexLock lock(&h.mu);
  EXPECT_EQ(h.delivered.count("half-commit"), 1u) << Logs();
  EXPECT_EQ(h.delivered.count("half-rollback"), 0u);
  EXPECT_EQ(h.delivered.count("poison"), 1u);
}

TEST_F(ReplicatedDms, ATopicCreatedAtRunTimeIsOnEveryMember) {
  WriteConfigs({"orders:4"});
  StartAll();
  int leader = WaitForLeader(absl::Seconds(15));
  ASSERT_GE(leader, 0) << Logs();
  {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name("payments");
    req.set_queues(2);
    v1::TopicInfo info;
    grpc::Status st = StubOf(members_[leader].port)->CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(info.queues_size(), 2);
  }
  History& h = h_;
  StartClients(&h);
  for (int i = 0; i < 20; ++i) {
    OutgoingMessage m;
    m.body = absl::StrCat("p", i);
    m.dedup_key = m.body;
    ASSERT_TRUE(producer_->Send("payments", m).ok()) << i;
  }
  // The old leader restarted (its stores reopen the topic), the next killed.
  Kill9(leader);
  int next = WaitForLeader(absl::Seconds(15), leader);
  ASSERT_GE(next, 0) << Logs();
  StartMember(leader);
  Kill9(next);
  ASSERT_GE(WaitForLeader(absl::Seconds(15), next), 0) << Logs();
  std::set<std::string> got;
  ConsumerOptions co;
  co.group = "payers";
  co.topic = "payments";
  absl::Mutex mu;
  auto c = Consumer::Start(
      co,
      [&](const ReceivedMessage& m) {
        absl::MutexLock lock(&mu);
        got.insert(m.body);
        return ConsumeResult::kSuccess;
      },
      rpc_.get());
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Time end = absl::Now() + absl::Seconds(15);
  while (absl::Now() < end) {
    {
      absl::MutexLock lock(&mu);
      if (got.size() >= 20) break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  (*c)->Stop();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got.size(), 20u) << Logs();
}

TEST_F(ReplicatedDms, MembersWhoseTopicListsDifferAllGoOn) {
  WriteConfigs({"orders:4"});
  // Members 2 and 3 list a topic member 1 does not.
  for (int i : {1, 2}) {
    std::ifstream in(members_[i].config_path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string from = "create: [\"orders:4\"]";
    ASSERT_NE(text.find(from), std::string::npos) << text;
    text.replace(text.find(from), from.size(), "create: [\"orders:4\", \"extra:2\"]");
    std::ofstream(members_[i].config_path, std::ios::trunc) << text;
  }
  StartAll();
  int leader = WaitForLeader(absl::Seconds(15));
  ASSERT_GE(leader, 0) << Logs();
  if (leader == 0) {  // a leader listing `extra` creates it through the group's log
    Kill9(0);
    leader = WaitForLeader(absl::Seconds(15), 0);
    ASSERT_GT(leader, 0) << Logs();
    StartMember(0);
  }
  History& h = h_;
  StartClients(&h);
  for (int i = 0; i < 10; ++i) {
    OutgoingMessage m;
    m.body = absl::StrCat("x", i);
    m.dedup_key = m.body;
    ASSERT_TRUE(producer_->Send("extra", m).ok()) << i << Logs();
  }
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 10);
  EXPECT_EQ(h.Acked(), 10u);
  // Member 1 created the topic from the group's log, and goes on.
  ASSERT_TRUE(
      members_[0].process->WaitForOutput("topic extra: created with 2 queues", absl::Seconds(10)))
      << members_[0].process->Output();
  absl::SleepFor(absl::Milliseconds(500));
  for (Member& m : members_) EXPECT_TRUE(m.process->running()) << Logs();
}

TEST_F(ReplicatedDms, WithoutAMajorityNothingIsAcknowledged) {
  WriteConfigs({"orders:4"});
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  History& h = h_;
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 20);
  ASSERT_EQ(h.Acked(), 20u);
  Kill9((leader + 1) % 3);
  Kill9((leader + 2) % 3);
  OutgoingMessage m;
  m.body = "no-majority";
  m.dedup_key = m.body;
  absl::StatusOr<SendReceipt> r = producer_->Send(kTopic, m);
  EXPECT_FALSE(r.ok()) << "acknowledged by one member of three";
  // The lone member stops leading (it has no majority) and refuses.
  absl::Time end = absl::Now() + absl::Seconds(10);
  grpc::Status st;
  while (absl::Now() < end) {
    st = Answers(leader);
    if (!st.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(ReplicatedDms, AMemberTooFarBehindTheLeadersLogStopsNamingTheCause) {
  // The leader keeps 256 entries (dmsd's floor) after each snapshot of 16.
  WriteConfigs({"orders:4"}, /*snapshot_threshold=*/16, /*snapshot_trailing=*/256);
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  History& h = h_;
  int behind = (leader + 1) % 3;
  Kill9(behind);
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 400);
  ASSERT_EQ(h.Acked(), 400u);
  Member& m = members_[behind];
  // Twice: the second start finds the leader's snapshot it saved the first
  // time, and refuses again (its stores still miss what it holds).
  for (int run = 0; run < 2; ++run) {
    auto p =
        Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--config", m.config_path},
                          dir_.File(absl::StrCat("dmsd", m.id, ".behind", run, ".log")));
    ASSERT_TRUE(p.ok());
    EXPECT_NE((*p)->Wait(absl::Seconds(30)), 0) << "run " << run << ": " << (*p)->Output();
    EXPECT_NE((*p)->Output().find("fell further behind its broker group"), std::string::npos)
        << "run " << run << ": " << (*p)->Output();
    EXPECT_NE((*p)->Output().find("snapshot"), std::string::npos) << (*p)->Output();
  }
  // The two others go on.
  ProduceLoop(&h, &stop, 420);
  EXPECT_EQ(h.Acked(), 420u);
}

TEST_F(ReplicatedDms, BadRaftConfigIsRefusedNamingTheKey) {
  WriteConfigs({"orders:4"});
  std::ifstream in(members_[0].config_path);
  std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string raft = good.substr(good.find("raft:"));
  std::string base = good.substr(0, good.find("raft:"));
  struct Case {
    std::string raft;
    std::string key;
  };
  std::vector<Case> cases = {
      // a group of two is even
      {"raft:\n  node_id: 1\n  data_dir: /tmp/x\n  peers: [\"1@127.0.0.1:7001\", "
       "\"2@127.0.0.1:7002\"]\n",
       "raft.peers"},
      // this node is not among the peers
      {"raft:\n  node_id: 4\n  data_dir: /tmp/x\n  peers: [\"1@127.0.0.1:7001\", "
       "\"2@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]\n",
       "raft.node_id"},
      // the same node id twice
      {"raft:\n  node_id: 1\n  data_dir: /tmp/x\n  peers: [\"1@127.0.0.1:7001\", "
       "\"1@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]\n",
       "raft.peers"},
      // an empty section is not a single dmsd
      {"raft:\n", "raft.node_id"},
      // below dmsd's floor
      {"raft:\n  node_id: 1\n  data_dir: /tmp/x\n  peers: [\"1@127.0.0.1:7001\", "
       "\"2@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]\n  snapshot_trailing: 16\n",
       "raft.snapshot_trailing"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string path = dir_.File(absl::StrCat("bad", i, ".yaml"));
    std::ofstream(path) << base << cases[i].raft;
    auto p = Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--config", path},
                               dir_.File(absl::StrCat("bad", i, ".log")));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2) << (*p)->Output();
    EXPECT_NE((*p)->Output().find(cases[i].key), std::string::npos) << (*p)->Output();
    // Refused before anything is created.
    EXPECT_FALSE(std::filesystem::exists(dir_.File("dmsd1"))) << (*p)->Output();
  }
}

}  // namespace
}  // namespace formica::dms::testing
