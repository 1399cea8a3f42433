// bench/rpc: the same two echo providers called by raw gRPC stubs (one
// channel per provider, calls taken round-robin) and through rpc::Client
// (registry, routing, balancing, context), in one run: QPS, p50, p99 at
// concurrency 1 and 64, payloads 100 B and 4 KiB. Only successful calls
// count; any failed call makes the run not ok (exit 1). Last line: one JSON
// object.
//
//   ./formica bench rpc [--quick]
//
// Then the cost of counting calls (formica/rpc/metrics.h): CPU per call of a
// provider and of a caller, counting and not (counting_*_cpu_ratio).
//
// Then what mutual TLS costs (docs/security.md): raw stubs to plaintext
// and to TLS providers in alternating rounds (tls_qps_ratio_*), and
// rpc::Client over TLS.
//
// --profile raw|formica [--calls N] [--payload BYTES] makes N calls from one
// thread on one side only, for an instruction count of the client process:
//   valgrind --tool=callgrind build/bench/rpc/bench_rpc --profile formica
// (only the timed calls are counted: the statistics are zeroed before them
// and dumped after, over every thread of the caller).
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "formica/common/grpc_status.h"
#include "formica/common/tls.h"
#include "formica/internal/credentials.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/echo.grpc.pb.h"
#include "process.h"

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_ZERO_STATS
#define CALLGRIND_DUMP_STATS_AT(name)
#endif

namespace formica::bench {
namespace {

using formica::testing::Subprocess;

struct Result {
  double qps = 0;  // successful calls per second
  double p50_ms = 0;
  double p99_ms = 0;
  int64_t failures = 0;
};

// Runs `call` from `concurrency` threads for `duration`; QPS and latencies
// are of the calls that succeeded.
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
        if (ok) {
          latencies[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        } else {
          ++failures;
        }
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

// User plus system CPU time of this process so far, over all its threads.
absl::Duration ProcessCpuTime() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return absl::DurationFromTimeval(usage.ru_utime) + absl::DurationFromTimeval(usage.ru_stime);
}

// CPU time of process `pid` so far, summed over its live threads
// (/proc/PID/task/*/schedstat, in nanoseconds).
absl::Duration ProcessCpuTimeOf(pid_t pid) {
  int64_t ns = 0;
  std::string dir = absl::StrCat("/proc/", pid, "/task");
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* entry = readdir(d)) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream in(absl::StrCat(dir, "/", entry->d_name, "/schedstat"));
      int64_t task_ns = 0;
      if (in >> task_ns) ns += task_ns;
    }
    closedir(d);
  }
  return absl::Nanoseconds(ns);
}

// What counting calls (formica/rpc/metrics.h) costs: CPU per call with and
// without it, on the provider (two providers, one started with
// --count-calls no, called by raw stubs) and on the caller (two
// rpc::Clients, count_calls true and false). Rounds alternate between the
// two, so drift in the machine's load falls on both.
void MeasureCountingCost(bool quick, rpc::Client& counting_client, registry::Client& registry,
                         Subprocess& counting_provider, Subprocess& plain_provider,
                         BenchReport& report) {
  const int rounds = quick ? 5 : 15;
  const int calls = quick ? 1000 : 2000;
  test::EchoRequest request;
  request.set_message(std::string(100, 'x'));
  auto stub_to = [](Subprocess& p) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return test::Echo::NewStub(
        grpc::CreateCustomChannel(Address(p), grpc::InsecureChannelCredentials(), args));
  };
  auto counting_stub = stub_to(counting_provider);
  auto plain_stub = stub_to(plain_provider);
  int64_t failures = 0;
  auto raw_calls = [&](test::Echo::Stub& stub) {
    for (int i = 0; i < calls; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      test::EchoResponse response;
      failures += !stub.Echo(&ctx, request, &response).ok();
    }
  };
  rpc::ClientOptions plain_options;
  plain_options.app_name = "bench";
  plain_options.count_calls = false;
  auto plain_client = *rpc::Client::Create(plain_options, &registry);
  auto client_calls = [&](rpc::Client& client) {
    for (int i = 0; i < calls; ++i) {
      test::EchoResponse response;
      failures +=
          !client
               .CallWithStub<test::Echo>("formica.test.Echo", {},
                                         [&](test::Echo::Stub& stub, grpc::ClientContext* ctx) {
                                           return stub.Echo(ctx, request, &response);
                                         })
               .ok();
    }
  };
  raw_calls(*counting_stub);  // warm up both sides of both
  raw_calls(*plain_stub);
  client_calls(counting_client);
  client_calls(*plain_client);
  // Per round: CPU of each, and the ratio counting / not; the median ratio
  // is reported (a burst of load elsewhere spoils a round, not the figure).
  std::vector<double> server_ratios, client_ratios;
  absl::Duration server_on, server_off, client_on, client_off;
  for (int r = 0; r < rounds; ++r) {
    bool counting_first = r % 2 == 0;
    absl::Duration on, off;
    for (int k = 0; k < 2; ++k) {
      bool counting = (k == 0) == counting_first;
      Subprocess& provider = counting ? counting_provider : plain_provider;
      absl::Duration t0 = ProcessCpuTimeOf(provider.pid());
      raw_calls(counting ? *counting_stub : *plain_stub);
      (counting ? on : off) = ProcessCpuTimeOf(provider.pid()) - t0;
    }
    server_on += on;
    server_off += off;
    server_ratios.push_back(absl::FDivDuration(on, off));
    for (int k = 0; k < 2; ++k) {
      bool counting = (k == 0) == counting_first;
      absl::Duration t0 = ProcessCpuTime();
      client_calls(counting ? counting_client : *plain_client);
      (counting ? on : off) = ProcessCpuTime() - t0;
    }
    client_on += on;
    client_off += off;
    client_ratios.push_back(absl::FDivDuration(on, off));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  const double n = static_cast<double>(rounds) * calls;
  auto per_call = [n](absl::Duration d) { return absl::ToDoubleMicroseconds(d) / n; };
  std::printf(
      "call counting: provider %.2f us CPU per call counting, %.2f without (median ratio %.3f); "
      "caller %.2f us counting, %.2f without (median ratio %.3f); %d x %d calls, failures %lld\n",
      per_call(server_on), per_call(server_off), median(server_ratios), per_call(client_on),
      per_call(client_off), median(client_ratios), rounds, calls, static_cast<long long>(failures));
  report.Set("counting_provider_cpu_us", per_call(server_on));
  report.Set("plain_provider_cpu_us", per_call(server_off));
  report.Set("counting_provider_cpu_ratio", median(server_ratios));
  report.Set("counting_caller_cpu_us", per_call(client_on));
  report.Set("plain_caller_cpu_us", per_call(client_off));
  report.Set("counting_caller_cpu_ratio", median(client_ratios));
  report.AddErrors("counting_failed_calls", failures);
  report.Headline("rpc call counting, provider CPU per call (us)", "counting_provider_cpu_us",
                  "plain_provider_cpu_us", "counting_provider_cpu_ratio",
                  "<= 1.02x of not counting");
  report.Headline("rpc call counting, caller CPU per call (us)", "counting_caller_cpu_us",
                  "plain_caller_cpu_us", "counting_caller_cpu_ratio", "<= 1.02x of not counting");
}

// What mutual TLS costs a call: raw gRPC stubs to two plaintext providers
// and to two TLS providers (dsrd, providers and this caller all with
// certificates), in alternating rounds so both see the same machine; then
// rpc::Client over TLS. Run last: it switches this process to TLS.
void MeasureTlsCost(absl::Duration duration, const formica::testing::TempDir& dir,
                    const std::vector<std::unique_ptr<Subprocess>>& plain_providers,
                    BenchReport& report) {
  const std::string certs = dir.File("certs");
  auto made = Subprocess::Start({std::string(FORMICA_SOURCE_DIR) + "/deploy/certs.sh", "--dir",
                                 certs, "dsrd", "echo", "bench"},
                                dir.File("certs.log"));
  if (!made.ok() || (*made)->Wait(absl::Seconds(60)) != 0) {
    std::fprintf(stderr, "bench_rpc: deploy/certs.sh failed\n");
    report.AddMissing("tls_certificates", 1);
    return;
  }
  auto files = [&](const std::string& name) {
    return TlsOptions{certs + "/ca.pem", certs + "/" + name + ".pem", certs + "/" + name + ".key"};
  };
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd-tls");
  TlsOptions d = files("dsrd");
  dsrd_options.config = {{"push.warmup", "0s"},
                         {"tls.ca_file", d.ca_file},
                         {"tls.cert_file", d.cert_file},
                         {"tls.key_file", d.key_file}};
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) {
    std::fprintf(stderr, "bench_rpc: TLS dsrd: %s\n", dsrd.status().ToString().c_str());
    report.AddMissing("tls_dsrd", 1);
    return;
  }
  TlsOptions e = files("echo");
  std::vector<std::unique_ptr<Subprocess>> providers;
  for (int i = 0; i < 2; ++i) {
    auto p = Subprocess::Start(
        {"/usr/bin/env", "FORMICA_TLS_CA=" + e.ca_file, "FORMICA_TLS_CERT=" + e.cert_file,
         "FORMICA_TLS_KEY=" + e.key_file, formica::testing::BinaryPath("tests/rpc/echo_server"),
         "--registry", (*dsrd)->address(), "--echo-context", "no"},
        dir.File(absl::StrCat("echo-tls", i, ".log")));
    if (!p.ok() || !(*p)->WaitForOutput("serving on", absl::Seconds(20))) {
      std::fprintf(stderr, "bench_rpc: TLS echo provider did not start\n");
      report.AddMissing("tls_providers", 1);
      return;
    }
    providers.push_back(std::move(*p));
  }
  if (absl::Status st = UseTls(files("bench")); !st.ok()) {
    std::fprintf(stderr, "bench_rpc: %s\n", st.ToString().c_str());
    report.AddMissing("tls_caller", 1);
    return;
  }
  // Raw stubs: a channel to each provider, calls round-robin.
  auto stubs = [](const std::vector<std::unique_ptr<Subprocess>>& to,
                  const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
    std::vector<std::unique_ptr<test::Echo::Stub>> out;
    for (auto& p : to) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      out.push_back(test::Echo::NewStub(grpc::CreateCustomChannel(Address(*p), credentials, args)));
    }
    return out;
  };
  auto plain_stubs = stubs(plain_providers, grpc::InsecureChannelCredentials());
  auto tls_stubs = stubs(providers, formica::ChannelCredentials());
  test::EchoRequest request;
  request.set_message(std::string(100, 'x'));
  std::atomic<uint64_t> next{0};
  auto raw = [&](std::vector<std::unique_ptr<test::Echo::Stub>>& to) {
    return [&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      test::EchoResponse response;
      return to[next.fetch_add(1, std::memory_order_relaxed) % to.size()]
          ->Echo(&ctx, request, &response)
          .ok();
    };
  };
  constexpr int kRounds = 5;
  for (int concurrency : {1, 64}) {
    std::string suffix = absl::StrCat("c", concurrency, "_100b");
    Drive(concurrency, absl::Milliseconds(300), raw(plain_stubs));  // connect, warm up
    Drive(concurrency, absl::Milliseconds(300), raw(tls_stubs));
    std::vector<double> qps_ratios, p99_ratios;
    Result plain_sum, tls_sum;
    for (int r = 0; r < kRounds; ++r) {
      Result plain = Drive(concurrency, duration / kRounds, raw(plain_stubs));
      Result tls = Drive(concurrency, duration / kRounds, raw(tls_stubs));
      qps_ratios.push_back(Ratio(tls.qps, plain.qps));
      p99_ratios.push_back(Ratio(tls.p99_ms, plain.p99_ms));
      plain_sum.qps += plain.qps / kRounds;
      plain_sum.p99_ms += plain.p99_ms / kRounds;
      plain_sum.failures += plain.failures;
      tls_sum.qps += tls.qps / kRounds;
      tls_sum.p99_ms += tls.p99_ms / kRounds;
      tls_sum.failures += tls.failures;
    }
    std::sort(qps_ratios.begin(), qps_ratios.end());
    std::sort(p99_ratios.begin(), p99_ratios.end());
    std::printf(
        "%-10s raw gRPC plaintext %8.0f qps p99 %.3f ms | over mutual TLS %8.0f qps p99 "
        "%.3f ms (median of %d rounds: qps x%.3f, p99 x%.3f; failures %lld/%lld)\n",
        suffix.c_str(), plain_sum.qps, plain_sum.p99_ms, tls_sum.qps, tls_sum.p99_ms, kRounds,
        qps_ratios[kRounds / 2], p99_ratios[kRounds / 2],
        static_cast<long long>(plain_sum.failures), static_cast<long long>(tls_sum.failures));
    report.Set("tls_raw_qps_" + suffix, std::round(tls_sum.qps));
    report.Set("plain_raw_qps_" + suffix, std::round(plain_sum.qps));
    report.Set("tls_raw_p99_ms_" + suffix, tls_sum.p99_ms);
    report.Set("plain_raw_p99_ms_" + suffix, plain_sum.p99_ms);
    report.Set("tls_qps_ratio_" + suffix, qps_ratios[kRounds / 2]);
    report.Set("tls_p99_ratio_" + suffix, p99_ratios[kRounds / 2]);
    report.AddErrors("tls_failed_calls_" + suffix, tls_sum.failures + plain_sum.failures);
    if (tls_sum.qps <= 0) report.AddMissing("tls_calls_" + suffix, 1);
  }
  {
    // rpc::Client over TLS, end to end (the plaintext figure is the main
    // comparison's, measured earlier in the run).
    registry::ClientOptions registry_options;
    registry_options.registries = {(*dsrd)->address()};
    auto registry = *registry::Client::Create(registry_options);
    rpc::ClientOptions rpc_options;
    rpc_options.app_name = "bench-tls";
    auto client = *rpc::Client::Create(rpc_options, registry.get());
    auto call = [&] {
      test::EchoResponse response;
      return client
          ->CallWithStub<test::Echo>("formica.test.Echo", {},
                                     [&](test::Echo::Stub& stub, grpc::ClientContext* ctx) {
                                       return stub.Echo(ctx, request, &response);
                                     })
          .ok();
    };
    Drive(64, absl::Milliseconds(300), call);
    Result tls = Drive(64, duration, call);
    std::printf("c64_100b   formica over mutual TLS %8.0f qps p99 %.3f ms (failures %lld)\n",
                tls.qps, tls.p99_ms, static_cast<long long>(tls.failures));
    report.Set("tls_formica_qps_c64_100b", std::round(tls.qps));
    report.Set("tls_formica_p99_ms_c64_100b", tls.p99_ms);
    report.AddErrors("tls_formica_failed_calls", tls.failures);
  }
  report.Headline("gRPC QPS over mutual TLS vs plaintext, 64 callers, 100 B",
                  "tls_raw_qps_c64_100b", "plain_raw_qps_c64_100b", "tls_qps_ratio_c64_100b",
                  "reported (median of alternating rounds)");
  report.Headline("gRPC QPS over mutual TLS vs plaintext, 1 caller, 100 B", "tls_raw_qps_c1_100b",
                  "plain_raw_qps_c1_100b", "tls_qps_ratio_c1_100b",
                  "reported (median of alternating rounds)");
  report.SetSetup("tls",
                  "mutual TLS (P-256 certificates from deploy/certs.sh) on dsrd, two echo "
                  "providers and the caller, vs two plaintext providers: raw stubs in 5 "
                  "alternating rounds per concurrency; rpc::Client over TLS at 64 callers");
  tls_stubs.clear();
  for (auto& p : providers) p->Terminate();
  (*dsrd)->Stop();
  UsePlaintext();
}

int Run(int argc, char** argv) {
  bool quick = false;
  std::string profile;  // "raw" or "formica": fixed calls on one side, no report
  int profile_calls = 2000;
  int profile_payload = 100;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--profile") == 0 && i + 1 < argc) {
      profile = argv[++i];
    } else if (std::strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
      profile_calls = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--payload") == 0 && i + 1 < argc) {
      profile_payload = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: bench_rpc [--quick] | --profile raw|formica [--calls N] "
                   "[--payload BYTES]\n");
      return 2;
    }
  }
  if (!profile.empty() && profile != "raw" && profile != "formica") {
    std::fprintf(stderr, "bench_rpc: --profile takes raw or formica, not '%s'\n", profile.c_str());
    return 2;
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
        // Replies carry the same fields whoever calls: the caller's context
        // is not echoed back (only rpc::Client sends one).
        {formica::testing::BinaryPath("tests/rpc/echo_server"), "--registry", (*dsrd)->address(),
         "--echo-context", "no"},
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

  // The raw side reaches the same two providers: a channel (own TCP
  // connection) to each, calls taken round-robin.
  std::vector<std::unique_ptr<test::Echo::Stub>> raw_stubs;
  for (auto& p : providers) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    raw_stubs.push_back(test::Echo::NewStub(
        grpc::CreateCustomChannel(Address(*p), grpc::InsecureChannelCredentials(), args)));
  }
  std::atomic<uint64_t> raw_next{0};
  auto raw_echo = [&](const test::EchoRequest& request) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    test::EchoResponse response;
    auto& stub = raw_stubs[raw_next.fetch_add(1, std::memory_order_relaxed) % raw_stubs.size()];
    grpc::Status status = stub->Echo(&ctx, request, &response);
    return status.ok() ? absl::OkStatus() : FromGrpcStatus(status);
  };
  auto formica_echo = [&](const test::EchoRequest& request) {
    test::EchoResponse response;
    // Each provider's stub is made once, as raw gRPC's are.
    return client->CallWithStub<test::Echo>("formica.test.Echo", {},
                                            [&](test::Echo::Stub& stub, grpc::ClientContext* ctx) {
                                              return stub.Echo(ctx, request, &response);
                                            });
  };
  if (!profile.empty()) {
    test::EchoRequest request;
    request.set_message(std::string(profile_payload, 'x'));
    int failures = 0;
    auto call = [&] {
      absl::Status status = profile == "raw" ? raw_echo(request) : formica_echo(request);
      if (!status.ok() && ++failures <= 3) {
        std::fprintf(stderr, "bench_rpc: call failed: %s\n", status.ToString().c_str());
      }
    };
    for (int i = 0; i < 200; ++i) call();  // warm up, connect
    CALLGRIND_ZERO_STATS;
    absl::Time start = absl::Now();
    absl::Duration cpu_start = ProcessCpuTime();
    for (int i = 0; i < profile_calls; ++i) call();
    absl::Duration cpu = ProcessCpuTime() - cpu_start;
    absl::Duration took = absl::Now() - start;
    CALLGRIND_DUMP_STATS_AT("profiled calls");
    std::printf(
        "%s: %d calls of %d B, %d failed, %.1f us per call, %.1f us of CPU (user + "
        "system, every thread of this process) per call\n",
        profile.c_str(), profile_calls, profile_payload, failures,
        absl::ToDoubleMicroseconds(took) / std::max(1, profile_calls),
        absl::ToDoubleMicroseconds(cpu) / std::max(1, profile_calls));
    client.reset();
    registry.reset();
    for (auto& p : providers) p->Terminate();
    (*dsrd)->Stop();
    return failures == 0 ? 0 : 1;
  }

  BenchReport report;
  double qps_ratio_min = 1e9;
  double p99_ratio_max = 0;
  for (int payload : {100, 4096}) {
    test::EchoRequest request;
    request.set_message(std::string(payload, 'x'));
    for (int concurrency : {1, 64}) {
      std::string suffix = absl::StrCat("c", concurrency, "_", payload == 100 ? "100b" : "4kib");
      auto raw_call = [&] { return raw_echo(request).ok(); };
      auto formica_call = [&] { return formica_echo(request).ok(); };
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
      report.Set("raw_failures_" + suffix, static_cast<double>(raw.failures));
      report.Set("formica_failures_" + suffix, static_cast<double>(formica.failures));
      report.AddErrors("raw_failed_calls_" + suffix, raw.failures);
      report.AddErrors("formica_failed_calls_" + suffix, formica.failures);
      if (raw.qps <= 0) report.AddMissing("raw_calls_" + suffix, 1);
      if (formica.qps <= 0) report.AddMissing("formica_calls_" + suffix, 1);
      double qps_ratio = Ratio(formica.qps, raw.qps);
      double p99_ratio = Ratio(formica.p99_ms, raw.p99_ms);
      report.Set("qps_ratio_" + suffix, qps_ratio);
      report.Set("p99_ratio_" + suffix, p99_ratio);
      qps_ratio_min = std::min(qps_ratio_min, qps_ratio);
      p99_ratio_max = std::max(p99_ratio_max, p99_ratio);
    }
  }
  {
    // Two fresh providers, one counting and one not, for the cost of
    // counting (published only now, so the comparison above had the same
    // two providers).
    std::vector<std::unique_ptr<Subprocess>> pair;
    for (const char* count : {"yes", "no"}) {
      auto p =
          Subprocess::Start({formica::testing::BinaryPath("tests/rpc/echo_server"), "--registry",
                             (*dsrd)->address(), "--echo-context", "no", "--count-calls", count},
                            dir.File(absl::StrCat("echo-count-", count, ".log")));
      if (!p.ok() || !(*p)->WaitForOutput("serving on", absl::Seconds(20))) {
        std::fprintf(stderr, "bench_rpc: echo provider did not start\n");
        return 1;
      }
      pair.push_back(std::move(*p));
    }
    MeasureCountingCost(quick, *client, *registry, *pair[0], *pair[1], report);
    for (auto& p : pair) p->Terminate();
  }
  MeasureTlsCost(duration, dir, providers, report);
  report.Set("qps_ratio_min", qps_ratio_min);
  report.Set("p99_ratio_max", p99_ratio_max);
  report.Headline("rpc QPS, 1 caller, 100 B", "formica_qps_c1_100b", "raw_qps_c1_100b",
                  "qps_ratio_c1_100b", ">= 0.95 of raw gRPC");
  report.Headline("rpc QPS, 64 callers, 100 B", "formica_qps_c64_100b", "raw_qps_c64_100b",
                  "qps_ratio_c64_100b", ">= 0.95 of raw gRPC");
  report.Headline("rpc QPS, 1 caller, 4 KiB", "formica_qps_c1_4kib", "raw_qps_c1_4kib",
                  "qps_ratio_c1_4kib", ">= 0.95 of raw gRPC");
  report.Headline("rpc p99 ms, 64 callers, 4 KiB", "formica_p99_ms_c64_4kib", "raw_p99_ms_c64_4kib",
                  "p99_ratio_c64_4kib", "<= 1.10x raw gRPC");
  report.SetMachine(dir.path());
  report.SetSetup("seconds_per_setup", absl::ToDoubleSeconds(duration));
  report.SetSetup("raw",
                  "generated stubs, one channel to each of the two echo providers, "
                  "calls round-robin");
  report.SetSetup("formica",
                  "rpc::Client::CallWithStub (a stub per provider, made once), the same two echo "
                  "providers via dsrd, weighted_random");
  report.SetSetup("peer_version", "gRPC " + grpc::Version() + " (the library both sides link)");
  report.SetSetup("providers",
                  "two echo_server processes (rpc::Server, handler inside rpc::Serve), replying "
                  "with the same fields to both sides (the caller's context is not echoed)");
  report.SetSetup("fsync", "neither side writes to disk");
  report.SetSetup("network", "loopback; providers, dsrd and the caller share the machine");
  client.reset();
  registry.reset();
  for (auto& p : providers) p->Terminate();
  (*dsrd)->Stop();
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
