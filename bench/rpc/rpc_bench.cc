// bench/rpc: the same echo providers called by raw gRPC stubs on one channel
// and through rpc::Client (registry, routing, balancing, context) over two
// providers, in one run: QPS, p50, p99 at concurrency 1 and 64, payloads
// 100 B and 4 KiB. Last line: one JSON object.
//
//   ./formica bench rpc [--quick]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/echo.grpc.pb.h"
#include "process.h"

namespace formica::bench {
namespace {

using formica::testing::Subprocess;

struct Result {
  double qps = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  int64_t failures = 0;
};

// Runs `call` from `concurrency` threads for `duration`.
Result Drive(int concurrency, absl::Duration duration, const std::function<bool()>& call) {
  std::vector<std::vector<double>> latencies(concurrency);
  std::atomic<int64_t> failures{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  absl::Time start = absl::Now();
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      latencies[t].reserve(200000);
      while (!stop.load(std::memory_order_relaxed)) {
        absl::Time t0 = absl::Now();
        bool ok = call();
        latencies[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!ok) ++failures;
      }
    });
  }
  absl::SleepFor(duration);
  stop = true;
  for (auto& t : threads) t.join();
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  Result r;
  r.qps = all.size() / seconds;
  r.p50_ms = Percentile(all, 50);
  r.p99_ms = Percentile(all, 99);
  r.failures = failures;
  return r;
}

std::string Address(Subprocess& p) { return p.LineAfter("serving on "); }

int Run(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: bench_rpc [--quick]\n");
      return 2;
    }
  }
  const absl::Duration duration = quick ? absl::Seconds(1) : absl::Seconds(4);
  formica::testing::TempDir dir;
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd");
  dsrd_options.config = {{"push.warmup", "0s"}};
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) {
    std::fprintf(stderr, "bench_rpc: %s\n", dsrd.status().ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<Subprocess>> providers;
  for (int i = 0; i < 2; ++i) {
    auto p = Subprocess::Start(
        {formica::testing::BinaryPath("tests/rpc/echo_server"), "--registry", (*dsrd)->address()},
        dir.File(absl::StrCat("echo", i, ".log")));
    if (!p.ok() || !(*p)->WaitForOutput("serving on", absl::Seconds(20))) {
      std::fprintf(stderr, "bench_rpc: echo provider did not start\n");
      return 1;
    }
    providers.push_back(std::move(*p));
  }
  registry::ClientOptions registry_options;
  registry_options.registries = {(*dsrd)->address()};
  auto registry = *registry::Client::Create(registry_options);
  rpc::ClientOptions rpc_options;
  rpc_options.app_name = "bench";
  auto client = *rpc::Client::Create(rpc_options, registry.get());

  auto raw_channel =
      grpc::CreateChannel(Address(*providers[0]), grpc::InsecureChannelCredentials());
  auto raw_stub = test::Echo::NewStub(raw_channel);

  BenchReport report;
  double qps_ratio_min = 1e9;
  double p99_ratio_max = 0;
  for (int payload : {100, 4096}) {
    test::EchoRequest request;
    request.set_message(std::string(payload, 'x'));
    for (int concurrency : {1, 64}) {
      std::string suffix = absl::StrCat("c", concurrency, "_", payload == 100 ? "100b" : "4kib");
      auto raw_call = [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        test::EchoResponse response;
        return raw_stub->Echo(&ctx, request, &response).ok();
      };
      auto formica_call = [&] {
        test::EchoResponse response;
        return client
            ->Call("formica.test.Echo", {},
                   [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                     return test::Echo::NewStub(ch)->Echo(ctx, request, &response);
                   })
            .ok();
      };
      Drive(concurrency, absl::Milliseconds(300), formica_call);  // warm both paths
      Drive(concurrency, absl::Milliseconds(300), raw_call);
      Result raw = Drive(concurrency, duration, raw_call);
      Result formica = Drive(concurrency, duration, formica_call);
      std::printf(
          "%-10s raw %8.0f qps p50 %.3f p99 %.3f ms | formica %8.0f qps p50 %.3f p99 %.3f ms"
          " (failures %lld/%lld)\n",
          suffix.c_str(), raw.qps, raw.p50_ms, raw.p99_ms, formica.qps, formica.p50_ms,
          formica.p99_ms, static_cast<long long>(raw.failures),
          static_cast<long long>(formica.failures));
      report.Set("raw_qps_" + suffix, std::round(raw.qps));
      report.Set("formica_qps_" + suffix, std::round(formica.qps));
      report.Set("raw_p99_ms_" + suffix, raw.p99_ms);
      report.Set("formica_p99_ms_" + suffix, formica.p99_ms);
      qps_ratio_min = std::min(qps_ratio_min, formica.qps / raw.qps);
      p99_ratio_max = std::max(p99_ratio_max, formica.p99_ms / raw.p99_ms);
    }
  }
  report.Set("qps_ratio_min", qps_ratio_min);
  report.Set("p99_ratio_max", p99_ratio_max);
  report.SetSetup("cores", Cores());
  report.SetSetup("seconds_per_setup", absl::ToDoubleSeconds(duration));
  report.SetSetup("raw", "generated stub on one channel to one echo provider");
  report.SetSetup("formica", "rpc::Client, two echo providers via dsrd, weighted_random");
  report.SetSetup("network", "loopback; providers, dsrd and the caller share the machine");
  report.Print();
  client.reset();
  registry.reset();
  for (auto& p : providers) p->Terminate();
  (*dsrd)->Stop();
  return 0;
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
