// Business activities per second through dtsd: each activity begins, runs
// two try steps (a debit in bank A and a credit in bank B, each one SQLite
// write in the participant's own database, enlisted durably with dtsd),
// and commits (a durable decision); dtsd then confirms both. Measured at
// concurrency 1 and 64, beside the machine's raw fdatasync rate on the same
// disk: the physical limit dtsd's group commit works against.
//   ./formica bench dts [--quick] [--fast-sync] [--large-actions]
// --fast-sync runs the participants' SQLite with synchronous=NORMAL (dtsd
// still syncs every enlist and decision).
// --large-actions measures instead activities of 16 actions of 1 MiB each,
// enlisted one after another and committed: the latency of each enlist
// (the 16th should cost what the 1st does), the bytes each writes to the
// activity store, and dtsd's resident memory.
//
// There is no peer to run here. Beside the activities, the run measures
// the machine: its raw fdatasync rate on the data directory's disk and raw
// gRPC round trips per second (a generated stub, 64 callers, to a
// participant answering at once; successful calls only). An activity makes
// 5 calls (two tries, the commit, two confirms; the commits and confirms
// of concurrent activities share batches) and 5 syncs (two tries, the
// decision, two confirms; shared by group commits); with
// --begin-at-coordinator, 8 calls (a begin and an enlist per try more) and
// 7 syncs. Committed per second is reported over the run and over the run
// plus the phase-two drain that follows it. Any failed activity or probe
// call makes the run not ok (exit 1).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/test/account.grpc.pb.h"
#include "process.h"

namespace formica::bench {
namespace {

using formica::testing::Subprocess;

// Appends 512 bytes and fdatasyncs, for `d`, in `dir`.
double FdatasyncPerSecond(const std::string& dir, absl::Duration d) {
  std::string path = dir + "/fdatasync.probe";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 0;
  char block[512];
  std::memset(block, 'x', sizeof(block));
  int64_t n = 0;
  absl::Time start = absl::Now();
  absl::Time end = start + d;
  while (absl::Now() < end) {
    if (::write(fd, block, sizeof(block)) != sizeof(block) || ::fdatasync(fd) != 0) break;
    ++n;
  }
  double secs = absl::ToDoubleSeconds(absl::Now() - start);
  ::close(fd);
  ::unlink(path.c_str());
  return n / secs;
}

struct Result {
  int64_t committed = 0;
  double per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  int64_t failures = 0;
};

absl::Status Move(rpc::Client& client, const std::string& bank, bool debit, int account) {
  test::Move m;
  m.set_account(std::to_string(account));
  m.set_amount(1);
  test::Moved out;
  return client.Call(bank, {},
                     [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                       auto stub = test::Account::NewStub(ch);
                       return debit ? stub->Debit(ctx, m, &out) : stub->Credit(ctx, m, &out);
                     });
}

Result Drive(rpc::Client& client, int concurrency, absl::Duration duration, int accounts,
             bool begin_at_coordinator) {
  std::vector<std::vector<double>> latencies(concurrency);
  std::atomic<int64_t> failures{0};
  std::atomic<int64_t> committed{0};
  absl::Time start = absl::Now();
  absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      uint64_t i = t;
      while (absl::Now() < end) {
        absl::Time t0 = absl::Now();
        dts::ActivityOptions options;
        options.name = "bench.Transfer";
        options.begin_at_coordinator = begin_at_coordinator;
        int from = static_cast<int>((i * 7919) % accounts);
        int to = static_cast<int>((i * 104729 + 1) % accounts);
        i += concurrency;
        absl::Status st = dts::RunActivity(&client, options, [&] {
          absl::Status s = Move(client, "bank.a", true, from);
          return s.ok() ? Move(client, "bank.b", false, to) : s;
        });
        if (st.ok()) {
          ++committed;
          latencies[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        } else {
          if (failures.fetch_add(1) < 3)
            std::fprintf(stderr, "failed: %s\n", st.ToString().c_str());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  Result r;
  r.committed = committed.load();
  r.per_s = committed.load() / secs;
  r.p50_ms = Percentile(all, 50);
  r.p99_ms = Percentile(all, 99);
  r.failures = failures.load();
  return r;
}

struct RoundTrips {
  double per_s = 0;  // successful calls per second
  int64_t failures = 0;
};

// Raw gRPC: a generated stub on one channel, calls answered at once (amount
// 0 is refused before any work: INVALID_ARGUMENT is the expected answer,
// anything else a failure).
RoundTrips RawRoundTripsPerSecond(const std::string& address, int concurrency,
                                  absl::Duration duration) {
  auto stub =
      test::Account::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> failures{0};
  absl::Time start = absl::Now();
  absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      test::Move m;
      test::Moved out;
      while (absl::Now() < end) {
        grpc::ClientContext ctx;
        grpc::Status st = stub->Credit(&ctx, m, &out);
        if (st.ok() || st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
          ++calls;
        } else if (failures.fetch_add(1) < 3) {
          std::fprintf(stderr, "raw gRPC probe: %s\n", st.error_message().c_str());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  RoundTrips r;
  r.per_s = calls.load() / absl::ToDoubleSeconds(absl::Now() - start);
  r.failures = failures.load();
  return r;
}

// A participant that confirms and cancels at once.
class Sink final : public dts::v1::Participant::Service {
  grpc::Status Confirm(grpc::ServerContext*, const dts::v1::PhaseTwoRequest*,
                       dts::v1::PhaseTwoResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Cancel(grpc::ServerContext*, const dts::v1::PhaseTwoRequest*,
                      dts::v1::PhaseTwoResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status PhaseTwoBatch(grpc::ServerContext*, const dts::v1::PhaseTwoBatchRequest* req,
                             dts::v1::PhaseTwoBatchResponse* resp) override {
    for (int i = 0; i < req->items_size(); ++i) resp->add_results();
    return grpc::Status::OK;
  }
};

// A field of /proc/<pid>/status in MB (VmRSS, VmHWM), 0 if unreadable.
double ProcessMegabytes(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atof(line.c_str() + field.size() + 1) / 1024;
  }
  return 0;
}

// --large-actions: see the top of this file.
int LargeActions(dts::v1::Coordinator::Stub& coordinator, pid_t dtsd, int rounds,
                 const std::string& data_dir) {
  constexpr int kActions = 16;
  constexpr size_t kPayload = 1 << 20;
  auto stats = [&] {
    grpc::ClientContext ctx;
    dts::v1::Stats s;
    coordinator.GetStats(&ctx, dts::v1::StatsRequest(), &s);
    return s;
  };
  BenchReport report;
  report.SetMachine(data_dir);
  std::vector<std::vector<double>> latency(kActions);
  std::vector<std::vector<double>> written(kActions);
  double rss_before = ProcessMegabytes(dtsd, "VmRSS");
  for (int round = 0; round < rounds; ++round) {
    grpc::ClientContext begin_ctx;
    dts::v1::BeginRequest begin;
    begin.set_name("bench.Large");
    begin.set_timeout_ms(120000);
    dts::v1::BeginResponse begun;
    if (grpc::Status st = coordinator.Begin(&begin_ctx, begin, &begun); !st.ok()) {
      report.Fail(absl::StrCat("Begin: ", st.error_message()));
      return report.Finish();
    }
    for (int i = 0; i < kActions; ++i) {
      dts::v1::EnlistRequest enlist;
      enlist.set_activity_id(begun.activity_id());
      enlist.set_participant("bench.sink");
      enlist.set_action(absl::StrCat("step-", i));
      enlist.set_payload(std::string(kPayload, static_cast<char>('a' + (round + i) % 26)));
      uint64_t bytes_before = stats().stored_bytes();
      grpc::ClientContext ctx;
      dts::v1::EnlistResponse out;
      absl::Time t0 = absl::Now();
      grpc::Status st = coordinator.Enlist(&ctx, enlist, &out);
      latency[i].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      written[i].push_back((stats().stored_bytes() - bytes_before) / 1048576.0);
      if (!st.ok()) {
        report.Fail(absl::StrCat("Enlist: ", st.error_message()));
        return report.Finish();
      }
    }
    grpc::ClientContext ctx;
    dts::v1::ActivityRef ref;
    ref.set_activity_id(begun.activity_id());
    dts::v1::DecisionResponse decided;
    if (grpc::Status st = coordinator.Commit(&ctx, ref, &decided); !st.ok()) {
      report.Fail(absl::StrCat("Commit: ", st.error_message()));
      return report.Finish();
    }
  }
  absl::Time t0 = absl::Now();
  while (stats().unfinished() > 0 && absl::Now() - t0 < absl::Seconds(60)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (uint64_t left = stats().unfinished(); left > 0) {
    report.AddMissing("activities_not_finished_in_60s", static_cast<int64_t>(left));
  }
  for (int i : {0, 1, 7, kActions - 1}) {
    std::printf("enlist #%-2d of %d MiB: p50 %.1f ms  max %.1f ms  %.2f MiB written\n", i + 1,
                static_cast<int>(kPayload >> 20), Percentile(latency[i], 50),
                Percentile(latency[i], 100), Percentile(written[i], 50));
  }
  double rss = ProcessMegabytes(dtsd, "VmRSS");
  double peak = ProcessMegabytes(dtsd, "VmHWM");
  std::printf("dtsd resident: %.0f MB before, %.0f MB after, peak %.0f MB\n", rss_before, rss,
              peak);
  report.Set("enlist_1_p50_ms", Percentile(latency[0], 50));
  report.Set("enlist_16_p50_ms", Percentile(latency[kActions - 1], 50));
  report.Set("enlist_1_mib_written", Percentile(written[0], 50));
  report.Set("enlist_16_mib_written", Percentile(written[kActions - 1], 50));
  report.Set("dtsd_rss_mb", rss);
  report.Set("dtsd_peak_rss_mb", peak);
  report.SetSetup("activities", rounds);
  report.SetSetup("activity", "begin, 16 enlists of 1 MiB one after another, commit");
  return report.Finish();
}

// Three replicated dtsd (docs/ha.md) on this machine, started from YAML
// configs with a `raft` section; returns them once one leads and serves,
// with its Coordinator stub in `*leader`. Empty when no leader came up.
std::vector<std::unique_ptr<Subprocess>> StartReplicatedGroup(
    const formica::testing::TempDir& dir, const std::string& registry,
    std::unique_ptr<dts::v1::Coordinator::Stub>* leader) {
  constexpr int kMembers = 3;
  std::vector<int> raft_ports, api_ports;
  std::vector<std::string> peers;
  for (int i = 0; i < kMembers; ++i) {
    raft_ports.push_back(formica::testing::PickFreePort());
    api_ports.push_back(formica::testing::PickFreePort());
    peers.push_back(absl::StrCat("\"", i + 1, "@127.0.0.1:", raft_ports[i], "\""));
  }
  std::vector<std::unique_ptr<Subprocess>> group;
  for (int i = 0; i < kMembers; ++i) {
    std::string config = dir.File(absl::StrCat("dtsd-r", i + 1, ".yaml"));
    std::ofstream(config) << "server:\n  listen: 127.0.0.1:" << api_ports[i]
                          << "\n  unpublish_grace: 0s\nstorage:\n  data_dir: "
                          << dir.File(absl::StrCat("dtsd-r", i + 1))
                          << "\nregistry:\n  addresses: [" << registry << "]\n"
                          << "raft:\n  node_id: " << i + 1 << "\n  peers: ["
                          << absl::StrJoin(peers, ", ")
                          << "]\n  data_dir: " << dir.File(absl::StrCat("raft-r", i + 1)) << "\n";
    auto p = Subprocess::Start(
        {formica::testing::BinaryPath("dts/dtsd"), "--config", config, "--log-level", "warn"},
        dir.File(absl::StrCat("dtsd-r", i + 1, ".log")));
    if (!p.ok() || !(*p)->WaitForOutput("dtsd ready", absl::Seconds(20))) return {};
    group.push_back(std::move(*p));
  }
  for (absl::Time until = absl::Now() + absl::Seconds(20); absl::Now() < until;) {
    for (int i = 0; i < kMembers; ++i) {
      auto stub = dts::v1::Coordinator::NewStub(grpc::CreateChannel(
          absl::StrCat("127.0.0.1:", api_ports[i]), grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      dts::v1::ListRequest req;
      req.set_limit(1);
      dts::v1::ListResponse resp;
      if (stub->List(&ctx, req, &resp).ok()) {  // followers refuse
        *leader = std::move(stub);
        return group;
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return {};
}

int Run(int argc, char** argv) {
  bool quick = false;
  bool fast_sync = false;
  bool large_actions = false;
  bool begin_at_coordinator = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--fast-sync") == 0) {
      fast_sync = true;
    } else if (std::strcmp(argv[i], "--large-actions") == 0) {
      large_actions = true;
    } else if (std::strcmp(argv[i], "--begin-at-coordinator") == 0) {
      begin_at_coordinator = true;
    } else {
      std::fprintf(stderr,
                   "usage: bench_dts [--quick] [--fast-sync] [--large-actions] "
                   "[--begin-at-coordinator]\n");
      return 2;
    }
  }
  const absl::Duration duration = quick ? absl::Seconds(2) : absl::Seconds(8);
  constexpr int kAccounts = 10000;
  formica::testing::TempDir dir;
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd");
  dsrd_options.config = {{"push.warmup", "0s"}};
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) {
    std::fprintf(stderr, "bench_dts: %s\n", dsrd.status().ToString().c_str());
    return 1;
  }
  int dtsd_port = formica::testing::PickFreePort();
  auto dtsd = Subprocess::Start(
      {formica::testing::BinaryPath("dts/dtsd"), "--listen", absl::StrCat("127.0.0.1:", dtsd_port),
       "--data-dir", dir.File("dtsd"), "--registry", (*dsrd)->address(), "--log-level", "warn"},
      dir.File("dtsd.log"));
  if (!dtsd.ok() || !(*dtsd)->WaitForOutput("dtsd ready", absl::Seconds(20))) {
    std::fprintf(stderr, "bench_dts: dtsd did not start\n");
    return 1;
  }
  if (large_actions) {
    registry::ClientOptions registry_options;
    registry_options.registries = {(*dsrd)->address()};
    auto registry = *registry::Client::Create(registry_options);
    Sink sink;
    rpc::ServerOptions server_options;
    server_options.unpublish_grace = absl::ZeroDuration();
    auto server = rpc::Server::Start(server_options, {{"bench.sink", &sink}}, registry.get());
    if (!server.ok()) {
      std::fprintf(stderr, "bench_dts: %s\n", server.status().ToString().c_str());
      return 1;
    }
    auto coordinator = dts::v1::Coordinator::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", dtsd_port), grpc::InsecureChannelCredentials()));
    int rc = LargeActions(*coordinator, (*dtsd)->pid(), quick ? 4 : 16, dir.path());
    (*server).reset();
    (*dtsd)->Terminate();
    (*dsrd)->Stop();
    return rc;
  }
  std::vector<std::unique_ptr<Subprocess>> banks;
  for (const char* name : {"bank.a", "bank.b"}) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tests/dts/account_server"),
                                     "--registry",
                                     (*dsrd)->address(),
                                     "--name",
                                     name,
                                     "--db",
                                     dir.File(absl::StrCat(name, ".db")),
                                     "--accounts",
                                     std::to_string(kAccounts),
                                     "--initial",
                                     "1000000000"};
    if (fast_sync) argv.push_back("--fast-sync");
    auto p = Subprocess::Start(argv, dir.File(absl::StrCat(name, ".log")));
    if (!p.ok() || !(*p)->WaitForOutput("serving on", absl::Seconds(30))) {
      std::fprintf(stderr, "bench_dts: %s did not start\n", name);
      return 1;
    }
    banks.push_back(std::move(*p));
  }
  registry::ClientOptions registry_options;
  registry_options.registries = {(*dsrd)->address()};
  auto registry = *registry::Client::Create(registry_options);
  rpc::ClientOptions rpc_options;
  rpc_options.app_name = "bench";
  auto client = *rpc::Client::Create(rpc_options, registry.get());
  auto coordinator = dts::v1::Coordinator::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", dtsd_port), grpc::InsecureChannelCredentials()));
  BenchReport report;
  auto stats = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    dts::v1::Stats s;
    grpc::Status st = coordinator->GetStats(&ctx, dts::v1::StatsRequest(), &s);
    if (!st.ok()) {
      report.AddErrors("dtsd_stats_failed", 1);
      std::fprintf(stderr, "dtsd GetStats: %s\n", st.error_message().c_str());
    }
    return s;
  };
  // Waits for phase two to finish; returns how long it took, or -1 when
  // activities were still unfinished after 60 s.
  auto drain = [&] {
    absl::Time t0 = absl::Now();
    while (stats().unfinished() > 0) {
      if (absl::Now() - t0 > absl::Seconds(60)) return -1.0;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return absl::ToDoubleMilliseconds(absl::Now() - t0);
  };

  RoundTrips raw = RawRoundTripsPerSecond(banks[0]->LineAfter("serving on "), 64, duration / 2);
  std::printf(
      "raw gRPC round trips, 64 callers: %.0f/s (%lld failed; an activity makes %d calls)\n",
      raw.per_s, static_cast<long long>(raw.failures), begin_at_coordinator ? 8 : 5);
  report.AddErrors("raw_grpc_calls_failed", raw.failures);
  double fsync_rate =
      FdatasyncPerSecond(dir.path(), quick ? absl::Milliseconds(500) : absl::Seconds(2));
  std::printf("raw fdatasync on this disk: %.0f/s\n", fsync_rate);
  if (fsync_rate <= 0) report.Fail("fdatasync probe could not write in " + dir.path());

  Drive(*client, 8, absl::Milliseconds(500), kAccounts,
        begin_at_coordinator);  // warm channels and caches
  drain();
  // Every process of the run, for CPU seconds per 1000 activities.
  const std::vector<std::pair<std::string, int>> processes = {
      {"dtsd", (*dtsd)->pid()},
      {"bank_a", banks[0]->pid()},
      {"bank_b", banks[1]->pid()},
      {"initiator", static_cast<int>(getpid())},
      {"dsrd", (*dsrd)->process()->pid()}};
  auto cpu_now = [&] {
    std::vector<double> v;
    for (const auto& [name, pid] : processes) v.push_back(ProcessCpuSeconds(pid));
    return v;
  };
  double single_c64 = 0;
  for (int concurrency : {1, 64}) {
    dts::v1::Stats before = stats();
    std::vector<double> cpu_before = cpu_now();
    absl::Time t0 = absl::Now();
    Result r = Drive(*client, concurrency, duration, kAccounts, begin_at_coordinator);
    double run_s = absl::ToDoubleSeconds(absl::Now() - t0);
    if (concurrency == 64) single_c64 = r.per_s;
    double drain_ms = drain();
    std::vector<double> cpu_after = cpu_now();
    dts::v1::Stats after = stats();
    double synced = after.synced_writes() - before.synced_writes();
    double syncs = after.wal_syncs() - before.wal_syncs();
    double committed = static_cast<double>(r.committed);
    double with_drain = drain_ms >= 0 ? committed / (run_s + drain_ms / 1000) : 0;
    std::printf(
        "c%-3d %7.0f committed/s (%.0f/s with the drain)  p50 %.2f ms  p99 %.2f ms  failures "
        "%lld  phase two drained in %.0f ms  %.0f synced writes in %.0f WAL syncs (%.1f per "
        "sync)\n",
        concurrency, r.per_s, with_drain, r.p50_ms, r.p99_ms, static_cast<long long>(r.failures),
        drain_ms, synced, syncs, syncs > 0 ? synced / syncs : 0);
    std::string c = absl::StrCat("c", concurrency);
    report.AddErrors("activities_failed_" + c, r.failures);
    if (drain_ms < 0) report.Fail(absl::StrCat("phase two did not drain within 60 s at ", c));
    if (committed <= 0) report.AddMissing("committed_activities_" + c, 1);
    report.Set("committed_per_s_" + c, std::round(r.per_s));
    report.Set("committed_per_s_" + c + "_with_drain", std::round(with_drain));
    report.Set("p50_ms_" + c, r.p50_ms);
    report.Set("p99_ms_" + c, r.p99_ms);
    report.Set("failures_" + c, static_cast<double>(r.failures));
    report.Set("writes_per_wal_sync_" + c, syncs > 0 ? synced / syncs : 0);
    report.Set("phase_two_drain_ms_" + c, drain_ms);
    report.Set("fsyncs_per_activity_" + c, committed > 0 ? syncs / committed : 0);
    if (committed > 0) {
      double total = 0;
      std::string line;
      for (size_t i = 0; i < processes.size(); ++i) {
        if (cpu_before[i] < 0 || cpu_after[i] < 0) {
          report.AddMissing("cpu_of_" + processes[i].first, 1);
          continue;
        }
        double per_1000 = (cpu_after[i] - cpu_before[i]) / committed * 1000;
        total += per_1000;
        report.Set("cpu_s_per_1000_" + c + "_" + processes[i].first, per_1000);
        absl::StrAppend(&line, " ", processes[i].first, " ",
                        absl::StrFormat("%.0f", per_1000 * 1000));
      }
      report.Set("cpu_s_per_1000_" + c, total);
      report.Set("cpu_us_per_activity_" + c, std::round(total * 1000));
      std::printf("c%-3d CPU microseconds per activity: %.0f in all;%s\n", concurrency,
                  total * 1000, line.c_str());
    }
  }
  // The same load on a replicated group of three, after the single dtsd
  // has left the registry: every enlist and decision committed on two of
  // three members (libraft's O_DSYNC log) before its answer.
  (*dtsd)->Terminate();
  std::unique_ptr<dts::v1::Coordinator::Stub> leader;
  std::vector<std::unique_ptr<Subprocess>> group =
      StartReplicatedGroup(dir, (*dsrd)->address(), &leader);
  if (group.empty()) {
    report.Fail("the replicated dtsd group did not elect a serving leader within 20 s");
  } else {
    coordinator = std::move(leader);
    Drive(*client, 8, absl::Milliseconds(500), kAccounts, begin_at_coordinator);  // warm up
    drain();
    dts::v1::Stats before = stats();
    Result r = Drive(*client, 64, duration, kAccounts, begin_at_coordinator);
    double drain_ms = drain();
    dts::v1::Stats after = stats();
    double entries = after.wal_syncs() - before.wal_syncs();
    double single = std::round(single_c64);
    std::printf(
        "replicated (3 members) c64 %7.0f committed/s  p50 %.2f ms  p99 %.2f ms  failures %lld  "
        "%.2f log entries per activity; %.2fx the single dtsd\n",
        r.per_s, r.p50_ms, r.p99_ms, static_cast<long long>(r.failures),
        r.committed > 0 ? entries / r.committed : 0, single > 0 ? r.per_s / single : 0);
    report.AddErrors("activities_failed_replicated", r.failures);
    if (drain_ms < 0) report.Fail("phase two did not drain within 60 s on the replicated group");
    if (r.committed <= 0) report.AddMissing("committed_activities_replicated", 1);
    report.Set("dts_replicated_committed_per_s", std::round(r.per_s));
    report.Set("dts_single_committed_per_s", single);
    report.Set("dts_replicated_vs_single", single > 0 ? r.per_s / single : 0);
    report.Set("replicated_p50_ms_c64", r.p50_ms);
    report.Set("replicated_p99_ms_c64", r.p99_ms);
    report.Set("replicated_log_entries_per_activity", r.committed > 0 ? entries / r.committed : 0);
    report.Headline("dts replicated (3 members) committed activities/s, 64 callers",
                    "dts_replicated_committed_per_s", "", "", ">= 0.5x the single dtsd");
  }
  for (auto& member : group) member->Terminate();
  report.Set("fdatasync_per_s", std::round(fsync_rate));
  report.Set("raw_grpc_round_trips_per_s_c64", std::round(raw.per_s));
  report.Headline("dts committed activities/s, 64 callers", "committed_per_s_c64", "", "",
                  "5,000/s (the fund's peak)");
  report.Headline("dts committed/s, 64 callers, with phase-two drain",
                  "committed_per_s_c64_with_drain", "", "", "5,000/s");
  report.Headline("dts CPU microseconds per activity, all processes, 64 callers",
                  "cpu_us_per_activity_c64", "", "", "<= 400 (5,000/s on 2 cores)");
  report.Headline("dts raw fdatasync/s on the data disk (machine)", "fdatasync_per_s", "", "", "");
  report.SetMachine(dir.path());
  report.SetSetup("seconds_per_setup", absl::ToDoubleSeconds(duration));
  report.SetSetup("activity",
                  begin_at_coordinator
                      ? "begun at dtsd, debit try in bank A and credit try in bank B each "
                        "enlisted with dtsd, commit; dtsd confirms both"
                      : "begun by the initiator (no round trip), debit try in bank A, credit try "
                        "in bank B (each reported back in its reply), commit with both actions; "
                        "dtsd confirms both");
  report.SetSetup("fsync", fast_sync ? "dtsd fsyncs enlists and decisions; participants "
                                       "SQLite WAL synchronous=NORMAL"
                                     : "dtsd fsyncs enlists and decisions; participants "
                                       "SQLite WAL synchronous=FULL");
  report.SetSetup("peer", "none: the machine's fdatasync rate and raw gRPC round trips instead");
  report.SetSetup("fsyncs_per_activity", "dtsd's WAL syncs per committed activity");
  report.SetSetup("cpu_s_per_1000",
                  "CPU seconds (user + system, from /proc) per 1000 activities of every process: "
                  "the sum, and each as cpu_s_per_1000_cN_<process>");
  report.SetSetup("processes", "dsrd, dtsd, 2 participants and the initiator on one machine");
  report.SetSetup("replicated",
                  "then 3 dtsd members (raft section, default election timeout and heartbeat) "
                  "on the same machine and disk, 64 callers; dts_replicated_vs_single compares "
                  "with committed_per_s_c64");
  client.reset();
  registry.reset();
  for (auto& b : banks) b->Terminate();
  (*dtsd)->Terminate();
  (*dsrd)->Stop();
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
