// Metrics as an operator sees them: each daemon (dsrd, dtsd, dmsd) and an
// rpc::Server provider started as a user would, with `metrics.listen` set;
// their pages pass `promtool check metrics`; a real Prometheus on loopback
// scrapes dtsd and two providers while business activities run, and its
// HTTP API answers the counts the activities made.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "etcd.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/echo.grpc.pb.h"
#include "process.h"

namespace {

using formica::testing::BinaryPath;
using formica::testing::DsrdProcess;
using formica::testing::PickFreePort;
using formica::testing::Subprocess;
using formica::testing::TempDir;

// GET /metrics on 127.0.0.1:`port`; the body, or "" when it failed.
std::string Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  httplib::Result res = client.Get("/metrics");
  if (!res || res->status != 200) return "";
  return res->body;
}

// What `promtool check metrics` says about `page` and whether it passed.
std::pair<bool, std::string> Promtool(const TempDir& dir, const std::string& name,
                                      const std::string& page) {
  std::string path = dir.File(name + ".prom");
  std::ofstream(path) << page;
  std::string cmd = absl::StrCat("promtool check metrics < ", path, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return {false, "cannot run promtool"};
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  int rc = pclose(p);
  return {rc == 0, out};
}

// The value of the unlabelled sample `name` in `page`; -1 when absent.
double Value(const std::string& page, const std::string& name) {
  size_t at = page.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  size_t start = at + name.size() + 2;
  double v = -1;
  if (!absl::SimpleAtod(page.substr(start, page.find('\n', start) - start), &v)) return -1;
  return v;
}

class MetricsExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DsrdProcess::Options o;
    o.data_dir = dir_.File("dsrd");
    dsrd_metrics_ = PickFreePort();
    o.config = {{"metrics.listen", absl::StrCat("127.0.0.1:", dsrd_metrics_)}};
    auto dsrd = DsrdProcess::Start(o);
    ASSERT_TRUE(dsrd.ok()) << dsrd.status();
    dsrd_ = std::move(*dsrd);
  }

  // dtsd or dmsd with its metrics on `metrics_port`.
  std::unique_ptr<Subprocess> StartDaemon(const std::string& name, int metrics_port) {
    std::string binary = name == "dtsd" ? "dts/dtsd" : "dms/dmsd";
    listen_ = absl::StrCat("127.0.0.1:", PickFreePort());
    auto p = Subprocess::Start(
        {BinaryPath(binary), "--listen", listen_, "--data-dir", dir_.File(name), "--registry",
         dsrd_->address(), "--set", absl::StrCat("metrics.listen=127.0.0.1:", metrics_port)},
        dir_.File(name + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput(name + " ready on port", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // A bank (an rpc::Server provider, tests/dts/account_server) with its
  // metrics on `metrics_port`.
  std::unique_ptr<Subprocess> StartBank(const std::string& name, int metrics_port) {
    auto p = Subprocess::Start(
        {BinaryPath("tests/dts/account_server"), "--registry", dsrd_->address(), "--name", name,
         "--db", dir_.File(name + ".db"), "--accounts", "10", "--initial", "1000000",
         "--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port)},
        dir_.File(name + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // An echo_server (tests/rpc: an rpc::Server provider of
  // formica.test.Echo) whose config file sets `metrics.listen`.
  std::unique_ptr<Subprocess> StartEcho(int metrics_port) {
    std::string config = dir_.File("echo.yaml");
    std::ofstream(config) << "metrics:\n  listen: 127.0.0.1:" << metrics_port << "\n";
    auto p = Subprocess::Start(
        {BinaryPath("tests/rpc/echo_server"), "--registry", dsrd_->address(), "--config", config},
        dir_.File("echo.log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // Calls formica.test.Echo through DSR `ok` times successfully and `failed`
  // times asking it to fail (INTERNAL), as a user's service would.
  void CallEcho(int ok, int failed) {
    formica::registry::ClientOptions ro;
    ro.registries = {dsrd_->address()};
    ro.client_name = "metrics-test";
    auto registry = formica::registry::Client::Create(ro);
    ASSERT_TRUE(registry.ok()) << registry.status();
    formica::rpc::ClientOptions co;
    co.app_name = "metrics-test";
    auto client = formica::rpc::Client::Create(co, registry->get());
    ASSERT_TRUE(client.ok()) << client.status();
    auto call = [&](bool fail) {
      formica::test::EchoRequest request;
      request.set_fail(fail);
      formica::test::EchoResponse response;
      return (*client)->CallWithStub<formica::test::Echo>(
          "formica.test.Echo", {}, [&](formica::test::Echo::Stub& stub, grpc::ClientContext* ctx) {
            return stub.Echo(ctx, request, &response);
          });
    };
    // Until the provider is listed: such a call never reaches it.
    absl::Time until = absl::Now() + absl::Seconds(20);
    absl::Status first = call(false);
    while (!first.ok() && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(20));
      first = call(false);
    }
    ASSERT_TRUE(first.ok()) << first;
    for (int i = 1; i < ok; ++i) ASSERT_TRUE(call(false).ok());
    for (int i = 0; i < failed; ++i) {
      absl::Status st = call(true);
      ASSERT_EQ(st.code(), absl::StatusCode::kInternal) << st;
    }
  }

  TempDir dir_;
  std::string listen_;  // the last daemon StartDaemon started
  int dsrd_metrics_ = 0;
  std::unique_ptr<DsrdProcess> dsrd_;
};

TEST_F(MetricsExportTest, EveryDaemonAndProviderServesAPagePromtoolAccepts) {
  int dtsd_metrics = PickFreePort();
  int dmsd_metrics = PickFreePort();
  int bank_metrics = PickFreePort();
  auto dtsd = StartDaemon("dtsd", dtsd_metrics);
  auto dmsd = StartDaemon("dmsd", dmsd_metrics);
  auto echo = StartEcho(bank_metrics);
  ASSERT_TRUE(dtsd && dmsd && echo);
  CallEcho(3, 1);
  struct Page {
    std::string name;
    int port;
    std::vector<std::string> families;
  };
  std::vector<Page> pages = {
      {"dsrd", dsrd_metrics_, {"formica_registry_sessions", "formica_registry_publications"}},
      {"dtsd",
       dtsd_metrics,
       {"formica_dts_committed_total", "formica_dts_wal_syncs_total", "formica_rpc_calls_total"}},
      {"dmsd", dmsd_metrics, {"formica_dms_disk_full", "formica_rpc_call_duration_seconds"}},
      {"echo_server",
       bank_metrics,
       {"formica_rpc_calls_total", "formica_rpc_call_duration_seconds"}},
  };
  for (const Page& page : pages) {
    std::string text = Scrape(page.port);
    ASSERT_FALSE(text.empty()) << page.name << " served no metrics on port " << page.port;
    for (const std::string& family : page.families) {
      EXPECT_TRUE(absl::StrContains(text, absl::StrCat("# TYPE ", family, " ")))
          << page.name << " lacks " << family << ":\n"
          << text;
    }
    if (page.name == "dsrd") {
      // dtsd, dmsd and the echo provider each hold a session and publish.
      EXPECT_GE(Value(text, "formica_registry_sessions"), 3) << text;
      EXPECT_GE(Value(text, "formica_registry_publications"), 3) << text;
    }
    if (page.name == "dmsd") {
      EXPECT_EQ(Value(text, "formica_dms_disk_full"), 0) << text;
    }
    auto [ok, said] = Promtool(dir_, page.name, text);
    EXPECT_TRUE(ok) << page.name << ": promtool check metrics says:\n" << said << "\n" << text;
  }
}

// The sum of the samples of `series_prefix` ("name{labels" up to a point)
// in `page`; -1 when none.
double SumOf(const std::string& page, const std::string& series_prefix) {
  double sum = -1;
  for (size_t at = 0; (at = page.find("\n" + series_prefix, at)) != std::string::npos; ++at) {
    size_t space = page.find(' ', at + 1);
    double v = 0;
    if (absl::SimpleAtod(page.substr(space + 1, page.find('\n', space) - space - 1), &v)) {
      sum = (sum < 0 ? 0 : sum) + v;
    }
  }
  return sum;
}

// dsrd counts each push to a subscriber or watcher, and times how long the
// client takes to ack it (pushes sent before the ack of an earlier one are
// one observation, so there are at most as many as pushes).
TEST_F(MetricsExportTest, TheRegistryCountsPushesAndTimesTheirAcks) {
  formica::registry::ClientOptions ro;
  ro.registries = {dsrd_->address()};
  ro.client_name = "watcher";
  auto watcher = formica::registry::Client::Create(ro);
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ro.client_name = "publisher";
  auto publisher = formica::registry::Client::Create(ro);
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  std::atomic<int> snapshots{0}, values{0};
  ASSERT_TRUE((*watcher)
                  ->Subscribe("metrics.Pushed",
                              [&](const formica::registry::ServiceSnapshot&) { ++snapshots; })
                  .ok());
  ASSERT_TRUE(
      (*watcher)
          ->WatchConfig("metrics.key", [&](const formica::registry::ConfigValue&) { ++values; })
          .ok());
  for (int i = 0; i < 3; ++i) {
    formica::registry::Instance instance;
    instance.service = "metrics.Pushed";
    instance.address = absl::StrCat("127.0.0.1:", 9100 + i);
    ASSERT_TRUE((*publisher)->Publish(instance).ok());
    ASSERT_TRUE((*publisher)->PutConfig("metrics.key", absl::StrCat(i)).ok());
  }
  absl::Time until = absl::Now() + absl::Seconds(20);
  auto last = [&] {
    auto s = (*watcher)->GetSnapshot("metrics.Pushed");
    return s && s->instances.size() == 3;
  };
  while (!last() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(last());
  std::string page;
  double sent = -1, acked = -2;
  while (absl::Now() < until) {
    page = Scrape(dsrd_metrics_);
    sent = SumOf(page, "formica_registry_pushes_total{");
    acked = Value(page, "formica_registry_push_ack_duration_seconds_count");
    if (acked >= 2) break;  // both the subscription and the watch caught up
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GE(SumOf(page, "formica_registry_pushes_total{kind=\"service\"}"), 1) << page;
  EXPECT_GE(SumOf(page, "formica_registry_pushes_total{kind=\"config\"}"), 1) << page;
  EXPECT_GE(acked, 2) << page;
  EXPECT_LE(acked, sent) << page;
  EXPECT_GT(Value(page, "formica_registry_push_ack_duration_seconds_sum"), 0) << page;
  EXPECT_GE(snapshots.load(), 1);
  EXPECT_GE(values.load(), 1);
  EXPECT_EQ(SumOf(page, "formica_registry_store_up{store=\"embedded\"}"), 1) << page;
  auto [ok, said] = Promtool(dir_, "dsrd-pushes", page);
  EXPECT_TRUE(ok) << said;
}

// In cluster mode, store_up follows etcd: 1 while it answers, 0 once it is
// gone.
TEST(MetricsEtcdTest, TheRegistrysStoreUpFollowsEtcd) {
  auto etcd = formica::testing::EtcdCluster::Start(1);
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  TempDir dir;
  DsrdProcess::Options o;
  o.data_dir = dir.File("dsrd");
  int metrics = PickFreePort();
  o.config = {{"storage.engine", "etcd"},
              {"storage.etcd.endpoints", (*etcd)->endpoints()},
              {"storage.etcd.prefix", "/metrics/"},
              {"storage.etcd.request_timeout", "2s"},
              {"server.id", "node0"},
              {"cluster.name", "metrics"},
              {"metrics.listen", absl::StrCat("127.0.0.1:", metrics)}};
  auto dsrd = DsrdProcess::Start(o);
  ASSERT_TRUE(dsrd.ok()) << dsrd.status();
  const std::string up = "formica_registry_store_up{store=\"etcd\"}";
  EXPECT_EQ(SumOf(Scrape(metrics), up), 1) << Scrape(metrics);
  (*etcd)->Kill9(0);
  absl::Time until = absl::Now() + absl::Seconds(60);
  while (SumOf(Scrape(metrics), up) != 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(SumOf(Scrape(metrics), up), 0) << Scrape(metrics);
}

// dtsd's unfinished activities by state and the oldest one's age, and phase
// two retried against a participant that is not there, and the log's syncs
// timed.
TEST_F(MetricsExportTest, DtsdShowsUnfinishedActivitiesByStateTheirAgeAndRetries) {
  int port = PickFreePort();
  auto dtsd = StartDaemon("dtsd", port);
  ASSERT_TRUE(dtsd);
  auto stub = formica::dts::v1::Coordinator::NewStub(
      grpc::CreateChannel(listen_, grpc::InsecureChannelCredentials()));
  auto begin = [&](formica::dts::v1::BeginResponse* out) {
    grpc::ClientContext ctx;
    formica::dts::v1::BeginRequest request;
    request.set_name("metrics.Test");
    request.set_timeout_ms(600000);
    return stub->Begin(&ctx, request, out);
  };
  formica::dts::v1::BeginResponse active, committing;
  ASSERT_TRUE(begin(&active).ok());
  ASSERT_TRUE(begin(&committing).ok());
  {
    grpc::ClientContext ctx;
    formica::dts::v1::EnlistRequest request;
    request.set_activity_id(committing.activity_id());
    request.set_participant("metrics.Nobody");
    request.set_action("a");
    formica::dts::v1::EnlistResponse response;
    ASSERT_TRUE(stub->Enlist(&ctx, request, &response).ok());
  }
  {
    grpc::ClientContext ctx;
    formica::dts::v1::ActivityRef request;
    request.set_activity_id(committing.activity_id());
    formica::dts::v1::DecisionResponse response;
    ASSERT_TRUE(stub->Commit(&ctx, request, &response).ok());
  }
  // Phase two to a participant nobody provides fails and is retried.
  std::string page;
  absl::Time until = absl::Now() + absl::Seconds(30);
  while (absl::Now() < until) {
    page = Scrape(port);
    if (Value(page, "formica_dts_phase_two_retries_total") >= 1 &&
        Value(page, "formica_dts_oldest_unfinished_age_seconds") >= 1) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(SumOf(page, "formica_dts_unfinished_by_state{state=\"ACTIVE\"}"), 1) << page;
  EXPECT_EQ(SumOf(page, "formica_dts_unfinished_by_state{state=\"COMMITTING\"}"), 1) << page;
  EXPECT_EQ(SumOf(page, "formica_dts_unfinished_by_state{state=\"ROLLING_BACK\"}"), 0) << page;
  EXPECT_GE(Value(page, "formica_dts_phase_two_retries_total"), 1) << page;
  EXPECT_GE(Value(page, "formica_dts_oldest_unfinished_age_seconds"), 1) << page;
  EXPECT_LT(Value(page, "formica_dts_oldest_unfinished_age_seconds"), 60) << page;
  // The enlist and the commit each waited for a group-commit sync.
  EXPECT_GE(Value(page, "formica_dts_wal_sync_duration_seconds_count"), 2) << page;
  auto [ok, said] = Promtool(dir_, "dtsd-unfinished", page);
  EXPECT_TRUE(ok) << said;
}

// dmsd's topics, groups, dead letters, log syncs and disk: 10 messages
// produced, 3 of them refused until they are dead letters.
TEST_F(MetricsExportTest, DmsdShowsTopicsLagDeadLettersSyncsAndTheDisk) {
  int port = PickFreePort();
  std::string listen = absl::StrCat("127.0.0.1:", PickFreePort());
  auto dmsd = Subprocess::Start(
      {BinaryPath("dms/dmsd"), "--listen", listen, "--data-dir", dir_.File("dmsd"), "--registry",
       dsrd_->address(), "--set", absl::StrCat("metrics.listen=127.0.0.1:", port), "--set",
       "consume.retry_initial=10ms", "--set", "consume.max_attempts=2"},
      dir_.File("dmsd.log"));
  ASSERT_TRUE(dmsd.ok()) << dmsd.status();
  ASSERT_TRUE((*dmsd)->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << (*dmsd)->Output();
  auto create =
      Subprocess::Start({BinaryPath("tools/formicactl"), "--dms", listen, "--registry",
                         dsrd_->address(), "dms", "create-topic", "metrics.t", "--queues", "1"},
                        dir_.File("create.log"));
  ASSERT_TRUE(create.ok());
  ASSERT_EQ((*create)->Wait(absl::Seconds(20)), 0) << (*create)->Output();
  formica::registry::ClientOptions ro;
  ro.registries = {dsrd_->address()};
  ro.client_name = "dms-metrics";
  auto registry = formica::registry::Client::Create(ro);
  ASSERT_TRUE(registry.ok()) << registry.status();
  formica::rpc::ClientOptions co;
  co.app_name = "dms-metrics";
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  ASSERT_TRUE(rpc.ok()) << rpc.status();
  formica::dms::ProducerOptions po;
  po.producer_group = "metrics";
  auto producer = formica::dms::Producer::Create(po, rpc->get());
  ASSERT_TRUE(producer.ok()) << producer.status();
  for (int i = 0; i < 10; ++i) {
    formica::dms::OutgoingMessage m;
    m.body = i < 3 ? "bad" : "good";
    auto sent = (*producer)->Send("metrics.t", m);
    // The first send waits for the broker to be listed.
    for (int retry = 0; !sent.ok() && i == 0 && retry < 100; ++retry) {
      absl::SleepFor(absl::Milliseconds(100));
      sent = (*producer)->Send("metrics.t", m);
    }
    ASSERT_TRUE(sent.ok()) << sent.status();
  }
  formica::dms::ConsumerOptions o;
  o.group = "g";
  o.topic = "metrics.t";
  auto consumer = formica::dms::Consumer::Start(
      o,
      [](const formica::dms::ReceivedMessage& m) {
        return m.body == "bad" ? formica::dms::ConsumeResult::kRetryLater
                               : formica::dms::ConsumeResult::kSuccess;
      },
      rpc->get());
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  const std::string series = "{group=\"g\",topic=\"metrics.t\",queue=\"0\"}";
  std::string page;
  absl::Time until = absl::Now() + absl::Seconds(30);
  while (absl::Now() < until) {
    page = Scrape(port);
    if (SumOf(page, "formica_dms_dead_letters{group=\"g\"}") == 3 &&
        SumOf(page, "formica_dms_group_committed_offset" + series) == 10) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(SumOf(page, "formica_dms_messages_total{topic=\"metrics.t\"}"), 10) << page;
  EXPECT_EQ(SumOf(page, "formica_dms_dead_letters{group=\"g\"}"), 3) << page;
  EXPECT_EQ(SumOf(page, "formica_dms_group_committed_offset" + series), 10) << page;
  EXPECT_EQ(SumOf(page, "formica_dms_group_lag" + series), 0) << page;
  EXPECT_GT(SumOf(page, "formica_dms_stored_bytes{topic=\"metrics.t\"}"), 0) << page;
  EXPECT_GE(Value(page, "formica_dms_log_sync_duration_seconds_count"), 1) << page;
  EXPECT_EQ(Value(page, "formica_dms_half_messages"), 0) << page;
  EXPECT_GT(Value(page, "formica_dms_disk_used_ratio"), 0) << page;
  EXPECT_LE(Value(page, "formica_dms_disk_used_ratio"), 1) << page;
  EXPECT_EQ(Value(page, "formica_dms_disk_full_ratio"), 0.95) << page;
  auto [ok, said] = Promtool(dir_, "dmsd-topics", page);
  EXPECT_TRUE(ok) << said;
  (*consumer)->Stop();
}

TEST_F(MetricsExportTest, ABadMetricsListenStopsTheDaemonNamingIt) {
  auto p = Subprocess::Start(
      {BinaryPath("dts/dtsd"), "--listen", absl::StrCat("127.0.0.1:", PickFreePort()), "--data-dir",
       dir_.File("dtsd"), "--registry", dsrd_->address(), "--set", "metrics.listen=localhost"},
      dir_.File("bad.log"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 1) << (*p)->Output();
  EXPECT_TRUE(absl::StrContains((*p)->Output(), "metrics.listen 'localhost' is not host:port"))
      << (*p)->Output();
}

// The value of PromQL `query` at Prometheus on `port` (one-element vector),
// or -1 when it has none yet.
double Query(int port, const std::string& query, std::string* raw) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  httplib::Result res =
      client.Get("/api/v1/query", httplib::Params{{"query", query}}, httplib::Headers{});
  if (!res) return -1;
  *raw = res->body;
  google::protobuf::Struct reply;
  if (!google::protobuf::util::JsonStringToMessage(res->body, &reply).ok()) return -1;
  const auto& result =
      reply.fields().at("data").struct_value().fields().at("result").list_value().values();
  if (result.size() != 1) return -1;
  const auto& value = result[0].struct_value().fields().at("value").list_value().values();
  double v = -1;
  if (value.size() != 2 || !absl::SimpleAtod(value[1].string_value(), &v)) return -1;
  return v;
}

TEST_F(MetricsExportTest, PrometheusScrapesDtsdAndProvidersWhileActivitiesRun) {
  int dtsd_metrics = PickFreePort();
  int a_metrics = PickFreePort();
  int b_metrics = PickFreePort();
  int echo_metrics = PickFreePort();
  auto dtsd = StartDaemon("dtsd", dtsd_metrics);
  const std::string dtsd_address = listen_;
  auto a = StartBank("bank.a", a_metrics);
  auto b = StartBank("bank.b", b_metrics);
  auto echo = StartEcho(echo_metrics);
  ASSERT_TRUE(dtsd && a && b && echo);

  int prom_port = PickFreePort();
  std::string config = dir_.File("prometheus.yml");
  std::ofstream(config) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                        << "scrape_configs:\n"
                        << "  - job_name: dtsd\n    static_configs:\n      - targets: ['127.0.0.1:"
                        << dtsd_metrics << "']\n"
                        << "  - job_name: banks\n    static_configs:\n      - targets: ['127.0.0.1:"
                        << a_metrics << "', '127.0.0.1:" << b_metrics << "']\n"
                        << "  - job_name: echo\n    static_configs:\n      - targets: ['127.0.0.1:"
                        << echo_metrics << "']\n";
  auto prometheus =
      Subprocess::Start({"/usr/bin/prometheus", absl::StrCat("--config.file=", config),
                         absl::StrCat("--storage.tsdb.path=", dir_.File("prometheus-data")),
                         absl::StrCat("--web.listen-address=127.0.0.1:", prom_port)},
                        dir_.File("prometheus.log"));
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  ASSERT_TRUE(
      (*prometheus)->WaitForOutput("Server is ready to receive web requests", absl::Seconds(30)))
      << (*prometheus)->Output();

  // Transfers between the banks, each a business activity with a try call
  // in each bank, until at least 40 are reported committed.
  auto client = Subprocess::Start({BinaryPath("tests/dts/transfer_client"), "--registry",
                                   dsrd_->address(), "--threads", "4", "--accounts", "10"},
                                  dir_.File("transfer_client.log"));
  ASSERT_TRUE(client.ok()) << client.status();
  auto commits = [&] { return (*client)->CountInOutput("committed "); };
  absl::Time until = absl::Now() + absl::Seconds(60);
  while (commits() < 40 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  (*client)->Terminate();
  const size_t committed = commits();
  ASSERT_GE(committed, 40u) << (*client)->Output();
  CallEcho(30, 5);
  // Two calls of a callback-API method, made as an operator makes them.
  for (int i = 0; i < 2; ++i) {
    auto stats = Subprocess::Start({BinaryPath("tools/formicactl"), "--dts", dtsd_address,
                                    "--registry", dsrd_->address(), "dts", "stats"},
                                   dir_.File(absl::StrCat("stats", i, ".log")));
    ASSERT_TRUE(stats.ok()) << stats.status();
    ASSERT_EQ((*stats)->Wait(absl::Seconds(20)), 0) << (*stats)->Output();
  }

  // Prometheus has the counts once it scraped after the client stopped.
  struct Expect {
    std::string query;
    double at_least;
  };
  std::vector<Expect> expects = {
      {"formica_dts_committed_total{job=\"dtsd\"}", static_cast<double>(committed)},
      {"formica_dts_begun_total{job=\"dtsd\"}", static_cast<double>(committed)},
      {"formica_dts_wal_syncs_total{job=\"dtsd\"}", 1},
      // Phase two confirmed every committed transfer in each bank (an
      // action per bank; several actions may share one batched call).
      {"formica_dts_phase_two_calls_total{job=\"dtsd\"}", 2.0 * committed},
      // dtsd's client side counts those calls per participant service and
      // provider: one series per bank.
      {"count(formica_rpc_calls_total{job=\"dtsd\",side=\"client\",code=\"OK\"})", 2},
      // The callback-API services count their calls too: dtsd's Coordinator
      // (batches of begins, enlists and commits) and the banks' participant
      // services (phase two; hosted under the participant's name).
      {"sum(formica_rpc_calls_total{job=\"dtsd\",side=\"server\","
       "service=\"formica.dts.v1.Coordinator\",code=\"OK\"})",
       1},
      {"sum(formica_rpc_calls_total{job=\"banks\",side=\"server\","
       "method=~\"Confirm|Cancel|PhaseTwoBatch\",code=\"OK\"})",
       1},
      // ...and per method (the participants' phase-two methods).
      {"count(formica_rpc_calls_total{job=\"dtsd\",side=\"client\",method!=\"\","
       "code=\"OK\"})",
       2},
  };
  for (const Expect& e : expects) {
    std::string raw;
    double v = -1;
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      v = Query(prom_port, e.query, &raw);
      if (v >= e.at_least) break;
      absl::SleepFor(absl::Milliseconds(250));
    }
    EXPECT_GE(v, e.at_least) << e.query << "\nPrometheus answered: " << raw;
  }
  // The provider's counts per method and code are exact.
  std::vector<std::pair<std::string, double>> exact = {
      {"formica_rpc_calls_total{job=\"echo\",side=\"server\",service=\"formica.test.Echo\","
       "method=\"Echo\",code=\"OK\"}",
       30},
      {"formica_rpc_calls_total{job=\"echo\",side=\"server\",service=\"formica.test.Echo\","
       "method=\"Echo\",code=\"INTERNAL\"}",
       5},
      {"formica_rpc_call_duration_seconds_count{job=\"echo\",side=\"server\","
       "method=\"Echo\"}",
       35},
      {"formica_rpc_call_duration_seconds_bucket{job=\"echo\",side=\"server\","
       "method=\"Echo\",le=\"+Inf\"}",
       35},
      // dtsd's Coordinator is a callback-API service: counted by method.
      {"formica_rpc_calls_total{job=\"dtsd\",side=\"server\","
       "service=\"formica.dts.v1.Coordinator\",method=\"GetStats\",code=\"OK\"}",
       2},
      {"formica_rpc_call_duration_seconds_count{job=\"dtsd\",side=\"server\","
       "service=\"formica.dts.v1.Coordinator\",method=\"GetStats\"}",
       2},
  };
  for (const auto& [query, want] : exact) {
    std::string raw;
    double v = -1;
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      v = Query(prom_port, query, &raw);
      if (v == want) break;
      absl::SleepFor(absl::Milliseconds(250));
    }
    EXPECT_EQ(v, want) << query << "\nPrometheus answered: " << raw;
  }
}

}  // namespace
