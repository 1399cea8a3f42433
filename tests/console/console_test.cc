// The web console as an operator uses it: formica-console started as a user
// would, over a real dsrd, dtsd and dmsd and two echo providers (color green
// and blue), driven in Debian's headless chromium by console_test.mjs
// (playwright-core). The page must show the published service, the
// committed activity and the topic's lag; a shift without the token is
// refused; a shift with it changes the route in the registry and the
// traffic view; bad input gets a clear message; the audit trail records
// every change asked for. The browser takes the screenshots into the build
// tree, or into $FORMICA_CONSOLE_SCREENSHOTS_DIR (docs/console/ renews the
// pictures in docs/operations.md).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/dms/consumer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/ldc/admin.h"
#include "formica/ldc/router.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "traffic_fixture.h"

namespace formica::rpc::testing {
namespace {

using formica::testing::BinaryPath;
using formica::testing::PickFreePort;

constexpr char kToken[] = "console-test-token";

// Where the browser saves its screenshots: the build tree, unless
// FORMICA_CONSOLE_SCREENSHOTS_DIR names another folder (docs/console).
std::string ScreenshotDir() {
  const char* dir = std::getenv("FORMICA_CONSOLE_SCREENSHOTS_DIR");
  return dir != nullptr && *dir != '\0' ? dir : FORMICA_CONSOLE_SCREENSHOTS;
}
constexpr char kTopic[] = "console.orders";
constexpr char kGroup[] = "billing";
constexpr char kDeadGroup[] = "auditors";
constexpr int kConsumed = 5;
constexpr int kLag = 7;

class ConsoleTest : public TrafficTest {
 protected:
  // dtsd or dmsd, registered at the test's dsrd.
  std::unique_ptr<Subprocess> StartDaemon(const std::string& name, const std::string& listen,
                                          std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {BinaryPath(name == "dtsd" ? "dts/dtsd" : "dms/dmsd"),
                                     "--listen",
                                     listen,
                                     "--data-dir",
                                     dir_.File(name),
                                     "--registry",
                                     dsrd_->address()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = Subprocess::Start(argv, dir_.File(name + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput(name + " ready on port", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  std::unique_ptr<Subprocess> StartConsole(const std::string& dts, const std::string& dms,
                                           int port) {
    std::string config = dir_.File("console.yaml");
    std::ofstream(config) << "console:\n  token: " << kToken << "\n";
    auto p = Subprocess::Start({BinaryPath("tools/console/formica-console"), "--config", config,
                                "--listen", absl::StrCat("127.0.0.1:", port), "--registry",
                                dsrd_->address(), "--dts", dts, "--dms", dms},
                               dir_.File("console.log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("formica-console ready on port", absl::Seconds(20)))
        << (*p)->Output();
    return std::move(*p);
  }

  // Begins and commits one activity at dtsd; its id.
  std::string CommitActivity(const std::string& dts) {
    auto stub = formica::dts::v1::Coordinator::NewStub(
        grpc::CreateChannel(dts, grpc::InsecureChannelCredentials()));
    formica::dts::v1::BeginRequest begin;
    begin.set_name("console.Purchase");
    begin.set_initiator("console-test");
    formica::dts::v1::BeginResponse begun;
    grpc::ClientContext c1;
    grpc::Status st = stub->Begin(&c1, begin, &begun);
    EXPECT_TRUE(st.ok()) << st.error_message();
    formica::dts::v1::ActivityRef ref;
    ref.set_activity_id(begun.activity_id());
    formica::dts::v1::DecisionResponse decided;
    grpc::ClientContext c2;
    st = stub->Commit(&c2, ref, &decided);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return begun.activity_id();
  }

  // An activity committed with an action of "fund.ledger", a participant no
  // one provides: its confirm fails and is retried (COMMITTING). Its id.
  std::string StuckActivity(const std::string& dts) {
    auto stub = formica::dts::v1::Coordinator::NewStub(
        grpc::CreateChannel(dts, grpc::InsecureChannelCredentials()));
    formica::dts::v1::BeginRequest begin;
    begin.set_name("console.Transfer");
    formica::dts::v1::BeginResponse begun;
    grpc::ClientContext c1;
    EXPECT_TRUE(stub->Begin(&c1, begin, &begun).ok());
    formica::dts::v1::EnlistRequest enlist;
    enlist.set_activity_id(begun.activity_id());
    enlist.set_participant("fund.ledger");
    enlist.set_action("credit");
    formica::dts::v1::EnlistResponse enlisted;
    grpc::ClientContext c2;
    grpc::Status st = stub->Enlist(&c2, enlist, &enlisted);
    EXPECT_TRUE(st.ok()) << st.error_message();
    formica::dts::v1::ActivityRef ref;
    ref.set_activity_id(begun.activity_id());
    formica::dts::v1::DecisionResponse decided;
    grpc::ClientContext c3;
    st = stub->Commit(&c3, ref, &decided);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return begun.activity_id();
  }

  formica::dts::v1::Activity GetActivity(const std::string& dts, const std::string& id) {
    auto stub = formica::dts::v1::Coordinator::NewStub(
        grpc::CreateChannel(dts, grpc::InsecureChannelCredentials()));
    formica::dts::v1::ActivityRef ref;
    ref.set_activity_id(id);
    formica::dts::v1::Activity activity;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Get(&ctx, ref, &activity).ok());
    return activity;
  }

  void Produce(formica::dms::v1::Broker::Stub& broker, int n) {
    formica::dms::v1::ProduceRequest request;
    request.set_topic(kTopic);
    for (int i = 0; i < n; ++i) request.add_messages()->set_body(absl::StrCat("order ", i));
    formica::dms::v1::ProduceReply reply;
    grpc::ClientContext ctx;
    grpc::Status st = broker.Produce(&ctx, request, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  // The group `billing` consumes kConsumed messages and stops; kLag more
  // are produced after it.
  void MakeLag(const std::string& dms) {
    auto broker = formica::dms::v1::Broker::NewStub(
        grpc::CreateChannel(dms, grpc::InsecureChannelCredentials()));
    formica::dms::v1::CreateTopicRequest create;
    create.set_name(kTopic);
    create.set_queues(2);
    for (const char* name : {kTopic, "console.load"}) {
      create.set_name(name);
      formica::dms::v1::TopicInfo info;
      grpc::ClientContext ctx;
      grpc::Status st = broker->CreateTopic(&ctx, create, &info);
      ASSERT_TRUE(st.ok()) << st.error_message();
    }
    Produce(*broker, kConsumed);
    std::unique_ptr<Client> rpc = NewRpcClient();
    std::atomic<int> acked{0};
    formica::dms::ConsumerOptions o;
    o.group = kGroup;
    o.topic = kTopic;
    auto consumer = formica::dms::Consumer::Start(
        o,
        [&](const formica::dms::ReceivedMessage&) {
          ++acked;
          return formica::dms::ConsumeResult::kSuccess;
        },
        rpc.get());
    ASSERT_TRUE(consumer.ok()) << consumer.status();
    for (int i = 0; i < 1000 && acked < kConsumed; ++i) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_EQ(acked.load(), kConsumed);
    (*consumer)->Stop();
    // The group "auditors" gives up on every message at once: kConsumed
    // dead letters.
    std::atomic<int> refused{0};
    o.group = kDeadGroup;
    o.max_attempts = 1;
    auto giving_up = formica::dms::Consumer::Start(
        o,
        [&](const formica::dms::ReceivedMessage&) {
          ++refused;
          return formica::dms::ConsumeResult::kRetryLater;
        },
        rpc.get());
    ASSERT_TRUE(giving_up.ok()) << giving_up.status();
    for (int i = 0; i < 1000 && refused < kConsumed; ++i) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_EQ(refused.load(), kConsumed);
    absl::SleepFor(absl::Milliseconds(300));  // the last answers reach the broker
    (*giving_up)->Stop();
    Produce(*broker, kLag);
    // A half message whose producer never decides it.
    formica::dms::v1::PrepareRequest prepare;
    prepare.set_topic(kTopic);
    prepare.set_producer_group("fund-trade");
    prepare.mutable_message()->set_body("undecided order");
    formica::dms::v1::PrepareReply prepared;
    grpc::ClientContext pctx;
    grpc::Status pst = broker->Prepare(&pctx, prepare, &prepared);
    ASSERT_TRUE(pst.ok()) << pst.error_message();
    half_ = prepared.transaction_id();
  }

  // Publishes LDC rules: two RZones splitting the shards, a GZone.
  void PublishRules() {
    auto rules = ldc::ParseRules(
        "ldc:\n  zones:\n"
        "    hz-1: {kind: rzone, data_center: hz-dc1, city: hangzhou, shards: \"00-49\"}\n"
        "    sh-1: {kind: rzone, data_center: sh-dc1, city: shanghai, shards: \"50-99\"}\n"
        "    hz-global: {kind: gzone, data_center: hz-dc1, city: hangzhou}\n");
    ASSERT_TRUE(rules.ok()) << rules.status();
    auto put = ldc::RuleAdmin::Connect(dsrd_->address())->Put(*rules, std::nullopt);
    ASSERT_TRUE(put.ok()) << put.status();
  }

  // Runs the browser script; its exit code. `output` gets what it printed.
  int RunBrowser(const std::map<std::string, std::string>& env, std::string* output) {
    std::vector<std::string> argv = {"/usr/bin/env"};
    for (const auto& [k, v] : env) argv.push_back(absl::StrCat(k, "=", v));
    argv.push_back(FORMICA_CONSOLE_TEST_RUN);
    auto p = Subprocess::Start(argv, dir_.File("browser.log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return -1;
    int code = (*p)->Wait(absl::Seconds(240));
    *output = (*p)->Output();
    return code;
  }

  std::string half_;  // MakeLag's half message

  // The audit records in the registry, as their JSON text.
  std::vector<std::string> AuditRecords() {
    auto stub = formica::registry::v1::Registry::NewStub(
        grpc::CreateChannel(dsrd_->address(), grpc::InsecureChannelCredentials()));
    formica::registry::v1::ListConfigRequest request;
    request.set_prefix("console/audit/");
    formica::registry::v1::ListConfigResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->ListConfig(&ctx, request, &response).ok());
    std::vector<std::string> out;
    for (const auto& e : response.entries()) out.push_back(e.value());
    return out;
  }
};

TEST_F(ConsoleTest, OperatorSeesTheSuiteAndShiftsTrafficWithTheToken) {
  const std::string dts = absl::StrCat("127.0.0.1:", PickFreePort());
  const std::string dms = absl::StrCat("127.0.0.1:", PickFreePort());
  auto dtsd = StartDaemon("dtsd", dts);
  auto dmsd = StartDaemon("dmsd", dms);
  auto green = StartEcho({"--tag", "color=green"});
  auto blue = StartEcho({"--tag", "color=blue"});
  ASSERT_TRUE(dtsd && dmsd && green && blue);
  ASSERT_TRUE(AwaitProviders(2));
  std::string activity = CommitActivity(dts);
  ASSERT_FALSE(activity.empty());
  std::string stuck = StuckActivity(dts);
  ASSERT_FALSE(stuck.empty());
  ASSERT_NO_FATAL_FAILURE(MakeLag(dms));
  ASSERT_NO_FATAL_FAILURE(PublishRules());
  // A service's LDC router in zone hz-1, which reports the rules it applied.
  ldc::RouterOptions ro;
  ro.zone = "hz-1";
  ro.client_name = "fund-trade";
  auto router = ldc::Router::Start(registry_.get(), ro);
  ASSERT_TRUE(router.ok()) << router.status();
  ASSERT_TRUE((*router)->AwaitRules(absl::Seconds(10)).ok());
  // A release of fund.trade v2 over v1 that awaits continue, as a
  // controller that stopped left it.
  ASSERT_TRUE(
      registry_
          ->PutConfig("release/fund.trade",
                      absl::StrCat(R"({"service":"fund.trade","version_key":"version",)"
                                   R"("version":"v2","previous":"v1","state":"awaiting",)"
                                   R"("message":"beta judged ok",)"
                                   R"("groups":[{"name":"beta","state":"awaiting"},)"
                                   R"({"name":"rest","state":"waiting"}],"updated_unix_ms":")",
                                   absl::ToUnixMillis(absl::Now() - absl::Minutes(3)), R"("})"))
          .ok());
  int port = PickFreePort();
  auto console = StartConsole(dts, dms, port);
  ASSERT_TRUE(console);
  ASSERT_EQ(Route(), "");

  // Steady work while the pages are watched: an activity committed and a
  // message produced (to another topic than the group's) every 500 ms.
  std::atomic<bool> stop{false};
  std::thread load([&] {
    auto broker = formica::dms::v1::Broker::NewStub(
        grpc::CreateChannel(dms, grpc::InsecureChannelCredentials()));
    while (!stop) {
      CommitActivity(dts);
      formica::dms::v1::ProduceRequest request;
      request.set_topic("console.load");
      request.add_messages()->set_body("tick");
      formica::dms::v1::ProduceReply reply;
      grpc::ClientContext ctx;
      (void)broker->Produce(&ctx, request, &reply);
      absl::SleepFor(absl::Milliseconds(500));
    }
  });
  std::string output;
  int code = RunBrowser({{"CONSOLE_URL", absl::StrCat("http://127.0.0.1:", port, "/")},
                         {"CONSOLE_TOKEN", kToken},
                         {"CONSOLE_SERVICE", kEcho},
                         {"CONSOLE_ACTIVITY", activity},
                         {"CONSOLE_STUCK", stuck},
                         {"CONSOLE_TOPIC", kTopic},
                         {"CONSOLE_GROUP", kGroup},
                         {"CONSOLE_DEAD_GROUP", kDeadGroup},
                         {"CONSOLE_DEAD", std::to_string(kConsumed)},
                         {"CONSOLE_HALF", half_},
                         {"CONSOLE_LAG", std::to_string(kLag)},
                         {"CONSOLE_SCREENSHOTS", ScreenshotDir()}},
                        &output);
  stop = true;
  load.join();
  std::printf("%s\n", output.c_str());
  ASSERT_EQ(code, 0) << output << "\nconsole:\n" << console->Output();

  // The shift made in the page is the registry's route; the rollback sent
  // fund.trade's calls to v1.
  EXPECT_EQ(Route(), "color=green:80,color=blue:20");
  // The stuck activity was settled from the page: finished, its action
  // SETTLED, the reason recorded.
  formica::dts::v1::Activity settled = GetActivity(dts, stuck);
  EXPECT_EQ(settled.state(), formica::dts::v1::COMMITTED) << settled.DebugString();
  ASSERT_EQ(settled.actions_size(), 1);
  EXPECT_EQ(settled.actions(0).state(), formica::dts::v1::SETTLED);
  EXPECT_TRUE(absl::StrContains(settled.reason(), "credited by hand")) << settled.reason();
  auto rolled = registry_->GetConfig("rpc/routes/fund.trade");
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->value, "version=v1:100");
  // Every change asked for is in the trail: the refused one, the bad one,
  // the one made.
  std::vector<std::string> records = AuditRecords();
  int refused = 0, failed = 0, made = 0;
  for (const std::string& r : records) {
    if (absl::StrContains(r, "refused: UNAUTHENTICATED")) ++refused;
    if (absl::StrContains(r, "failed: INVALID_ARGUMENT")) ++failed;
    if (absl::StrContains(r, "\"ok\":true") && absl::StrContains(r, "traffic.shift") &&
        absl::StrContains(r, "\"who\":\"ann from 127.0.0.1\"")) {
      ++made;
    }
  }
  EXPECT_EQ(refused, 1) << absl::StrJoin(records, "\n");
  EXPECT_GE(failed, 1) << absl::StrJoin(records, "\n");
  EXPECT_EQ(made, 1) << absl::StrJoin(records, "\n");
  for (const std::string& r : records) EXPECT_FALSE(absl::StrContains(r, "mallory")) << r;
}

// A console started by hand with a bad option exits 2 naming it; one
// without a token serves the pages but refuses every change (and says why).
TEST_F(ConsoleTest, NamesABadOptionAndIsReadOnlyWithoutAToken) {
  auto bad = Subprocess::Start({BinaryPath("tools/console/formica-console"), "--registry",
                                dsrd_->address(), "--set", "console.token=short"},
                               dir_.File("bad.log"));
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ((*bad)->Wait(absl::Seconds(20)), 2);
  EXPECT_TRUE(absl::StrContains((*bad)->Output(), "console.token")) << (*bad)->Output();
  EXPECT_TRUE(absl::StrContains((*bad)->Output(), "shorter than 8 characters")) << (*bad)->Output();

  int port = PickFreePort();
  auto console =
      Subprocess::Start({BinaryPath("tools/console/formica-console"), "--listen",
                         absl::StrCat("127.0.0.1:", port), "--registry", dsrd_->address()},
                        dir_.File("readonly.log"));
  ASSERT_TRUE(console.ok()) << console.status();
  ASSERT_TRUE((*console)->WaitForOutput("formica-console ready on port", absl::Seconds(20)))
      << (*console)->Output();
  httplib::Client http("127.0.0.1", port);
  auto page = http.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_TRUE(absl::StrContains(page->body, "<title>Formica console</title>"));
  httplib::Headers headers = {{"X-Formica-Token", "anything-at-all"},
                              {"X-Formica-Operator", "ann"}};
  auto refused = http.Post("/api/traffic/set", headers,
                           R"({"service":"formica.test.Echo","route":"color=green:100",)"
                           R"("confirmed":true})",
                           "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403);
  EXPECT_TRUE(absl::StrContains(refused->body, "PERMISSION_DENIED")) << refused->body;
  EXPECT_TRUE(absl::StrContains(refused->body, "read-only")) << refused->body;
  EXPECT_EQ(Route(), "");
  auto bad_body = http.Post("/api/traffic/set", headers, "not json", "application/json");
  ASSERT_TRUE(bad_body);
  EXPECT_EQ(bad_body->status, 400);
  EXPECT_TRUE(absl::StrContains(bad_body->body, "not a JSON object")) << bad_body->body;
}

// What the console cannot read it says: a daemon down (503, the gRPC
// reason), a daemon not configured (409, naming the key), bad parameters
// (400, naming what is wrong); the overview marks the daemon down.
TEST_F(ConsoleTest, SaysWhatItCannotRead) {
  std::string dead = absl::StrCat("127.0.0.1:", PickFreePort());  // nothing listens
  int port = PickFreePort();
  auto console = StartConsole(dead, "", port);
  ASSERT_TRUE(console);
  httplib::Client http("127.0.0.1", port);
  auto expect = [&](const std::string& path, int status, const std::string& code,
                    const std::string& text) {
    auto r = http.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, status) << path << ": " << r->body;
    EXPECT_TRUE(absl::StrContains(r->body, absl::StrCat("\"code\":\"", code, "\"")))
        << path << ": " << r->body;
    EXPECT_TRUE(absl::StrContains(r->body, text)) << path << ": " << r->body;
  };
  expect("/api/dts/activities", 503, "UNAVAILABLE", "failed to connect");
  expect("/api/dms/topics", 409, "FAILED_PRECONDITION", "no dmsd address (console.dms)");
  expect("/api/dts/activities?states=DONE", 400, "INVALID_ARGUMENT", "unknown state 'DONE'");
  expect("/api/dts/activities?limit=0", 400, "INVALID_ARGUMENT",
         "the limit '0' is not a number from 1 to 1000");
  expect("/api/service?name=a%20b", 400, "INVALID_ARGUMENT", "the service 'a b' has ' '");
  expect("/api/dts/activity", 400, "INVALID_ARGUMENT", "the activity id is required");
  auto overview = http.Get("/api/overview");
  ASSERT_TRUE(overview);
  EXPECT_EQ(overview->status, 200);
  EXPECT_TRUE(absl::StrContains(overview->body, R"("dts":{"ok":false,"error":)")) << overview->body;
  EXPECT_TRUE(absl::StrContains(overview->body, R"("services":{"ok":true)")) << overview->body;
  // The daemons' audit trail names the daemon it could not read and lists
  // the others'.
  auto trail = http.Get("/api/audit/daemons");
  ASSERT_TRUE(trail);
  EXPECT_EQ(trail->status, 200);
  EXPECT_TRUE(
      absl::StrContains(trail->body, R"("unreachable":[{"daemon":"dtsd","error":"UNAVAILABLE)"))
      << trail->body;
  EXPECT_TRUE(absl::StrContains(trail->body, R"({"trail":{"entries":[)")) << trail->body;
}

// The Releases page's rollback: the release's calls go to the previous
// version at once and its record asks the controller to roll back, as
// `formicactl release rollback` does; a release no controller runs says so.
TEST_F(ConsoleTest, RollsBackAReleaseFromThePage) {
  auto green = StartEcho({"--tag", "color=green"});
  auto blue = StartEcho({"--tag", "color=blue"});
  ASSERT_TRUE(green && blue);
  ASSERT_TRUE(AwaitProviders(2));
  // A release of green over blue awaiting continue, as its controller left it
  // when it stopped (its record is no longer rewritten).
  auto put = registry_->PutConfig(
      std::string("release/") + kEcho,
      absl::StrCat(R"({"service":")", kEcho,
                   R"(","version_key":"color","version":"green","previous":"blue",)"
                   R"("state":"awaiting","groups":[{"name":"beta","state":"awaiting"}],)"
                   R"("updated_unix_ms":"1"})"),
      std::nullopt);
  ASSERT_TRUE(put.ok()) << put.status();
  int port = PickFreePort();
  auto console = StartConsole("", "", port);
  ASSERT_TRUE(console);
  httplib::Client http("127.0.0.1", port);
  auto list = http.Get("/api/releases");
  ASSERT_TRUE(list);
  EXPECT_TRUE(absl::StrContains(list->body, R"("state":"awaiting")")) << list->body;
  httplib::Headers headers = {{"X-Formica-Token", kToken}, {"X-Formica-Operator", "bob"}};
  std::string body = absl::StrCat(R"({"service":")", kEcho, R"(","confirmed":true})");
  auto rolled = http.Post("/api/release/rollback", headers, body, "application/json");
  ASSERT_TRUE(rolled);
  EXPECT_EQ(rolled->status, 200) << rolled->body;
  EXPECT_TRUE(absl::StrContains(rolled->body, "calls go to color=blue; rolling back"))
      << rolled->body;
  EXPECT_TRUE(absl::StrContains(rolled->body, "formicactl release resume")) << rolled->body;
  EXPECT_EQ(Route(), "color=blue:100");
  auto record = registry_->GetConfig(std::string("release/") + kEcho);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_TRUE(absl::StrContains(record->value, R"("state":"rolling_back")")) << record->value;
  // Asked twice: refused, naming why, nothing changed.
  auto again = http.Post("/api/release/rollback", headers, body, "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 409);
  EXPECT_TRUE(absl::StrContains(again->body, "being rolled back")) << again->body;
  int audited = 0;
  for (const std::string& r : AuditRecords()) {
    if (absl::StrContains(r, "release.rollback") && absl::StrContains(r, "bob from")) ++audited;
  }
  EXPECT_EQ(audited, 2);
}

}  // namespace
}  // namespace formica::rpc::testing
