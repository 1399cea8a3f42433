// The fund end to end (examples/fund, docs/fund.md), everything on this
// machine: purchases through the gateway (each a business activity across
// account and fund with its confirmed message, 16 at once), their p99 while
// a clearing runs, and the clearing of 1M and 10M accounts on 2 workers.
// Aims: 5,000 purchases/s (the seed's peak); 10M accounts cleared,
// reconciled and exported in under 60 s on 2 cores (the seed's cluster took
// under 1,000 s; Ant's claim is 100M in 30 min, 180 s per 10M).
//   bench_fund [--quick]     --quick: shorter runs, no 10M clearing
// The last line is one JSON object (bench/support/bench_report.h).
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "driver.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"
#include "process.h"
#include "trade_file.h"

namespace {

using formica::testing::BinaryPath;
using formica::testing::Subprocess;

constexpr int64_t kOnlineUsers = 20000;
constexpr int kConcurrency = 16;

std::unique_ptr<Subprocess> Start(const std::vector<std::string>& argv, const std::string& log,
                                  const std::string& ready) {
  auto p = Subprocess::Start(argv, log);
  if (!p.ok() || !(*p)->WaitForOutput(ready, absl::Seconds(120))) {
    std::fprintf(stderr, "could not start %s: %s\n", argv[0].c_str(),
                 p.ok() ? (*p)->Output().c_str() : p.status().ToString().c_str());
    return nullptr;
  }
  return std::move(*p);
}

// Day 2 of a population of `users`: the day-1 result file as the opening
// and `trades` purchases and redemptions (none beyond what is held).
bool MakeDay(const std::string& dir, int64_t users, int64_t trades) {
  std::mt19937_64 rng(users);
  std::vector<int64_t> held(users + 1, 0);
  std::string records;
  records.reserve(users * 40);
  int64_t total = 0;
  for (int64_t u = 1; u <= users; ++u) {
    held[u] = static_cast<int64_t>(rng() % 10000000);
    total += held[u];
    absl::StrAppend(&records, "D,", u, ",0,0,0,0,", held[u], "\n");
  }
  if (!fund::WriteFileAtomically(dir + "/opening.csv",
                                 fund::ClearedFileText(1, records, users, 0, 0, total))
           .ok()) {
    return false;
  }
  records.clear();
  records.shrink_to_fit();
  fund::TradeFile day;
  day.day = 2;
  day.trades.reserve(trades);
  for (int64_t i = 0; i < trades; ++i) {
    int64_t u = 1 + static_cast<int64_t>(rng() % users);
    bool purchase = held[u] == 0 || rng() % 2 == 0;
    int64_t amount = purchase ? 1 + static_cast<int64_t>(rng() % 1000000)
                              : 1 + static_cast<int64_t>(rng() % held[u]);
    held[u] += purchase ? amount : -amount;
    day.trades.push_back({absl::StrCat("t", i), u, purchase, amount});
  }
  return fund::WriteTradeFile(dir + "/trades.csv", day).ok();
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  formica::bench::BenchReport report;
  formica::testing::TempDir dir;
  report.SetMachine(dir.path());
  report.SetSetup("concurrency", kConcurrency);
  report.SetSetup("online_users", static_cast<double>(kOnlineUsers));
  report.SetSetup("workers", 2);

  formica::testing::DsrdProcess::Options dso;
  dso.data_dir = dir.File("dsrd");
  dso.config = {{"push.warmup", "0s"}, {"session.lease", "3s"}};
  auto dsrd = formica::testing::DsrdProcess::Start(dso);
  if (!dsrd.ok()) {
    report.Fail(dsrd.status().ToString());
    return report.Finish();
  }
  const std::string reg = (*dsrd)->address();
  auto dtsd = Start({BinaryPath("dts/dtsd"), "--listen",
                     absl::StrCat("127.0.0.1:", formica::testing::PickFreePort()), "--data-dir",
                     dir.File("dtsd"), "--registry", reg},
                    dir.File("dtsd.log"), "dtsd ready");
  auto dmsd = Start({BinaryPath("dms/dmsd"), "--listen",
                     absl::StrCat("127.0.0.1:", formica::testing::PickFreePort()), "--data-dir",
                     dir.File("dmsd"), "--registry", reg, "--set", "topics.create=fund.orders:8"},
                    dir.File("dmsd.log"), "dmsd ready");
  auto fund =
      Start({BinaryPath("examples/fund/fund-server"), "--registry", reg, "--data", dir.path(),
             "--users", std::to_string(kOnlineUsers), "--initial", "100000000000"},
            dir.File("fund.log"), "fund-server ready");
  auto w1 =
      Start({BinaryPath("examples/fund/fund-clear"), "worker", "--registry", reg, "--nice", "19"},
            dir.File("w1.log"), "serving on");
  auto w2 =
      Start({BinaryPath("examples/fund/fund-clear"), "worker", "--registry", reg, "--nice", "19"},
            dir.File("w2.log"), "serving on");
  if (!dtsd || !dmsd || !fund || !w1 || !w2) {
    report.Fail("a process did not start");
    return report.Finish();
  }
  formica::registry::ClientOptions ro;
  ro.registries = {reg};
  ro.client_name = "bench_fund";
  auto registry = formica::registry::Client::Create(ro);
  formica::rpc::ClientOptions co;
  co.app_name = "bench_fund";
  co.policies[fund::v1::ClearingWorker::service_full_name()] = "round_robin";
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  if (!registry.ok() || !rpc.ok()) {
    report.Fail("no client");
    return report.Finish();
  }
  auto before = fund::ReadTotals(rpc->get());
  if (!before.ok()) {
    report.Fail(before.status().ToString());
    return report.Finish();
  }
  fund::OrderDriver driver(rpc->get());
  fund::DriverOptions o;
  o.users = kOnlineUsers;
  o.concurrency = kConcurrency;
  o.redeem_ratio = 0;  // purchases
  o.repeat_ratio = 0;
  o.max_amount = 100000;
  o.prefix = "warm";
  o.duration = absl::Seconds(2);
  fund::DriverReport warm = driver.Run(o);
  // Idle: purchases alone.
  o.prefix = "idle";
  o.duration = absl::Seconds(quick ? 5 : 20);
  std::fprintf(stderr, "purchases, %d at once, %.0fs\n", kConcurrency,
               absl::ToDoubleSeconds(o.duration));
  fund::DriverReport idle = driver.Run(o);
  double per_s = idle.orders / std::max(idle.seconds, 1e-9);
  report.Set("purchases_per_s", per_s);
  report.Set("purchase_p50_ms", fund::Percentile(idle.latency_ms, 50));
  report.Set("purchase_p99_ms", fund::Percentile(idle.latency_ms, 99));
  std::fprintf(stderr, "  %.0f purchases/s, p50 %.1f ms, p99 %.1f ms\n", per_s,
               fund::Percentile(idle.latency_ms, 50), fund::Percentile(idle.latency_ms, 99));

  bool reconciled = true;
  std::map<std::string, double> measured;
  fund::DriverReport during;
  auto clear = [&](int64_t users, int64_t trades, const std::string& key, bool with_load) {
    std::string d = dir.File(key);
    std::fprintf(stderr, "clearing %lld accounts, %lld trades, on 2 workers%s\n",
                 static_cast<long long>(users), static_cast<long long>(trades),
                 with_load ? ", purchases running" : "");
    if (::mkdir(d.c_str(), 0755) != 0 || !MakeDay(d, users, trades)) {
      report.Fail("cannot write the clearing input in " + d);
      reconciled = false;
      return;
    }
    // The master as its own process, at the workers' lower priority.
    auto master = Subprocess::Start(
        {BinaryPath("examples/fund/fund-clear"), "run", "--registry", reg, "--trades",
         d + "/trades.csv", "--opening", d + "/opening.csv", "--work", d + "/work", "--out",
         d + "/out", "--parallel", "4", "--nice", "19", "--quiet"},
        d + "/master.log");
    if (!master.ok()) {
      report.Fail(master.status().ToString());
      reconciled = false;
      return;
    }
    std::atomic<bool> done{false};
    std::thread load;
    if (with_load) {
      load = std::thread([&] {
        fund::DriverOptions lo = o;
        lo.prefix = "during";
        lo.duration = absl::Hours(1);
        // Runs until the clearing ends (checked each second).
        for (int round = 0; !done.load(); ++round) {
          lo.duration = absl::Seconds(1);
          lo.prefix = absl::StrCat(key, "-", round);
          fund::DriverReport part = driver.Run(lo);
          during.orders += part.orders;
          during.purchased += part.purchased;
          during.redeemed += part.redeemed;
          during.unanswered += part.unanswered;
          during.latency_ms.insert(during.latency_ms.end(), part.latency_ms.begin(),
                                   part.latency_ms.end());
        }
      });
    }
    int code = (*master)->Wait(absl::Minutes(30));
    done = true;
    if (load.joinable()) load.join();
    std::string line = (*master)->LineAfter("day 2 cleared in ");
    double seconds = std::atof(line.c_str());
    if (code != 0 || line.empty()) {
      report.Fail(
          absl::StrCat(key, ": fund-clear run exited with ", code, ": ", (*master)->Output()));
      reconciled = false;
      return;
    }
    report.Set(key, seconds);
    measured[key] = seconds;
    std::fprintf(stderr, "  %s\n", line.c_str());
  };
  clear(1000000, 200000, "clearing_1m_s", true);
  report.Set("purchase_p99_during_clearing_ms", fund::Percentile(during.latency_ms, 99));
  report.Set("purchases_during_clearing", static_cast<double>(during.orders));
  report.Set("p99_during_clearing_over_idle",
             formica::bench::Ratio(fund::Percentile(during.latency_ms, 99),
                                   fund::Percentile(idle.latency_ms, 99)));
  if (during.latency_ms.empty()) report.AddMissing("purchases_during_clearing", 1);
  if (!quick) clear(10000000, 2000000, "clearing_10m_s", false);

  // Money: balances + shares unchanged; shares moved by what was confirmed.
  int64_t net = warm.purchased + idle.purchased + during.purchased - warm.redeemed - idle.redeemed -
                during.redeemed;
  bool conserved = false;
  for (int i = 0; i < 100 && !conserved; ++i) {
    auto after = fund::ReadTotals(rpc->get());
    conserved = after.ok() &&
                after->balances.available() + after->shares.available() ==
                    before->balances.available() + before->shares.available() &&
                after->shares.available() - before->shares.available() == net &&
                after->shares.frozen() + after->balances.frozen() == 0;
    if (!conserved) absl::SleepFor(absl::Milliseconds(200));
  }
  report.SetBool("money_conserved", conserved);
  report.SetBool("reconciled", reconciled);
  if (!conserved) report.Fail("money or shares do not add up");
  report.AddErrors("orders_unanswered", idle.unanswered + during.unanswered);
  report.Set("seed_peak_purchases_per_s", 5000);
  report.Set("purchases_vs_seed_peak", formica::bench::Ratio(per_s, 5000));
  report.Set("ant_10m_s", 180);  // 100M accounts in 30 min, per 10M
  report.Headline("fund purchases/s end to end (16 at once)", "purchases_per_s",
                  "seed_peak_purchases_per_s", "purchases_vs_seed_peak", ">= 1 (5,000/s)");
  report.Headline("purchase p99 during clearing / idle (ms)", "purchase_p99_during_clearing_ms",
                  "purchase_p99_ms", "p99_during_clearing_over_idle", "< 2");
  report.Set("ant_10m_over_formica", formica::bench::Ratio(180, measured["clearing_10m_s"]));
  report.Headline("clearing 10M accounts, 2 workers (s)", "clearing_10m_s", "ant_10m_s",
                  "ant_10m_over_formica", ">= 3 (under 60 s; Ant: 180 s per 10M)");
  return report.Finish();
}
