// rpc::Server and rpc::Client end to end: a real dsrd, echo providers as
// separate processes, calls over loopback.
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "formica/rpc/client.h"
#include "formica/rpc/discovery.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/server.h"
#include "formica/rpc/v1/rpc.grpc.pb.h"
#include "formica/test/echo.grpc.pb.h"
#include "registry_fixture.h"

namespace formica::rpc {
namespace {

using formica::registry::testing::RegistryTest;
using formica::testing::Subprocess;
constexpr char kEcho[] = "formica.test.Echo";

std::string Address(Subprocess& p) { return p.LineAfter("serving on "); }

// The value of `series` ("name{labels}" as exported) in a Prometheus text
// page; -1 when it has no such line.
double Sample(const std::string& page, const std::string& series) {
  size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  size_t start = at + series.size() + 2;
  double v = -1;
  if (!absl::SimpleAtod(page.substr(start, page.find('\n', start) - start), &v)) return -1;
  return v;
}

// GET /metrics of the process whose metrics endpoint is on `port`.
std::string Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(5, 0);
  httplib::Result res = client.Get("/metrics");
  return res && res->status == 200 ? res->body : "";
}

class RpcTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    registry_ = NewClient("rpc-test");
  }

  std::unique_ptr<Client> NewRpcClient(const std::string& zone = "",
                                       const std::string& policy = "weighted_random") {
    ClientOptions options;
    options.app_name = "rpc-test";
    options.zone = zone;
    options.policies[kEcho] = policy;
    auto c = Client::Create(options, registry_.get());
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  std::unique_ptr<Subprocess> StartEcho(std::vector<std::string> flags) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tests/rpc/echo_server"),
                                     "--registry", dsrd_->address()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto p = Subprocess::Start(argv, dir_.File("echo" + std::to_string(++echoes_) + ".log"));
    EXPECT_TRUE(p.ok());
    EXPECT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // Waits until the registry lists `n` providers of the echo service.
  void AwaitProviders(size_t n) {
    if (subscription_ == 0) {
      subscription_ = *registry_->Subscribe(kEcho, nullptr);
    }
    for (int i = 0; i < 500; ++i) {
      auto s = registry_->GetSnapshot(kEcho);
      if (s && s->instances.size() == n) return;
      absl::SleepFor(absl::Milliseconds(10));
    }
    FAIL() << "the registry never listed " << n << " providers";
  }

  absl::StatusOr<test::EchoResponse> Echo(Client& client, CallOptions options,
                                          test::EchoRequest request = {}) {
    test::EchoResponse response;
    absl::Status st = client.Call(
        kEcho, options, [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
          return test::Echo::NewStub(ch)->Echo(ctx, request, &response);
        });
    if (!st.ok()) return st;
    return response;
  }

  std::unique_ptr<registry::Client> registry_;
  uint64_t subscription_ = 0;
  int echoes_ = 0;
};

TEST_F(RpcTest, WeightsDecideEachProvidersShare) {
  auto light = StartEcho({"--weight", "100"});
  auto heavy = StartEcho({"--weight", "300"});
  AwaitProviders(2);
  auto client = NewRpcClient();
  constexpr int kCalls = 4000;  // sd of the share: 0.007
  int to_heavy = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto r = Echo(*client, {});
    ASSERT_TRUE(r.ok()) << r.status();
    to_heavy += r->served_by() == Address(*heavy);
  }
  EXPECT_NEAR(to_heavy / static_cast<double>(kCalls), 0.75, 0.04);
}

TEST_F(RpcTest, ContextAndDeadlineTravelDownstream) {
  auto echo = StartEcho({});
  AwaitProviders(1);
  auto client = NewRpcClient();
  CallOptions options;
  options.timeout = absl::Milliseconds(1500);
  options.context.user_id = "2088000042";
  options.context.txn_id = "txn-7";
  test::EchoRequest request;
  request.set_forward_to(kEcho);  // the handler calls Echo again
  auto r = Echo(*client, options, request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->caller_app(), "rpc-test");
  EXPECT_EQ(r->user_id(), "2088000042");
  EXPECT_EQ(r->txn_id(), "txn-7");
  // W3C trace context: a new trace, then the same trace and flags with a new
  // span for the downstream call.
  EXPECT_THAT(r->traceparent(), ::testing::MatchesRegex("00-[0-9a-f]{32}-[0-9a-f]{16}-01"));
  EXPECT_LE(r->deadline_left_ms(), 1500);
  EXPECT_GT(r->deadline_left_ms(), 500);
  const test::EchoResponse& down = r->downstream();
  EXPECT_EQ(down.user_id(), "2088000042");
  EXPECT_EQ(down.txn_id(), "txn-7");
  EXPECT_EQ(down.caller_app(), "echo_server");
  // Same trace, new span.
  EXPECT_THAT(down.traceparent(), ::testing::MatchesRegex("00-[0-9a-f]{32}-[0-9a-f]{16}-01"));
  EXPECT_EQ(down.traceparent().substr(0, 36), r->traceparent().substr(0, 36));
  EXPECT_NE(down.traceparent().substr(36, 16), r->traceparent().substr(36, 16));
  // The downstream call is bound by its parent's deadline (1500ms from the
  // first call), not by its own default timeout (2s). gRPC carries deadlines
  // as relative timeouts, so each hop may gain its transit time: compare
  // with the bound, not with the parent's own reading.
  EXPECT_LE(down.deadline_left_ms(), 1500);
}

TEST_F(RpcTest, WhatAHandlerJoinedReachesTheCallersScopeThroughNestedCalls) {
  auto echo = StartEcho({});
  AwaitProviders(1);
  auto client = NewRpcClient();
  test::EchoRequest request;
  request.set_report_joined("step");
  request.set_forward_to(kEcho);  // the handler's own call reports "step downstream"
  {
    CallContextScope scope(CallContext{});
    ASSERT_TRUE(Echo(*client, {}, request).ok());
    EXPECT_THAT(TakeJoined(), ::testing::UnorderedElementsAre("step", "step downstream"));
    EXPECT_TRUE(TakeJoined().empty()) << "taken once";
  }
  request.clear_forward_to();
  request.set_fail(true);
  {
    CallContextScope scope(CallContext{});
    EXPECT_FALSE(Echo(*client, {}, request).ok());
    EXPECT_THAT(TakeJoined(), ::testing::ElementsAre("step")) << "a failed call reports too";
  }
  {
    CallContextScope outer(CallContext{});
    {
      CallContextScope inner(CallContext{});
      EXPECT_TRUE(ReportJoined("left in the inner scope"));
    }
    EXPECT_THAT(TakeJoined(), ::testing::ElementsAre("left in the inner scope"))
        << "what a scope leaves goes on to the one around it";
    EXPECT_FALSE(ReportJoined("not\nprintable"));
    EXPECT_TRUE(TakeJoined().empty());
  }
  EXPECT_FALSE(ReportJoined("x")) << "outside any scope nothing is kept";
  EXPECT_TRUE(TakeJoined().empty());
}

// Four callers at once, so in-flight counts and latencies differ.
double ShareOfFast(Client& client, const std::string& fast, int per_thread) {
  std::atomic<int> to_fast{0};
  std::atomic<int> total{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < per_thread; ++k) {
        test::EchoResponse response;
        absl::Status st = client.Call(
            kEcho, {}, [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
              return test::Echo::NewStub(ch)->Echo(ctx, test::EchoRequest(), &response);
            });
        if (st.ok()) {
          ++total;
          to_fast += response.served_by() == fast;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  return total == 0 ? 0 : to_fast / static_cast<double>(total);
}

TEST_F(RpcTest, LeastActiveAndP2cMoveTrafficAwayFromASlowProvider) {
  auto fast = StartEcho({});
  auto slow = StartEcho({"--delay-ms", "20"});
  AwaitProviders(2);
  for (const char* policy : {"least_active", "p2c_ewma"}) {
    auto client = NewRpcClient("", policy);
    // Equal weights: weighted random would give the fast one half.
    EXPECT_GT(ShareOfFast(*client, Address(*fast), 150), 0.8) << policy;
  }
}

TEST_F(RpcTest, ANewProviderRampsItsWeightDuringWarmUp) {
  auto warm = StartEcho({"--weight", "100", "--warmup-ms", "3000"});
  AwaitProviders(1);
  std::vector<int32_t> weights;
  for (int i = 0; i < 60 && (weights.empty() || weights.back() < 100); ++i) {
    auto s = registry_->GetSnapshot(kEcho);
    if (s && !s->instances.empty()) weights.push_back(s->instances[0].weight);
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(weights.empty());
  EXPECT_LT(weights.front(), 50) << "a cold provider starts low";
  EXPECT_EQ(weights.back(), 100) << "and reaches its full weight";
  for (size_t i = 1; i < weights.size(); ++i) EXPECT_GE(weights[i], weights[i - 1]);
}

TEST_F(RpcTest, AMethodOverItsConcurrencyLimitRefusesCallsWithoutRunningThem) {
  int metrics_port = formica::testing::PickFreePort();
  std::ofstream(dir_.File("echo-metrics.yaml"))
      << "metrics:\n  listen: 127.0.0.1:" << metrics_port << "\n";
  auto only = StartEcho({"--config", dir_.File("echo-metrics.yaml"), "--max-concurrent", "2"});
  AwaitProviders(1);
  auto client = NewRpcClient();
  absl::Mutex mu;
  std::vector<std::pair<absl::Status, absl::Duration>> outcomes;
  std::vector<std::thread> callers;
  for (int i = 0; i < 6; ++i) {
    callers.emplace_back([&, i] {
      // Staggered so the first two are surely running when the rest arrive.
      absl::SleepFor(absl::Milliseconds(i < 2 ? 0 : 150));
      test::EchoRequest request;
      request.set_sleep_ms(600);
      CallOptions options;  // not idempotent
      absl::Time t0 = absl::Now();
      auto r = Echo(*client, options, request);
      absl::MutexLock lock(&mu);
      outcomes.emplace_back(r.status(), absl::Now() - t0);
    });
  }
  for (auto& c : callers) c.join();
  int ok = 0;
  int refused = 0;
  for (const auto& [status, took] : outcomes) {
    if (status.ok()) {
      ++ok;
      EXPECT_GE(took, absl::Milliseconds(590));
    } else {
      ++refused;
      EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
      EXPECT_NE(status.message().find("/formica.test.Echo/Echo has 2 calls in flight"),
                absl::string_view::npos)
          << status;
      // Refused before the handler's body ran (it sleeps 600 ms).
      EXPECT_LT(took, absl::Milliseconds(300)) << status;
    }
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(refused, 4);
  // The provider counted each refusal, with why.
  EXPECT_EQ(Sample(Scrape(metrics_port),
                   "formica_rpc_rejected_total{service=\"formica.test.Echo\",method=\"Echo\","
                   "reason=\"concurrency_limit\"}"),
            4);
  // Slots are given back: the method serves again at full width.
  for (int round = 0; round < 2; ++round) {
    std::vector<std::thread> again;
    std::atomic<int> fine{0};
    for (int i = 0; i < 2; ++i) {
      again.emplace_back([&] { fine += Echo(*client, {}).ok(); });
    }
    for (auto& c : again) c.join();
    EXPECT_EQ(fine.load(), 2);
  }
}

TEST_F(RpcTest, ACallRefusedOverTheLimitIsRetriedOnAnotherProviderEvenIfNotIdempotent) {
  // Nearly all first picks go to `busy`; its limit of one sends the second
  // concurrent call to `spare`.
  auto busy = StartEcho({"--max-concurrent", "1", "--weight", "1000"});
  auto spare = StartEcho({"--max-concurrent", "1", "--weight", "1"});
  AwaitProviders(2);
  auto client = NewRpcClient();
  for (int round = 0; round < 5; ++round) {
    std::vector<std::thread> callers;
    std::vector<absl::StatusOr<test::EchoResponse>> results(2, absl::UnknownError("not run"));
    for (int i = 0; i < 2; ++i) {
      callers.emplace_back([&, i] {
        test::EchoRequest request;
        request.set_sleep_ms(300);
        results[i] = Echo(*client, {}, request);
      });
    }
    for (auto& c : callers) c.join();
    ASSERT_TRUE(results[0].ok()) << results[0].status();
    ASSERT_TRUE(results[1].ok()) << results[1].status();
    EXPECT_NE(results[0]->served_by(), results[1]->served_by()) << "round " << round;
  }
  // Each refusal at `busy` was retried once, and this process counted it.
  auto stats = [](Subprocess& p) {
    auto stub =
        v1::Stats::NewStub(grpc::CreateChannel(Address(p), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::GetStatsRequest request;
    v1::StatsReply reply;
    EXPECT_TRUE(stub->GetStats(&ctx, request, &reply).ok());
    uint64_t refused = 0;
    for (const auto& series : reply.series()) {
      auto it = series.calls_by_code().find(8);  // RESOURCE_EXHAUSTED
      if (series.side() == "server" && it != series.calls_by_code().end()) refused += it->second;
    }
    return refused;
  };
  uint64_t refused = stats(*busy) + stats(*spare);
  EXPECT_GE(refused, 1u);
  EXPECT_EQ(Sample(CallMetricsPrometheusText(),
                   "formica_rpc_retries_total{service=\"formica.test.Echo\"}"),
            static_cast<double>(refused));
}

TEST_F(RpcTest, AsyncCallsRunConcurrentlyAndAllComplete) {
  auto a = StartEcho({});
  auto b = StartEcho({});
  AwaitProviders(2);
  auto client = NewRpcClient();
  constexpr int kCalls = 200;
  struct Exchange {
    test::EchoRequest request;
    test::EchoResponse response;
  };
  absl::Mutex mu;
  int done = 0;
  int ok = 0;
  std::map<std::string, int> served;
  std::vector<std::unique_ptr<Exchange>> exchanges;
  for (int i = 0; i < kCalls; ++i) {
    exchanges.push_back(std::make_unique<Exchange>());
    Exchange* x = exchanges.back().get();
    x->request.set_message("m" + std::to_string(i));
    x->request.set_sleep_ms(20);  // all in flight together
    client->CallAsync(
        kEcho, {},
        [x](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx,
            std::function<void(grpc::Status)> finish) {
          test::Echo::NewStub(ch)->async()->Echo(ctx, &x->request, &x->response, std::move(finish));
        },
        [&, x](absl::Status st) {
          absl::MutexLock lock(&mu);
          ++done;
          if (st.ok() && x->response.message() == x->request.message()) {
            ++ok;
            served[x->response.served_by()]++;
          }
        });
  }
  absl::MutexLock lock(&mu);
  auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == kCalls; };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30)));
  EXPECT_EQ(ok, kCalls);
  EXPECT_EQ(served.size(), 2u);
}

// A generated service as CallWithStub sees it, counting its stubs.
struct CountedEcho {
  class Stub {
   public:
    explicit Stub(const std::shared_ptr<grpc::ChannelInterface>& channel)
        : stub_(test::Echo::NewStub(channel)) {}
    ~Stub() { ++destroyed; }
    grpc::Status Echo(grpc::ClientContext* ctx, const test::EchoRequest& request,
                      test::EchoResponse* response) {
      return stub_->Echo(ctx, request, response);
    }

   private:
    std::unique_ptr<test::Echo::Stub> stub_;
  };
  static std::unique_ptr<Stub> NewStub(const std::shared_ptr<grpc::ChannelInterface>& channel) {
    ++made;
    return std::make_unique<Stub>(channel);
  }
  static inline std::atomic<int> made{0};
  static inline std::atomic<int> destroyed{0};
};

TEST_F(RpcTest, CallWithStubMakesOneStubPerProviderAndDropsItWithTheProvider) {
  auto a = StartEcho({});
  auto b = StartEcho({});
  AwaitProviders(2);
  auto client = NewRpcClient();
  CountedEcho::made = 0;
  CountedEcho::destroyed = 0;
  auto call = [&]() -> absl::StatusOr<std::string> {
    test::EchoRequest request;
    request.set_message("hello");
    test::EchoResponse response;
    absl::Status st = client->CallWithStub<CountedEcho>(
        kEcho, {}, [&](CountedEcho::Stub& stub, grpc::ClientContext* ctx) {
          return stub.Echo(ctx, request, &response);
        });
    if (!st.ok()) return st;
    EXPECT_EQ(response.message(), "hello");
    return response.served_by();
  };
  std::set<std::string> served;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<std::string> by = call();
    ASSERT_TRUE(by.ok()) << by.status();
    served.insert(*by);
  }
  EXPECT_EQ(served, (std::set<std::string>{Address(*a), Address(*b)}));
  EXPECT_EQ(CountedEcho::made, 2) << "one stub per provider, reused by every call";

  // A provider that leaves takes its stub (and the channel it holds) along;
  // one that joins gets its own.
  a->Terminate();
  auto c = StartEcho({});
  AwaitProviders(2);
  bool reached_c = false;
  for (int i = 0; i < 500 && !reached_c; ++i) {
    absl::StatusOr<std::string> by = call();
    reached_c = by.ok() && *by == Address(*c);
  }
  EXPECT_TRUE(reached_c);
  EXPECT_EQ(CountedEcho::made, 3);
  EXPECT_EQ(CountedEcho::destroyed, 1);
}

TEST_F(RpcTest, AsyncCallToAnUnknownServiceFailsAfterTheDeadline) {
  auto client = NewRpcClient();
  CallOptions options;
  options.timeout = absl::Milliseconds(300);
  absl::Notification finished;
  absl::Status outcome;
  absl::Time start = absl::Now();
  client->CallAsync(
      "nobody.Home", options,
      [](const std::shared_ptr<grpc::Channel>&, grpc::ClientContext*,
         std::function<void(grpc::Status)> finish) { finish(grpc::Status::OK); },
      [&](absl::Status st) {
        outcome = st;
        finished.Notify();
      });
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(outcome.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(outcome.message(), "no provider of 'nobody.Home' is known after 300ms");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(280));
}

TEST_F(RpcTest, UnknownServiceFailsClearlyAfterTheDeadline) {
  auto client = NewRpcClient();
  CallOptions options;
  options.timeout = absl::Milliseconds(300);
  absl::Time start = absl::Now();
  absl::Status st = client->Call(
      "nobody.Home", options,
      [](const std::shared_ptr<grpc::Channel>&, grpc::ClientContext*) { return grpc::Status::OK; });
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(), "no provider of 'nobody.Home' is known after 300ms");
  EXPECT_GE(took, absl::Milliseconds(280));
  EXPECT_LT(took, absl::Seconds(2));
}

TEST_F(RpcTest, ACrashedProviderLeavesRotationAndIdempotentCallsSurvive) {
  auto a = StartEcho({});
  auto b = StartEcho({});
  AwaitProviders(2);
  std::string dead = Address(*a);
  auto client = NewRpcClient();
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> to_dead_after{0};
  std::atomic<int64_t> killed_at_ns{0};
  std::thread caller([&] {
    CallOptions options;
    options.idempotent = true;
    options.timeout = absl::Seconds(2);
    for (int i = 0; i < 100000 && !stop; ++i) {
      auto r = Echo(*client, options);
      if (!r.ok()) {
        ++failures;
        continue;
      }
      int64_t k = killed_at_ns.load();
      if (k != 0 && r->served_by() == dead &&
          absl::Now() - absl::FromUnixNanos(k) > absl::Seconds(1)) {
        ++to_dead_after;
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(700));
  killed_at_ns = absl::ToUnixNanos(absl::Now());
  a->Kill();
  absl::SleepFor(absl::Milliseconds(2000));
  stop = true;
  caller.join();
  EXPECT_EQ(failures.load(), 0) << "idempotent calls must be retried on the live provider";
  EXPECT_EQ(to_dead_after.load(), 0);
  // The calls the dead provider failed were retried, and counted.
  std::string page = CallMetricsPrometheusText();
  EXPECT_GE(Sample(page, "formica_rpc_retries_total{service=\"formica.test.Echo\"}"), 1) << page;
}

TEST_F(RpcTest, KillingAProviderFailsAtMostItsInFlightCalls) {
  auto a = StartEcho({});
  auto b = StartEcho({});
  AwaitProviders(2);
  std::string dead = Address(*a);
  auto client = NewRpcClient();
  constexpr int kCallers = 4;  // so at most 4 calls can be in flight anywhere
  std::atomic<bool> stop{false};
  std::atomic<int> to_dead_late{0};
  std::atomic<int64_t> killed_at_ns{0};
  absl::Mutex mu;
  std::vector<std::pair<absl::Time, std::string>> failures;  // when, and what it said
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&] {
      test::EchoRequest request;
      request.set_sleep_ms(30);  // calls are in flight when the kill lands
      CallOptions options;       // not idempotent: a call that reached the provider is not retried
      for (int i = 0; i < 10000 && !stop; ++i) {
        auto r = Echo(*client, options, request);
        int64_t k = killed_at_ns.load();
        if (!r.ok()) {
          absl::MutexLock lock(&mu);
          failures.emplace_back(absl::Now(), std::string(r.status().message()));
        } else if (k != 0 && r->served_by() == dead &&
                   absl::Now() - absl::FromUnixNanos(k) > absl::Seconds(1)) {
          ++to_dead_late;
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  killed_at_ns = absl::ToUnixNanos(absl::Now());
  a->Kill();
  absl::SleepFor(absl::Milliseconds(1500));
  stop = true;
  for (auto& t : callers) t.join();
  // Only calls already on their way to the killed provider may fail: each
  // failure comes after the kill and names it, and there are no more than
  // each caller's call in flight and one sent before the client saw the
  // connection break (a count, not a time, so a loaded machine passes too).
  absl::Time killed = absl::FromUnixNanos(killed_at_ns.load());
  absl::MutexLock lock(&mu);
  EXPECT_LE(failures.size(), 2u * kCallers);
  for (const auto& [when, message] : failures) {
    EXPECT_NE(message.find(dead), std::string::npos) << message;
    EXPECT_GE(when, killed) << message;
  }
  EXPECT_EQ(to_dead_late.load(), 0) << "out of rotation within a second";
}

TEST_F(RpcTest, ConsistentHashKeepsKeysWhenAProviderJoins) {
  auto a = StartEcho({});
  auto b = StartEcho({});
  AwaitProviders(2);
  auto client = NewRpcClient("", "consistent_hash");
  constexpr int kKeys = 300;
  auto route = [&] {
    std::map<std::string, std::string> owner;
    for (int k = 0; k < kKeys; ++k) {
      CallOptions options;
      options.hash_key = "user-" + std::to_string(k);
      auto r = Echo(*client, options);
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) owner[options.hash_key] = r->served_by();
    }
    return owner;
  };
  auto before = route();
  EXPECT_EQ(before, route()) << "the same key must reach the same provider";
  auto c = StartEcho({});
  AwaitProviders(3);
  absl::SleepFor(absl::Milliseconds(200));  // the client has applied the push
  auto after = route();
  int moved = 0;
  int moved_elsewhere = 0;
  for (const auto& [key, address] : before) {
    if (after[key] != address) {
      ++moved;
      moved_elsewhere += after[key] != Address(*c);
    }
  }
  // About a third of the keys move, to the newcomer (Maglev may reshuffle ~1%).
  EXPECT_GT(moved, kKeys / 3 - 40);
  EXPECT_LT(moved, kKeys / 3 + 40);
  EXPECT_LE(moved_elsewhere, 6);
}

TEST_F(RpcTest, ZoneAffinityPrefersTheCallersZoneAndFallsBack) {
  auto near = StartEcho({"--zone", "gz00a"});
  auto far = StartEcho({"--zone", "sh00b"});
  AwaitProviders(2);
  auto client = NewRpcClient("gz00a");
  CallOptions options;
  options.idempotent = true;
  for (int i = 0; i < 200; ++i) {
    auto r = Echo(*client, options);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->zone(), "gz00a");
  }
  near->Kill();
  for (int i = 0; i < 200; ++i) {
    auto r = Echo(*client, options);
    ASSERT_TRUE(r.ok()) << r.status();  // the other zone takes over, no call lost
    EXPECT_EQ(r->zone(), "sh00b");
  }
}

TEST_F(RpcTest, TagRoutesFromTheRegistryShiftTraffic) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  AwaitProviders(2);
  auto client = NewRpcClient();
  auto share_blue = [&](int calls) {
    int n = 0;
    for (int i = 0; i < calls; ++i) {
      auto r = Echo(*client, {});
      EXPECT_TRUE(r.ok()) << r.status();
      n += r.ok() && r->served_by() == Address(*blue);
    }
    return n / static_cast<double>(calls);
  };
  auto route = [&](const std::string& rule, std::function<bool(double)> applied) {
    ASSERT_TRUE(registry_->PutConfig(std::string("rpc/routes/") + kEcho, rule).ok());
    for (int i = 0; i < 100; ++i) {
      if (applied(share_blue(50))) return;
    }
    FAIL() << "route " << rule << " never took effect";
  };
  route("color=blue:100", [](double s) { return s == 1.0; });
  route("color=green:100", [](double s) { return s == 0.0; });
  route("color=blue:30,color=green:70", [](double s) { return s > 0 && s < 1; });
  EXPECT_NEAR(share_blue(3000), 0.3, 0.05);  // sd 0.008
  // No provider carries the tag: fall back to everyone rather than fail.
  route("color=red:100", [](double s) { return s > 0 && s < 1; });
}

TEST_F(RpcTest, RollingRestartFailsNoCall) {
  std::vector<std::unique_ptr<Subprocess>> providers;
  for (int i = 0; i < 3; ++i) providers.push_back(StartEcho({"--grace-ms", "500"}));
  AwaitProviders(3);
  auto client = NewRpcClient();
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0};
  std::atomic<int> failures{0};
  std::string first_error;
  absl::Mutex mu;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      CallOptions options;  // not idempotent: only never-sent calls may be retried
      options.timeout = absl::Seconds(2);
      while (!stop && calls < 200000) {
        auto r = Echo(*client, options);
        ++calls;
        if (!r.ok()) {
          absl::MutexLock lock(&mu);
          if (failures++ == 0) first_error = r.status().ToString();
        }
      }
    });
  }
  // Calls run through every restart: each step waits for calls made since
  // the last one (progress, not a rate, so a slow machine passes too).
  auto await_calls = [&] {
    int before = calls.load();
    absl::Time until = absl::Now() + absl::Seconds(20);
    while (calls.load() < before + 50 && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_GE(calls.load(), before + 50) << "calls stalled during the restarts";
  };
  for (int i = 0; i < 3; ++i) {
    await_calls();
    EXPECT_EQ(providers[i]->Terminate(absl::Seconds(20)), 0) << providers[i]->Output();
    providers[i] = StartEcho({"--grace-ms", "500"});
  }
  await_calls();
  stop = true;
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0) << first_error;
}

TEST_F(RpcTest, AMalformedConfigStopsAProviderNamingTheKey) {
  std::string path = dir_.File("echo.yaml");
  {
    std::ofstream out(path);
    out << "rpc:\n  server:\n    zone: gz00a\n    warmup: soon\n";
  }
  auto p = Subprocess::Start({formica::testing::BinaryPath("tests/rpc/echo_server"), "--registry",
                              dsrd_->address(), "--config", path},
                             dir_.File("bad-echo.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2);
  EXPECT_NE((*p)->Output().find(path + ":4: rpc.server.warmup: expected a duration"),
            std::string::npos)
      << (*p)->Output();
}

TEST_F(RpcTest, BadOptionsAreRefusedNamingTheField) {
  ClientOptions options;
  options.policies[kEcho] = "fastest";
  auto c = Client::Create(options, registry_.get());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("ClientOptions.policies[formica.test.Echo]"),
            absl::string_view::npos)
      << c.status();
  EXPECT_EQ(
      Client::Create(ClientOptions{}, static_cast<registry::Client*>(nullptr)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Create(ClientOptions{}, static_cast<Discovery*>(nullptr)).status().code(),
            absl::StatusCode::kInvalidArgument);

  test::Echo::Service echo;
  for (const auto& [key, reason] : std::vector<std::pair<std::string, std::string>>{
           {"formica.test.Echo/Shout", "service 'formica.test.Echo' has no such method"},
           {"fund.Trade/Buy", "service 'fund.Trade' is not hosted by this server"},
           {"formica.test.Echo", "is not pkg.Service/Method"}}) {
    ServerOptions server_options;
    server_options.method_limits[key] = 3;
    auto server = Server::Start(server_options, {{kEcho, &echo}}, registry_.get());
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_NE(server.status().message().find(reason), absl::string_view::npos) << server.status();
  }
}

}  // namespace
}  // namespace formica::rpc
