// A queue moved from a single dmsd (the default group) into a replicated
// broker group of three named g3 (docs/dms.md, "Several broker groups";
// docs/ha.md): the move is replicated like any write, so the group's next
// leader, after kill -9 of the one that took it, serves the moved queue with
// everything acknowledged.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "dms_group_fixture.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/internal/dms_placement.h"
#include "formica/rpc/client.h"

namespace formica::dms::testing {
namespace {

using ::testing::HasSubstr;

class ReplicatedGroupsTest : public DmsGroupTest {
 protected:
  void SetUp() override {
    DmsGroupTest::SetUp();
    WriteConfigs({"events:4"}, 4096, 65536, "g3");
    StartAll();
    if (HasFatalFailure()) return;
    // The default group: one dmsd.
    single_port_ = formica::testing::PickFreePort();
    auto p = Subprocess::Start(
        {formica::testing::BinaryPath("dms/dmsd"), "--listen",
         absl::StrCat("127.0.0.1:", single_port_), "--data-dir", dir_.File("single"), "--registry",
         dsrd_->address(), "--set", "topics.create=events:4", "--set", "server.unpublish_grace=0s",
         "--set", "consume.retry_initial=50ms", "--set", "consume.retry_max=200ms"},
        dir_.File("single.log"));
    ASSERT_TRUE(p.ok()) << p.status();
    single_ = std::move(*p);
    ASSERT_TRUE(single_->WaitForOutput("dmsd ready on port", absl::Seconds(20)))
        << single_->Output();
    registry_ = NewClient("groups-test");
    rpc::ClientOptions o;
    o.app_name = "groups-test";
    rpc_ = std::move(*rpc::Client::Create(o, registry_.get()));
  }

  void TearDown() override {
    rpc_.reset();
    registry_.reset();
  }

  std::pair<int, std::string> Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--dms",
                                     absl::StrCat("127.0.0.1:", single_port_),
                                     "--timeout",
                                     "10"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("ctl", ++ctl_runs_, ".log")));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(30));
    return {code, (*p)->Output()};
  }

  static grpc::Status ProduceTo(const std::string& address, int queue, const std::string& body) {
    auto stub =
        v1::Broker::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("events");
    req.add_messages()->set_body(body);
    req.add_queues(queue);
    v1::ProduceReply reply;
    return stub->Produce(&ctx, req, &reply);
  }

  // Whether `service` has a provider in the registry within `timeout`.
  bool Published(const std::string& service, absl::Duration timeout) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      grpc::ClientContext ctx;
      formica::registry::v1::GetServiceRequest req;
      req.set_service(service);
      formica::registry::v1::ServiceSnapshot snap;
      if (Stub()->GetService(&ctx, req, &snap).ok() && snap.instances_size() > 0) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  int single_port_ = 0;
  int ctl_runs_ = 0;
  std::unique_ptr<Subprocess> single_;
  std::unique_ptr<registry::Client> registry_;
  std::unique_ptr<rpc::Client> rpc_;
};

TEST_F(ReplicatedGroupsTest, AQueueMovedIntoAReplicatedGroupSurvivesItsLeadersKillNine) {
  constexpr int kMoved = 2;
  absl::Mutex mu;
  std::set<std::string> delivered;
  ConsumerOptions co;
  co.group = "audit";
  co.topic = "events";
  auto consumer = Consumer::Start(
      co,
      [&](const ReceivedMessage& m) {
        absl::MutexLock lock(&mu);
        delivered.insert(m.body);
        return ConsumeResult::kSuccess;
      },
      rpc_.get());
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  ProducerOptions po;
  po.producer_group = "groups-test";
  auto producer = std::move(*Producer::Create(po, rpc_.get()));
  std::map<std::string, SendReceipt> acked;
  auto send = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      OutgoingMessage m;
      m.key = absl::StrCat("k", i % 32);
      m.body = absl::StrCat("e", i);
      m.dedup_key = m.body;
      auto r = producer->Send("events", m);
      ASSERT_TRUE(r.ok()) << m.body << ": " << r.status();
      acked[m.body] = *r;
    }
  };
  ASSERT_GE(WaitForLeader(absl::Seconds(20)), 0) << Logs();
  ASSERT_TRUE(Published(BrokerServiceOf("g3"), absl::Seconds(10)));
  send(0, 200);
  auto [code, out] = Ctl({"dms", "move-queue", "events", absl::StrCat(kMoved), "--to", "g3"});
  ASSERT_EQ(code, 0) << out << Logs();
  EXPECT_THAT(out, HasSubstr("3. opened queue 2 on broker group g3"));
  send(200, 400);
  int leader = WaitForLeader(absl::Seconds(10));
  ASSERT_GE(leader, 0) << Logs();
  Kill9(leader);
  int next = WaitForLeader(absl::Seconds(15), leader);
  ASSERT_GE(next, 0) << Logs();
  send(400, 500);

  // The next leader serves the moved queue (opened, not held); the default
  // group still refuses it, naming g3.
  std::string next_address = absl::StrCat("127.0.0.1:", members_[next].port);
  grpc::Status st = ProduceTo(next_address, kMoved, "direct");
  EXPECT_TRUE(st.ok()) << st.error_message();
  st = ProduceTo(absl::StrCat("127.0.0.1:", single_port_), kMoved, "refused");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("moved to broker group 'g3'"));
  // Every acknowledged message is delivered, those of the moved queue
  // included.
  absl::Time end = absl::Now() + absl::Seconds(40);
  size_t missing = acked.size();
  while (absl::Now() < end && missing > 0) {
    absl::SleepFor(absl::Milliseconds(100));
    absl::MutexLock lock(&mu);
    missing = 0;
    for (const auto& [body, r] : acked) missing += delivered.count(body) == 0 ? 1 : 0;
  }
  EXPECT_EQ(missing, 0u) << Logs();
  int moved = 0;
  for (const auto& [body, r] : acked) moved += r.queue == kMoved ? 1 : 0;
  EXPECT_GT(moved, 0);
  auto [topics_code, topics] = Ctl({"dms", "topics"});
  ASSERT_EQ(topics_code, 0) << topics;
  EXPECT_THAT(topics, HasSubstr(absl::StrCat("g3               ", next_address)));
  (*consumer)->Stop();
}

// A queue taken over from a group whose retention removed its start begins
// there on every member in one entry (not a placeholder per offset), and
// keeps that start through a leader's kill -9 and the member's restart.
TEST_F(ReplicatedGroupsTest, AnImportedQueueBeginsAtItsSourcesFirstOffsetOnEveryMember) {
  constexpr uint64_t kFirst = 3'000'000'000;
  int leader = WaitForLeader(absl::Seconds(20));
  ASSERT_GE(leader, 0) << Logs();
  auto stub_of = [&](int i) {
    return v1::Broker::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", members_[i].port),
                                                   grpc::InsecureChannelCredentials()));
  };
  v1::ImportQueueRequest import;
  import.set_topic("far");
  import.set_queues(1);
  import.set_first_offset(kFirst);
  for (int i = 0; i < 3; ++i) {
    v1::QueueRecord* r = import.add_records();
    r->set_offset(kFirst + i);
    r->mutable_message()->set_body(absl::StrCat("r", i));
  }
  {
    grpc::ClientContext ctx;
    v1::ImportQueueReply reply;
    grpc::Status st = stub_of(leader)->ImportQueue(&ctx, import, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message() << Logs();
    EXPECT_EQ(reply.appended(), 3u);
  }
  auto read = [&](int i, v1::ReadQueueReply* reply) {
    grpc::ClientContext ctx;
    v1::ReadQueueRequest req;
    req.set_topic("far");
    return stub_of(i)->ReadQueue(&ctx, req, reply);
  };
  Kill9(leader);
  int next = WaitForLeader(absl::Seconds(15), leader);
  ASSERT_GE(next, 0) << Logs();
  v1::ReadQueueReply got;
  grpc::Status st = read(next, &got);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(got.first_offset(), kFirst);
  EXPECT_EQ(got.end_offset(), kFirst + 3);
  ASSERT_EQ(got.records_size(), 3);
  EXPECT_EQ(got.records(0).offset(), kFirst);
  EXPECT_EQ(got.records(2).message().body(), "r2");
  // The killed member replays the group's log at its restart and catches
  // up; leading, it serves the same queue.
  StartMember(leader);
  ASSERT_TRUE(members_[leader].process->WaitForOutput("follower", absl::Seconds(20))) << Logs();
  Kill9(next);
  int third = WaitForLeader(absl::Seconds(15), next);
  ASSERT_GE(third, 0) << Logs();
  v1::ReadQueueReply later;
  st = read(third, &later);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(later.first_offset(), kFirst);
  ASSERT_EQ(later.records_size(), 3);
  EXPECT_EQ(later.records(1).message().body(), "r1");
}

}  // namespace
}  // namespace formica::dms::testing
