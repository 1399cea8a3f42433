#include "clearing_master.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <queue>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "distribution.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"
#include "totals.h"
#include "trade_file.h"

namespace fund {

namespace {

constexpr int kShards = 100;  // a user's shard: the last two digits of the id (formica::UserShard)

absl::Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

// Runs `call(shard)` for every shard, `parallel` at a time, with a progress
// line; a failed call is made again (up to 5 times). Returns the first error.
absl::Status ForEachShard(int parallel, bool progress, const std::string& label, int64_t accounts,
                          std::atomic<int64_t>* retries,
                          const std::function<absl::Status(int shard)>& call) {
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  absl::Mutex mu;
  absl::Status first;
  const absl::Time start = absl::Now();
  auto show = [&] {
    double secs = std::max(1e-3, absl::ToDoubleSeconds(absl::Now() - start));
    int d = done.load();
    double rate = accounts * (d / static_cast<double>(kShards)) / secs;
    double eta = d == 0 ? 0 : secs * (kShards - d) / d;
    std::fprintf(stderr, "\r  %s: shards %d/%d, %.0f accounts/s, ETA %.0fs   ", label.c_str(), d,
                 kShards, rate, eta);
  };
  std::vector<std::thread> threads;
  std::atomic<bool> finished{false};
  std::thread ticker;
  if (progress) {
    ticker = std::thread([&] {
      while (!finished.load()) {
        show();
        absl::SleepFor(absl::Milliseconds(500));
      }
    });
  }
  for (int t = 0; t < parallel; ++t) {
    threads.emplace_back([&] {
      for (int shard = next++; shard < kShards; shard = next++) {
        absl::Status st;
        for (int attempt = 0; attempt < 5; ++attempt) {
          st = call(shard);
          if (st.ok() || st.code() == absl::StatusCode::kInvalidArgument ||
              st.code() == absl::StatusCode::kFailedPrecondition) {
            break;
          }
          ++*retries;
          absl::SleepFor(absl::Milliseconds(200 * (attempt + 1)));
        }
        if (!st.ok()) {
          absl::MutexLock lock(&mu);
          if (first.ok()) first = st;
        }
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  finished = true;
  if (ticker.joinable()) ticker.join();
  if (progress) {
    show();
    std::fprintf(stderr, "\n");
  }
  return first;
}

}  // namespace

absl::StatusOr<ClearingReport> ClearingMaster::Run(const ClearingOptions& o) {
  const absl::Time start = absl::Now();
  ClearingReport report;
  auto trades = ReadTradeFile(o.trades_file);
  if (!trades.ok()) return trades.status();
  report.day = trades->day;
  report.trades = static_cast<int64_t>(trades->trades.size());
  ClearedFile opening;
  if (!o.opening_file.empty()) {
    auto read = ReadClearedFile(o.opening_file);
    if (!read.ok()) return read.status();
    if (read->day != trades->day - 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(o.opening_file, " closes day ", read->day, ", but the trade file is of day ",
                       trades->day, ": the opening must be the previous day's result"));
    }
    opening = *std::move(read);
  }
  // Split by shard: <work>/day-D/opening-S and trades-S.
  const std::string dir = absl::StrCat(o.work_dir, "/day-", report.day);
  if (absl::Status st = MakeDir(o.work_dir); !st.ok()) return st;
  if (absl::Status st = MakeDir(dir); !st.ok()) return st;
  if (absl::Status st = MakeDir(o.out_dir); !st.ok()) return st;
  std::vector<std::string> open_lines(kShards), trade_lines(kShards);
  for (const ClearedRecord& r : opening.users) {
    absl::StrAppend(&open_lines[r.user % kShards], r.user, ",", r.closing, "\n");
    report.opening += r.closing;
  }
  for (const TradeRecord& t : trades->trades) {
    absl::StrAppend(&trade_lines[t.user % kShards], t.user, ",", t.purchase ? "P" : "R", ",",
                    t.amount, "\n");
    (t.purchase ? report.purchased : report.redeemed) += t.amount;
  }
  for (int s = 0; s < kShards; ++s) {
    for (const auto& [name, text] :
         {std::pair{"opening", &open_lines[s]}, {"trades", &trade_lines[s]}}) {
      // Work files: made again by a rerun, so not synced (no fsync storm
      // next to the online services' commits).
      absl::Status st =
          WriteFileAtomically(absl::StrCat(dir, "/", name, "-", s), *text, /*sync=*/false);
      if (!st.ok()) return st;
    }
  }
  const int64_t accounts = static_cast<int64_t>(opening.users.size() + trades->trades.size());
  std::vector<v1::ShardTotals> before(kShards), after(kShards);
  auto task = [&](int shard) {
    v1::ShardTask t;
    t.set_day(report.day);
    t.set_shard(shard);
    t.set_trades_file(absl::StrCat(dir, "/trades-", shard));
    t.set_opening_file(absl::StrCat(dir, "/opening-", shard));
    t.set_work_dir(dir);
    t.set_check_online(o.check_online);
    return t;
  };
  auto call = [&](bool prepare, const v1::ShardTask& t, v1::ShardTotals* out) {
    formica::rpc::CallOptions c;
    c.timeout = o.call_timeout;
    c.idempotent = true;  // a worker keeps no state: another one may run it again
    return rpc_->CallWithStub<v1::ClearingWorker>(
        v1::ClearingWorker::service_full_name(), c,
        [&](v1::ClearingWorker::Stub& stub, grpc::ClientContext* ctx) {
          out->Clear();
          return prepare ? stub.Prepare(ctx, t, out) : stub.Distribute(ctx, t, out);
        });
  };
  std::atomic<int64_t> retries{0};
  absl::Status st =
      ForEachShard(o.parallel, o.progress, absl::StrCat("day ", report.day, " phase 1"), accounts,
                   &retries, [&](int s) { return call(true, task(s), &before[s]); });
  if (!st.ok()) return st;
  // Reconcile before anything is distributed.
  std::vector<std::string> differences;
  int64_t total_before = 0;
  std::vector<int64_t> weights, keys;
  for (int s = 0; s < kShards; ++s) {
    for (const std::string& d : before[s].differences()) differences.push_back(d);
    total_before += before[s].closing();
    weights.push_back(before[s].closing());
    keys.push_back(s);
  }
  if (total_before != report.opening + report.purchased - report.redeemed) {
    differences.push_back(absl::StrCat("fund: the shards total ", total_before,
                                       ", opening + trades give ",
                                       report.opening + report.purchased - report.redeemed));
  }
  if (o.check_online) {
    v1::Totals fund_totals;
    if (o.zones.empty()) {
      formica::rpc::CallOptions c;
      c.idempotent = true;
      c.timeout = o.call_timeout;
      v1::TotalsRequest all;
      absl::Status s = rpc_->CallWithStub<v1::Fund>(
          v1::Fund::service_full_name(), c, [&](v1::Fund::Stub& stub, grpc::ClientContext* ctx) {
            return stub.Shares(ctx, all, &fund_totals);
          });
      if (!s.ok()) return s;
    } else {
      absl::StatusOr<v1::FundWideTotals> wide = ReadFundWideTotals(rpc_);
      if (!wide.ok()) return wide.status();
      std::set<std::string> answered;
      for (const v1::ZoneTotals& z : wide->zones()) answered.insert(z.zone());
      if (answered != o.zones) {
        return absl::InvalidArgumentError(absl::StrCat(
            "zones ", absl::StrJoin(o.zones, ","), ": fund.v1.FundTotals answered for zones ",
            absl::StrJoin(answered, ","), "; name every zone the fund runs in"));
      }
      fund_totals = wide->shares();
    }
    int64_t held = fund_totals.available() + fund_totals.frozen();
    if (held != total_before) {
      differences.push_back(absl::StrCat("fund: the fund service holds ", held,
                                         " shares in all, the day's trades give ", total_before));
    }
  }
  const std::string out = absl::StrCat(o.out_dir, "/clearing-", report.day, ".csv");
  if (!differences.empty()) {
    std::sort(differences.begin(), differences.end());
    std::string path = absl::StrCat(o.out_dir, "/clearing-", report.day, ".differences");
    WriteFileAtomically(path, absl::StrJoin(differences, "\n") + "\n").IgnoreError();
    return absl::FailedPreconditionError(absl::StrCat(
        "day ", report.day, " does not reconcile: ", differences.size(), " differences, first: ",
        absl::StrJoin(differences.begin(),
                      differences.begin() + std::min<size_t>(5, differences.size()), "; "),
        " (all in ", path, "); nothing was written to ", out));
  }
  report.income =
      o.income >= 0
          ? o.income
          : static_cast<int64_t>(static_cast<__int128>(total_before) * o.yield_bp / 10000 / 365);
  std::vector<int64_t> shard_income = LargestRemainder(report.income, weights, keys);
  st = ForEachShard(o.parallel, o.progress, absl::StrCat("day ", report.day, " phase 2"), accounts,
                    &retries, [&](int s) {
                      v1::ShardTask t = task(s);
                      t.set_income(shard_income[s]);
                      return call(false, t, &after[s]);
                    });
  if (!st.ok()) return st;
  int64_t given = 0;
  for (int s = 0; s < kShards; ++s) {
    if (after[s].income() != shard_income[s] ||
        after[s].closing() != before[s].closing() + shard_income[s] ||
        after[s].users() != before[s].users()) {
      return absl::InternalError(absl::StrCat("shard ", s, " came back with income ",
                                              after[s].income(), " of ", shard_income[s],
                                              ", closing ", after[s].closing()));
    }
    given += after[s].income();
    report.users += after[s].users();
    report.closing += after[s].closing();
  }
  if (given != report.income || report.closing != total_before + report.income) {
    return absl::InternalError(absl::StrCat("income given ", given, " of ", report.income));
  }
  // Merge the shards' sorted results into one file sorted by user id.
  std::vector<std::ifstream> parts;
  using Head = std::pair<int64_t, int>;  // user id, part
  std::priority_queue<Head, std::vector<Head>, std::greater<Head>> heads;
  std::vector<std::string> line(kShards);
  auto advance = [&](int p) {
    if (std::getline(parts[p], line[p])) {
      int64_t user = 0;
      absl::SimpleAtoi(absl::string_view(line[p]).substr(2, line[p].find(',', 2) - 2), &user);
      heads.push({user, p});
    }
  };
  for (int s = 0; s < kShards; ++s) {
    parts.emplace_back(after[s].result_file());
    if (!parts.back())
      return absl::InternalError(absl::StrCat("cannot read ", after[s].result_file()));
  }
  for (int s = 0; s < kShards; ++s) advance(s);
  std::string text = absl::StrCat("H,FUNDCLEAR,1,", report.day, "\n");
  while (!heads.empty()) {
    int p = heads.top().second;
    heads.pop();
    absl::StrAppend(&text, line[p], "\n");
    advance(p);
  }
  absl::StrAppend(&text, "T,", report.users, ",", report.opening, ",", report.income, ",",
                  report.closing, ",", absl::StrFormat("%08x", Crc32(text)), "\n");
  auto existing = ReadWholeFile(out);
  report.unchanged = existing.ok() && *existing == text;
  if (!report.unchanged) {
    if (absl::Status w = WriteFileAtomically(out, text); !w.ok()) return w;
  }
  report.output = out;
  report.retries = retries.load();
  report.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return report;
}

}  // namespace fund
