// bench/ldc: a real dsrd and 100 client sessions, each with an ldc::Router
// (half in zone-a, half in zone-b), writers admitting writes on every shard
// while shards 00-49 switch zones back and forth:
//   converge_ms  switch started -> every client reported the final version
//   fenced_ms    fence published -> new owner published
//   refused_in_fence  write attempts refused (retryable) on fenced shards
// and, in the same run, the cost of zone routing on an rpc call: calls per
// second through rpc::Client with ldc::RpcZoneRouting (client picks the
// user's zone, provider checks again) against the same calls without, on
// one provider process's two services, windows alternated (ABBA).
//   route_overhead_ratio = routed calls/s / plain calls/s
// Last line: one JSON object.
//
//   ./formica bench ldc [--quick]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "formica/ldc/admin.h"
#include "formica/ldc/router.h"
#include "formica/ldc/rpc_routing.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/test/echo.grpc.pb.h"
#include "process.h"

namespace formica::bench {
namespace {

constexpr char kRules[] = R"(
ldc:
  zones:
    zone-a: {kind: rzone, data_center: dc-1, city: hangzhou, shards: "00-49"}
    zone-b: {kind: rzone, data_center: dc-2, city: shanghai, shards: "50-99"}
    global: {kind: gzone, data_center: dc-1, city: hangzhou}
)";

class EchoService final : public test::Echo::Service {
  grpc::Status Echo(grpc::ServerContext* context, const test::EchoRequest* request,
                    test::EchoResponse* response) override {
    return rpc::Serve(context, [&] {
      response->set_message(request->message());
      return grpc::Status::OK;
    });
  }
};

struct Session {
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<ldc::Router> router;
};

registry::ClientOptions RegistryOptions(const std::string& address, const std::string& name) {
  registry::ClientOptions o;
  o.registries = {address};
  o.client_name = name;
  o.backoff_initial = absl::Milliseconds(50);
  o.backoff_max = absl::Milliseconds(500);
  return o;
}

// Calls `service` from `threads` threads for `duration`; successful calls/s.
double Drive(rpc::Client* client, const char* service, int threads, absl::Duration duration,
             std::atomic<int64_t>* failures) {
  std::atomic<int64_t> calls{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  absl::Time start = absl::Now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      test::EchoRequest request;
      request.set_message(std::string(100, 'x'));
      int i = t;
      while (!stop.load(std::memory_order_relaxed)) {
        rpc::CallOptions options;
        options.context.user_id = absl::StrCat(2088000 + (i++ % 50));  // zone-a's users
        test::EchoResponse response;
        absl::Status st =
            client->Call(service, options,
                         [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* c) {
                           return test::Echo::NewStub(ch)->Echo(c, request, &response);
                         });
        if (!st.ok() && failures->fetch_add(1) == 0) {
          std::fprintf(stderr, "%s: %s\n", service, st.ToString().c_str());
        }
        if (st.ok()) calls.fetch_add(1);
      }
    });
  }
  absl::SleepFor(duration);
  stop = true;
  for (auto& t : pool) t.join();
  return calls.load() / absl::ToDoubleSeconds(absl::Now() - start);
}

// The cost of zone routing on a call: one provider in zone-a hosting Echo
// twice, one service with the zone check and one without; one caller with
// zone routing, one without; windows alternated.
void RouteCost(std::vector<Session>& sessions, bool quick, BenchReport* out) {
  BenchReport& report = *out;
  Session& provider = sessions[0];  // zone-a
  ldc::RpcZoneRouting routing(provider.router.get());
  EchoService routed_echo, plain_echo;
  rpc::ServerOptions routed_options;
  routed_options.zone = "zone-a";
  routed_options.zone_routing = &routing;
  routed_options.unpublish_grace = absl::ZeroDuration();
  rpc::ServerOptions plain_options = routed_options;
  plain_options.zone_routing = nullptr;
  auto routed_server =
      rpc::Server::Start(routed_options, {{"bench.Routed", &routed_echo}}, provider.registry.get());
  auto plain_server =
      rpc::Server::Start(plain_options, {{"bench.Plain", &plain_echo}}, provider.registry.get());
  Session& caller = sessions[2];  // zone-a
  rpc::ClientOptions routed_client_options;
  routed_client_options.zone = "zone-a";
  routed_client_options.zone_routing = &routing;
  rpc::ClientOptions plain_client_options;
  plain_client_options.zone = "zone-a";
  auto routed_client = rpc::Client::Create(routed_client_options, caller.registry.get());
  auto plain_client = rpc::Client::Create(plain_client_options, caller.registry.get());
  if (!routed_server.ok() || !plain_server.ok() || !routed_client.ok() || !plain_client.ok()) {
    report.Fail("the rpc part could not start");
    return;
  }
  const int threads = 8;
  const absl::Duration window = quick ? absl::Milliseconds(500) : absl::Seconds(2);
  const int rounds = quick ? 4 : 6;
  std::atomic<int64_t> failures{0};
  Drive(routed_client->get(), "bench.Routed", threads, absl::Milliseconds(300), &failures);
  Drive(plain_client->get(), "bench.Plain", threads, absl::Milliseconds(300), &failures);
  double routed_qps = 0, plain_qps = 0;
  for (int r = 0; r < rounds; ++r) {
    // Alternate which goes first (ABBA), so a drift in the machine's load
    // favours neither.
    double a = 0, b = 0;
    if (r % 2 == 0) {
      a = Drive(routed_client->get(), "bench.Routed", threads, window, &failures);
      b = Drive(plain_client->get(), "bench.Plain", threads, window, &failures);
    } else {
      b = Drive(plain_client->get(), "bench.Plain", threads, window, &failures);
      a = Drive(routed_client->get(), "bench.Routed", threads, window, &failures);
    }
    std::printf("round %d: %.0f calls/s with zone routing, %.0f without\n", r, a, b);
    routed_qps += a / rounds;
    plain_qps += b / rounds;
  }
  report.AddErrors("rpc_calls_failed", failures.load());
  report.Set("routed_calls_per_s", routed_qps);
  report.Set("plain_calls_per_s", plain_qps);
  report.Set("route_overhead_ratio", Ratio(routed_qps, plain_qps));
  (*routed_server)->Shutdown();
  (*plain_server)->Shutdown();
}

int Run(bool quick) {
  BenchReport report;
  formica::testing::TempDir dir;
  report.SetMachine(dir.path());
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd");
  dsrd_options.config = {{"push.warmup", "0s"}};
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) {
    report.Fail(absl::StrCat("dsrd: ", dsrd.status().ToString()));
    return report.Finish();
  }
  const std::string address = (*dsrd)->address();
  auto admin = ldc::RuleAdmin::Connect(address);
  if (auto v = admin->Put(ldc::ParseRules(kRules).value(), 0); !v.ok()) {
    report.Fail(absl::StrCat("publishing the rules: ", v.status().ToString()));
    return report.Finish();
  }

  // 100 sessions, each a registry client with a Router.
  constexpr int kClients = 100;
  std::vector<Session> sessions(kClients);
  for (int i = 0; i < kClients; ++i) {
    std::string name = absl::StrCat("client-", i);
    auto client = registry::Client::Create(RegistryOptions(address, name));
    if (!client.ok()) {
      report.Fail(absl::StrCat(name, ": ", client.status().ToString()));
      return report.Finish();
    }
    sessions[i].registry = std::move(*client);
    ldc::RouterOptions options;
    options.zone = i % 2 == 0 ? "zone-a" : "zone-b";
    options.client_name = name;
    sessions[i].router = ldc::Router::Start(sessions[i].registry.get(), options).value();
  }
  absl::Time ready_by = absl::Now() + absl::Seconds(30);
  for (auto& s : sessions) {
    while (s.router->reported_version() == 0 && absl::Now() < ready_by) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (s.router->reported_version() == 0) report.AddMissing("clients_never_ready", 1);
  }
  std::printf("%d clients on the rules\n", kClients);

  // Writers: every 1 ms each tries a write on each zone's shards, without
  // waiting; a refusal on a fenced shard is counted, any other is an error
  // only when the zone owns the shard.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> admitted{0}, refused_in_fence{0}, wrong_refusals{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      ldc::Router* router = sessions[w % 2].router.get();  // zone-a, zone-b, ...
      int shard = w;
      while (!stop.load()) {
        shard = (shard + 7) % 100;
        auto permit = router->AdmitWrite(shard, absl::InfinitePast());
        if (permit.ok()) {
          admitted.fetch_add(1);
        } else if (absl::IsUnavailable(permit.status())) {
          refused_in_fence.fetch_add(1);
        } else if (!absl::IsFailedPrecondition(permit.status())) {
          wrong_refusals.fetch_add(1);
        }
        absl::SleepFor(absl::Milliseconds(1));
      }
    });
  }

  const int switches = quick ? 4 : 8;  // even: shards 00-49 end in zone-a again
  std::vector<double> converge, fenced, fence_wait;
  for (int i = 0; i < switches; ++i) {
    ldc::SwitchOptions options;
    options.shards = ldc::ParseShards("00-49").value();
    options.to = i % 2 == 0 ? "zone-b" : "zone-a";
    options.poll = absl::Milliseconds(2);
    absl::StatusOr<ldc::SwitchResult> r = admin->Switch(options);
    if (!r.ok()) {
      report.AddErrors("switches_failed", 1);
      std::fprintf(stderr, "switch %d: %s\n", i, r.status().ToString().c_str());
      continue;
    }
    if (!r->converged) report.AddMissing("switches_not_converged", 1);
    if (r->clients != kClients) report.AddMissing("clients_not_reporting", kClients - r->clients);
    converge.push_back(absl::ToDoubleMilliseconds(r->converge));
    fenced.push_back(absl::ToDoubleMilliseconds(r->fenced_for));
    fence_wait.push_back(absl::ToDoubleMilliseconds(r->fence_wait));
    std::printf(
        "switch %d to %s: fence applied by %d clients in %.1f ms, fenced %.1f ms, "
        "converged in %.1f ms\n",
        i, options.to.c_str(), r->clients, fence_wait.back(), fenced.back(), converge.back());
    absl::SleepFor(absl::Milliseconds(200));
  }
  stop = true;
  for (auto& t : writers) t.join();
  report.AddErrors("wrong_write_refusals", wrong_refusals.load());
  report.Set("converge_ms", Percentile(converge, 50));
  report.Set("converge_ms_max", Percentile(converge, 100));
  report.Set("fenced_ms", Percentile(fenced, 50));
  report.Set("fenced_ms_max", Percentile(fenced, 100));
  report.Set("fence_wait_ms", Percentile(fence_wait, 50));
  report.Set("refused_in_fence", static_cast<double>(refused_in_fence.load()));
  report.Set("writes_admitted", static_cast<double>(admitted.load()));
  report.Set("clients", kClients);
  report.Set("switches", static_cast<double>(converge.size()));

  RouteCost(sessions, quick, &report);
  report.Headline("ldc converge ms, 100 clients (median switch)", "converge_ms", "", "",
                  "<= 1000 ms");
  report.Headline("ldc fenced ms (median switch)", "fenced_ms", "", "", "< 500 ms");
  report.Headline("ldc rpc calls/s with zone routing vs without", "routed_calls_per_s",
                  "plain_calls_per_s", "route_overhead_ratio", ">= 0.98 (cost <= 2%)");
  report.SetSetup("clients", kClients);
  report.SetSetup("switch", "shards 00-49 between zone-a and zone-b");
  report.SetSetup("rpc_threads", 8);
  report.SetSetup("payload_bytes", 100);
  report.SetSetup("mode", quick ? "quick" : "full");
  sessions.clear();
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: bench_ldc [--quick]\n");
      return 2;
    }
  }
  return formica::bench::Run(quick);
}
