// Permissions checked by the daemons (docs/security.md, "Permissions"):
// real dsrd, dmsd and dtsd over mutual TLS with a permissions file; each
// refusal is PERMISSION_DENIED over the wire naming the identity, the
// action and the rule missing, and changes nothing.
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "gtest/gtest.h"
#include "process.h"
#include "tls_fixture.h"

namespace formica {
namespace {

registry::Instance Instance(const std::string& service, const std::string& address) {
  registry::Instance i;
  i.service = service;
  i.address = address;
  return i;
}

constexpr char kRules[] = R"(rules:
  - identity: spiffe://formica.local/echo
    allow: [publish formica.test.Echo]
  - identity: spiffe://formica.local/tester
    allow: [subscribe *, publish tester.*, produce payments, consume payments/ledger]
  - identity: spiffe://formica.local/operator
    allow: [operate *, config.write *]
  - identity: spiffe://formica.local/dmsd
    allow: [publish formica.dms.*, subscribe *]
  - identity: spiffe://formica.local/dtsd
    allow: [publish formica.dts.*, subscribe *]
)";

class PermissionsTest : public TlsTest {
 protected:
  void SetUp() override {
    TlsTest::SetUp();
    rules_ = dir_.File("permissions.yaml");
    WriteRules(kRules);
    StartDsrd("127.0.0.1",
              {{"security.permissions_file", rules_}, {"security.permissions_reload", "200ms"}});
  }
  void WriteRules(const std::string& text) {
    std::string tmp = rules_ + ".new";
    std::ofstream(tmp) << text;
    std::rename(tmp.c_str(), rules_.c_str());
  }
  std::string rules_;
};

// A provider may publish only the services its rules name: a refused
// publication is PERMISSION_DENIED naming what is missing and never
// reaches a subscriber; a changed file is read again.
TEST_F(PermissionsTest, APublicationOutsideTheRulesIsRefusedAndNeverPushed) {
  UseTlsAs("tester");
  auto reg = NewRegistry("tester");
  ASSERT_NE(reg, nullptr);
  ASSERT_TRUE(reg->Subscribe("formica.test.Echo", nullptr).ok());

  absl::Status st = reg->Publish(Instance("formica.test.Echo", "127.0.0.1:1"));
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_EQ(st.message(), absl::StrCat("identity 'spiffe://formica.local/tester' may not publish "
                                       "'formica.test.Echo': no rule in ",
                                       rules_, " allows 'publish formica.test.Echo'"));
  EXPECT_TRUE(reg->Publish(Instance("tester.Mine", "127.0.0.1:2")).ok());

  // The allowed provider is the only one a subscriber ever sees.
  std::string echo_address;
  auto echo = StartEcho(&echo_address);
  ASSERT_NE(echo, nullptr);
  std::optional<registry::ServiceSnapshot> snap;
  for (int i = 0; i < 200; ++i) {
    snap = reg->GetSnapshot("formica.test.Echo");
    if (snap && !snap->instances.empty()) break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_TRUE(snap && snap->instances.size() == 1u);
  EXPECT_EQ(snap->instances[0].address, echo_address);
  EXPECT_TRUE(dsrd_->process()->WaitForOutput(
      "identity 'spiffe://formica.local/tester' may not publish 'formica.test.Echo'",
      absl::Seconds(5)));

  // The rules change on disk: the same publication now goes through.
  WriteRules(absl::StrCat(kRules,
                          "  - identity: spiffe://formica.local/tester\n"
                          "    allow: [publish formica.test.Echo]\n"));
  absl::Status later;
  for (int i = 0; i < 40; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    later = reg->Publish(Instance("formica.test.Echo", "127.0.0.1:1"));
    if (later.ok()) break;
  }
  EXPECT_TRUE(later.ok()) << later;

  // A file that breaks is logged and the rules before it stay.
  WriteRules("rules:\n  - identity: x\n    allow: [fly everywhere]\n");
  absl::SleepFor(absl::Milliseconds(400));  // past the reload interval
  EXPECT_TRUE(reg->Publish(Instance("formica.test.Echo", "127.0.0.1:3")).ok());
  EXPECT_TRUE(dsrd_->process()->WaitForOutput("unknown action 'fly'", absl::Seconds(5)))
      << dsrd_->process()->Output();
}

// Config writes and operator commands need their rules; reads do not.
TEST_F(PermissionsTest, ConfigWritesAndOperatorCommandsNeedTheirRules) {
  auto [code, out] = Ctl("tester", {"config", "put", "ldc/rules", "x"});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("PERMISSION_DENIED: identity 'spiffe://formica.local/tester' may not "
                     "config.write 'ldc/rules'"),
            std::string::npos)
      << out;
  auto [get_code, get_out] = Ctl("tester", {"config", "get", "ldc/rules"});
  EXPECT_NE(get_out.find("NOT_FOUND"), std::string::npos)
      << "the refused write changed it: " << get_out;
  auto [op_code, op_out] = Ctl("operator", {"config", "put", "ldc/rules", "x"});
  EXPECT_EQ(op_code, 0) << op_out;

  auto [stop_code, stop_out] = Ctl("tester", {"registry", "stop-push", "on"});
  EXPECT_EQ(stop_code, 1) << stop_out;
  EXPECT_NE(stop_out.find("may not operate 'registry'"), std::string::npos) << stop_out;
  auto [status_code, status_out] = Ctl("operator", {"registry", "stop-push", "status"});
  EXPECT_NE(status_out.find("off"), std::string::npos)
      << "the refused switch changed it: " << status_out;
  // Without a certificate there is no identity to allow.
  auto [plain_code, plain_out] = Ctl("", {"registry", "ls"});
  EXPECT_NE(plain_code, 0);
}

// dmsd: produce and consume per topic (and group); operator commands.
// dtsd: operator commands.
TEST_F(PermissionsTest, TopicsAndOperatorCommandsAtTheBrokerAndCoordinator) {
  int dmsd_port = 0, dtsd_port = 0;
  std::vector<std::string> rules = {"--set", "security.permissions_file=" + rules_};
  std::vector<std::string> dmsd_flags = {"--data-dir", dir_.File("dmsd")};
  dmsd_flags.insert(dmsd_flags.end(), rules.begin(), rules.end());
  auto dmsd = StartDaemon("dms/dmsd", "dmsd", dmsd_flags, &dmsd_port);
  std::vector<std::string> dtsd_flags = {"--data-dir", dir_.File("dtsd")};
  dtsd_flags.insert(dtsd_flags.end(), rules.begin(), rules.end());
  auto dtsd = StartDaemon("dts/dtsd", "dtsd", dtsd_flags, &dtsd_port);
  ASSERT_TRUE(dmsd && dtsd);
  std::string dms = absl::StrCat("127.0.0.1:", dmsd_port);
  std::string dts = absl::StrCat("127.0.0.1:", dtsd_port);

  auto [create_code, create_out] = Ctl("tester", {"--dms", dms, "dms", "create-topic", "payments"});
  EXPECT_EQ(create_code, 1) << create_out;
  EXPECT_NE(create_out.find("may not operate 'dms'"), std::string::npos) << create_out;
  for (const char* topic : {"payments", "audit"}) {
    auto [c, out] = Ctl("operator", {"--dms", dms, "dms", "create-topic", topic});
    ASSERT_EQ(c, 0) << out;
  }

  UseTlsAs("tester");
  auto reg = NewRegistry("tester");
  ASSERT_NE(reg, nullptr);
  rpc::ClientOptions co;
  co.app_name = "tester";
  auto rpc = rpc::Client::Create(co, reg.get());
  ASSERT_TRUE(rpc.ok());
  dms::ProducerOptions po;
  po.producer_group = "tester";
  po.timeout = absl::Seconds(3);
  auto producer = dms::Producer::Create(po, rpc->get());
  ASSERT_TRUE(producer.ok());
  dms::OutgoingMessage m;
  m.body = "x";
  EXPECT_TRUE((*producer)->Send("payments", m).ok());
  // Moving a queue to another broker group is an operator act, step by step.
  {
    auto stub = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, formica::ChannelCredentials()));
    grpc::ClientContext ctx;
    dms::v1::SealQueueRequest seal;
    seal.set_topic("payments");
    seal.set_queue(0);
    seal.set_to_group("g2");
    dms::v1::SealQueueReply sealed;
    grpc::Status st = stub->SealQueue(&ctx, seal, &sealed);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_NE(st.error_message().find("may not operate 'dms'"), std::string::npos)
        << st.error_message();
    grpc::ClientContext read_ctx;
    dms::v1::ReadQueueRequest read;
    read.set_topic("payments");
    dms::v1::ReadQueueReply got;
    EXPECT_EQ(stub->ReadQueue(&read_ctx, read, &got).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  for (int i = 0; i < 16; ++i) {  // nothing sealed: every queue takes messages
    EXPECT_TRUE((*producer)->Send("payments", m).ok());
  }
  auto refused = (*producer)->Send("audit", m);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_NE(refused.status().message().find(
                "identity 'spiffe://formica.local/tester' may not produce 'audit'"),
            std::string::npos)
      << refused.status();

  auto consume = [&](const std::string& topic, const std::string& group) {
    dms::ConsumerOptions o;
    o.topic = topic;
    o.group = group;
    return dms::Consumer::Start(
        o, [](const dms::ReceivedMessage&) { return dms::ConsumeResult::kSuccess; }, rpc->get());
  };
  auto bad_group = consume("payments", "other");
  EXPECT_EQ(bad_group.status().code(), absl::StatusCode::kPermissionDenied) << bad_group.status();
  EXPECT_NE(bad_group.status().message().find("may not consume 'payments/other'"),
            std::string::npos)
      << bad_group.status();
  auto good = consume("payments", "ledger");
  EXPECT_TRUE(good.ok()) << good.status();

  // The refused send stored nothing: every queue of "audit" ends at 0.
  auto [topics_code, topics_out] = Ctl("operator", {"--dms", dms, "dms", "topics"});
  ASSERT_EQ(topics_code, 0) << topics_out;
  int audit_queues = 0;
  for (absl::string_view line : absl::StrSplit(topics_out, '\n')) {
    std::vector<std::string> cols = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // TOPIC QUEUE GROUP LEADER FIRST END BYTES
    if (cols.size() == 7 && cols[0] == "audit") {
      ++audit_queues;
      EXPECT_EQ(cols[5], "0") << line;
    }
  }
  EXPECT_GT(audit_queues, 0) << topics_out;

  // dtsd's operator commands, called as formicactl calls them.
  auto coordinator =
      dts::v1::Coordinator::NewStub(grpc::CreateChannel(dts, formica::ChannelCredentials()));
  grpc::ClientContext ctx;
  dts::v1::ActivityRef ref;
  ref.set_activity_id("nonexistent");
  dts::v1::DecisionResponse resp;
  grpc::Status settle = coordinator->Settle(&ctx, ref, &resp);
  EXPECT_EQ(settle.error_code(), grpc::StatusCode::PERMISSION_DENIED) << settle.error_message();
  EXPECT_NE(
      settle.error_message().find("identity 'spiffe://formica.local/tester' may not operate 'dts'"),
      std::string::npos)
      << settle.error_message();
}

// Every operator act, allowed or refused, is recorded durably by the
// daemon that was asked, with the identity, the arguments and the result;
// `formicactl audit` lists them from all three.
TEST_F(PermissionsTest, EveryOperatorActIsRecordedWithItsIdentityAndResult) {
  int dmsd_port = 0, dtsd_port = 0;
  auto dmsd =
      StartDaemon("dms/dmsd", "dmsd",
                  {"--data-dir", dir_.File("dmsd"), "--set", "security.permissions_file=" + rules_},
                  &dmsd_port);
  auto dtsd =
      StartDaemon("dts/dtsd", "dtsd",
                  {"--data-dir", dir_.File("dtsd"), "--set", "security.permissions_file=" + rules_},
                  &dtsd_port);
  ASSERT_TRUE(dmsd && dtsd);
  std::string dms = absl::StrCat("127.0.0.1:", dmsd_port);
  std::string dts = absl::StrCat("127.0.0.1:", dtsd_port);
  EXPECT_EQ(Ctl("operator", {"config", "put", "ldc/rules", "v1"}).first, 0);
  EXPECT_EQ(Ctl("tester", {"config", "put", "ldc/rules", "v2"}).first, 1);
  EXPECT_EQ(Ctl("operator", {"registry", "stop-push", "on"}).first, 0);
  EXPECT_EQ(Ctl("operator", {"registry", "stop-push", "off"}).first, 0);
  EXPECT_EQ(Ctl("tester", {"registry", "kill-session", "42"}).first, 1);
  EXPECT_EQ(Ctl("operator", {"--dms", dms, "dms", "create-topic", "payments"}).first, 0);
  EXPECT_EQ(Ctl("operator", {"--dms", dms, "--yes", "dms", "dlq", "ledger", "--replay"}).first, 0);
  UseTlsAs("tester");
  auto coordinator =
      dts::v1::Coordinator::NewStub(grpc::CreateChannel(dts, formica::ChannelCredentials()));
  grpc::ClientContext ctx;
  dts::v1::ActivityRef ref;
  ref.set_activity_id("a-42");
  dts::v1::DecisionResponse resp;
  EXPECT_EQ(coordinator->Settle(&ctx, ref, &resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Kept across a crash of the registry.
  dsrd_->Kill9();
  ASSERT_TRUE(dsrd_->Restart().ok());
  auto [code, out] = Ctl("operator", {"--dms", dms, "--dts", dts, "audit"});
  ASSERT_EQ(code, 0) << out;
  // Each act as a line: time, daemon, identity, action, arguments, result;
  // in the order they happened.
  struct Act {
    const char* daemon;
    const char* identity;
    const char* action;
    const char* arguments_and_result;
  };
  std::vector<Act> want = {
      {"dsrd", "operator", "config.put", "key=ldc/rules bytes=2 -> version"},
      {"dsrd", "tester", "config.put",
       "key=ldc/rules bytes=2 PERMISSION_DENIED: identity 'spiffe://formica.local/tester' may "
       "not config.write 'ldc/rules'"},
      {"dsrd", "operator", "registry.stop-push", "on OK"},
      {"dsrd", "operator", "registry.stop-push", "off OK"},
      {"dsrd", "tester", "registry.kill-session", "session=42 PERMISSION_DENIED"},
      {"dmsd", "operator", "dms.create-topic", "topic=payments queues=0 OK"},
      {"dmsd", "operator", "dms.replay", "group=ledger topic= -> 0 replayed OK"},
      {"dtsd", "tester", "dts.settle", "activity=a-42 PERMISSION_DENIED"}};
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  size_t next = 0;
  for (const Act& a : want) {
    std::string prefix = absl::StrCat(a.daemon, " spiffe://formica.local/", a.identity, " ",
                                      a.action, " ", a.arguments_and_result);
    bool found = false;
    for (; next < lines.size() && !found; ++next) {
      std::vector<std::string> words = absl::StrSplit(lines[next], ' ', absl::SkipEmpty());
      if (words.size() > 2) {  // words[0] and [1] are the date and time
        found = absl::StartsWith(
            absl::StrJoin(std::vector<std::string>(words.begin() + 2, words.end()), " "), prefix);
      }
    }
    EXPECT_TRUE(found) << "missing, or out of order: " << prefix << "\n" << out;
  }
}

// A half message is ended only by an identity that may produce to its
// topic: another cannot roll back (or commit) someone else's.
TEST_F(PermissionsTest, AHalfMessageIsEndedOnlyByAnIdentityThatMayProduceToItsTopic) {
  int dmsd_port = 0;
  auto dmsd =
      StartDaemon("dms/dmsd", "dmsd",
                  {"--data-dir", dir_.File("dmsd"), "--set", "security.permissions_file=" + rules_},
                  &dmsd_port);
  ASSERT_TRUE(dmsd);
  std::string dms = absl::StrCat("127.0.0.1:", dmsd_port);
  ASSERT_EQ(Ctl("operator", {"--dms", dms, "dms", "create-topic", "payments"}).first, 0);
  UseTlsAs("tester");
  auto as_tester = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
  dms::v1::PrepareRequest prepare;
  prepare.set_topic("payments");
  prepare.set_producer_group("tester");
  prepare.mutable_message()->set_body("refund 42");
  dms::v1::PrepareReply prepared;
  {
    grpc::ClientContext ctx;
    grpc::Status st = as_tester->Prepare(&ctx, prepare, &prepared);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  UseTlsAs("operator");  // may operate, not produce to payments
  auto as_operator = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
  dms::v1::EndTransactionRequest end;
  end.set_transaction_id(prepared.transaction_id());
  end.set_commit(false);
  dms::v1::EndTransactionReply ended;
  {
    grpc::ClientContext ctx;
    grpc::Status st = as_operator->EndTransaction(&ctx, end, &ended);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_NE(st.error_message().find(
                  "identity 'spiffe://formica.local/operator' may not produce 'payments'"),
              std::string::npos)
        << st.error_message();
  }
  // Still undecided, and its producer ends it.
  UseTlsAs("tester");
  auto again = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
  end.set_commit(true);
  grpc::ClientContext ctx;
  grpc::Status st = again->EndTransaction(&ctx, end, &ended);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// The listings that show who is connected, undecided messages and the
// audit trail are an operator's reads; the others (services, config) are not.
TEST_F(PermissionsTest, SessionsHalfMessagesAndTheAuditTrailAreReadByOperatorsOnly) {
  int dmsd_port = 0;
  auto dmsd =
      StartDaemon("dms/dmsd", "dmsd",
                  {"--data-dir", dir_.File("dmsd"), "--set", "security.permissions_file=" + rules_},
                  &dmsd_port);
  ASSERT_TRUE(dmsd);
  std::string dms = absl::StrCat("127.0.0.1:", dmsd_port);
  struct Read {
    std::vector<std::string> args;
    const char* resource;
  };
  for (const Read& read :
       {Read{{"registry", "sessions"}, "registry"}, Read{{"--dms", dms, "dms", "half"}, "dms"},
        Read{{"audit", "dsrd"}, "registry"}, Read{{"--dms", dms, "audit", "dmsd"}, "dms"}}) {
    auto [code, out] = Ctl("tester", read.args);
    EXPECT_EQ(code, 1) << out;
    EXPECT_NE(out.find(absl::StrCat("PERMISSION_DENIED: identity 'spiffe://formica.local/tester' "
                                    "may not operate '",
                                    read.resource, "': no rule in ", rules_)),
              std::string::npos)
        << absl::StrJoin(read.args, " ") << ": " << out;
    auto [op_code, op_out] = Ctl("operator", read.args);
    EXPECT_EQ(op_code, 0) << absl::StrJoin(read.args, " ") << ": " << op_out;
  }
  auto [sessions_code, sessions] = Ctl("operator", {"registry", "sessions"});
  EXPECT_NE(sessions.find("spiffe://formica.local/dmsd"), std::string::npos) << sessions;
  auto [ls_code, ls_out] = Ctl("tester", {"registry", "ls"});
  EXPECT_EQ(ls_code, 0) << ls_out;
}

// With a permissions file, a caller without a certificate has no identity
// and matches no rule, not even "*".
TEST_F(PermissionsTest, ACallerWithoutACertificateMatchesNoRuleNotEvenTheStar) {
  std::string open_rules = dir_.File("star.yaml");
  std::ofstream(open_rules) << "rules:\n  - identity: \"*\"\n    allow: [config.write *]\n";
  DsrdProcess::Options o;
  o.data_dir = dir_.File("plain-dsrd");
  o.config = {{"security.permissions_file", open_rules}};
  auto plain = DsrdProcess::Start(o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto [code, out] = RunToEnd({BinaryPath("tools/formicactl"), "--registry", (*plain)->address(),
                               "config", "put", "ldc/rules", "x"},
                              dir_.File("plain-put.log"));
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("identity (no certificate) may not config.write 'ldc/rules'"),
            std::string::npos)
      << out;
}

// A permissions file that cannot be used stops the daemon naming the line.
TEST_F(PermissionsTest, ABadPermissionsFileStopsTheDaemonNamingTheLine) {
  std::string bad = dir_.File("bad.yaml");
  std::ofstream(bad) << "rules:\n  - identity: a\n    allow: [publish]\n";
  auto [code, out] = RunToEnd({BinaryPath("registry/dsrd"), "--listen", "127.0.0.1:0", "--data-dir",
                               dir_.File("d"), "--set", "security.permissions_file=" + bad},
                              dir_.File("bad.log"));
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find(bad + ":3: permissions: an allow entry is 'ACTION RESOURCE'"),
            std::string::npos)
      << out;
  auto [missing_code, missing_out] =
      RunToEnd({BinaryPath("dts/dtsd"), "--listen", "127.0.0.1:0", "--data-dir", dir_.File("e"),
                "--set", "security.permissions_file=" + dir_.File("none.yaml")},
               dir_.File("missing.log"));
  EXPECT_EQ(missing_code, 2) << missing_out;
  EXPECT_NE(missing_out.find("none.yaml: permissions file cannot be read"), std::string::npos)
      << missing_out;
}

}  // namespace
}  // namespace formica
