#include "clearing_worker.h"

#include <algorithm>
#include <fstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "distribution.h"
#include "formica/common/grpc_status.h"
#include "formica/rpc/server.h"
#include "store.h"
#include "trade_file.h"

namespace fund {

namespace dds = formica::dds;

absl::StatusOr<std::vector<UserDay>> LoadShard(const std::string& opening_file,
                                               const std::string& trades_file) {
  absl::flat_hash_map<int64_t, UserDay> days;
  auto each_line = [](const std::string& path, size_t fields,
                      const std::function<void(const std::vector<int64_t>&, absl::string_view)>& f)
      -> absl::Status {
    auto text = ReadWholeFile(path);
    if (!text.ok()) return text.status();
    size_t line = 0;
    for (absl::string_view l : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      ++line;
      std::vector<absl::string_view> cells = absl::StrSplit(l, ',');
      std::vector<int64_t> v(cells.size(), 0);
      bool ok = cells.size() == fields;
      for (size_t i = 0; ok && i < cells.size(); ++i) {
        ok = cells[i] == "P" || cells[i] == "R" || absl::SimpleAtoi(cells[i], &v[i]);
      }
      if (!ok) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, " line ", line, ": bad line '", l, "'"));
      }
      f(v, cells.size() > 1 ? cells[1] : absl::string_view());
    }
    return absl::OkStatus();
  };
  absl::Status st =
      each_line(opening_file, 2, [&](const std::vector<int64_t>& v, absl::string_view) {
        UserDay& d = days[v[0]];
        d.user = v[0];
        d.opening += v[1];
      });
  if (!st.ok()) return st;
  st = each_line(trades_file, 3, [&](const std::vector<int64_t>& v, absl::string_view kind) {
    UserDay& d = days[v[0]];
    d.user = v[0];
    (kind == "P" ? d.purchased : d.redeemed) += v[2];
  });
  if (!st.ok()) return st;
  std::vector<UserDay> out;
  out.reserve(days.size());
  for (const auto& [user, d] : days) out.push_back(d);
  std::sort(out.begin(), out.end(),
            [](const UserDay& a, const UserDay& b) { return a.user < b.user; });
  return out;
}

absl::StatusOr<std::vector<UserDay>> ClearingWorker::Load(const v1::ShardTask& task,
                                                          v1::ShardTotals* totals) {
  if (delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
  auto days = LoadShard(task.opening_file(), task.trades_file());
  if (!days.ok()) return days.status();
  totals->set_shard(task.shard());
  totals->set_users(static_cast<int64_t>(days->size()));
  for (const UserDay& d : *days) {
    totals->set_opening(totals->opening() + d.opening);
    totals->set_purchased(totals->purchased() + d.purchased);
    totals->set_redeemed(totals->redeemed() + d.redeemed);
    totals->set_closing(totals->closing() + d.Before());
    if (d.Before() < 0) {
      totals->add_differences(absl::StrCat("user ", d.user, ": redeemed ", d.redeemed,
                                           " but held only ", d.opening + d.purchased));
    }
  }
  if (task.check_online()) {
    absl::Status st = CheckOnline(*days, totals);
    if (!st.ok()) return st;
  }
  return days;
}

// Compares each user's shares before income with the fund service's
// holding (available + frozen), in batches of one shard's users.
absl::Status ClearingWorker::CheckOnline(const std::vector<UserDay>& days,
                                         v1::ShardTotals* totals) {
  if (holdings_.empty()) {
    return absl::FailedPreconditionError(
        "check_online needs the worker started with the fund's data (--fund-data or --fund-dds)");
  }
  constexpr size_t kBatch = 500;
  for (size_t first = 0; first < days.size(); first += kBatch) {
    size_t last = std::min(days.size(), first + kBatch);
    std::string in;
    std::vector<dds::Value> params;
    for (size_t i = first; i < last; ++i) {
      absl::StrAppend(&in, params.empty() ? "" : ", ", "$", params.size() + 1);
      params.emplace_back(std::in_place_type<int64_t>, days[i].user);
    }
    absl::flat_hash_map<int64_t, int64_t> online, rows;
    for (dds::ShardedDataSource* holdings : holdings_) {
      auto r = holdings->Execute(
          absl::StrCat("SELECT user_id, shares + frozen FROM holdings WHERE user_id IN (", in, ")"),
          params, {.primary = true});
      if (!r.ok()) return r.status();
      for (const auto& row : r->rows) {
        online[AsInt(row[0])] += AsInt(row[1]);
        ++rows[AsInt(row[0])];
      }
    }
    for (size_t i = first; i < last; ++i) {
      auto it = online.find(days[i].user);
      int64_t held = it == online.end() ? 0 : it->second;
      if (rows[days[i].user] > 1) {
        totals->add_differences(absl::StrCat("user ", days[i].user, ": held in ",
                                             rows[days[i].user], " zones' data at once"));
        continue;
      }
      if (held != days[i].Before()) {
        totals->add_differences(absl::StrCat("user ", days[i].user, ": the fund holds ", held,
                                             ", the day's trades give ", days[i].Before()));
      }
    }
  }
  return absl::OkStatus();
}

grpc::Status ClearingWorker::Prepare(grpc::ServerContext* ctx, const v1::ShardTask* task,
                                     v1::ShardTotals* totals) {
  return formica::rpc::Serve(ctx, [&] {
    auto days = Load(*task, totals);
    return formica::ToGrpcStatus(days.status());
  });
}

grpc::Status ClearingWorker::Distribute(grpc::ServerContext* ctx, const v1::ShardTask* task,
                                        v1::ShardTotals* totals) {
  return formica::rpc::Serve(ctx, [&] {
    auto days = Load(*task, totals);
    if (!days.ok()) return formica::ToGrpcStatus(days.status());
    if (totals->differences_size() > 0) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat("shard ", task->shard(), " does not reconcile: ", totals->differences(0)));
    }
    std::vector<int64_t> weights, keys;
    weights.reserve(days->size());
    keys.reserve(days->size());
    for (const UserDay& d : *days) {
      weights.push_back(d.Before());
      keys.push_back(d.user);
    }
    std::vector<int64_t> income = LargestRemainder(task->income(), weights, keys);
    std::string lines;
    int64_t given = 0;
    int64_t closing = 0;
    for (size_t i = 0; i < days->size(); ++i) {
      const UserDay& d = (*days)[i];
      ClearedRecord r{d.user,     d.opening, d.purchased,
                      d.redeemed, income[i], d.Before() + income[i]};
      lines += FormatClearedRecord(r);
      given += r.income;
      closing += r.closing;
    }
    std::string path = absl::StrCat(task->work_dir(), "/result-", task->shard(), ".part");
    absl::Status st = WriteFileAtomically(path, lines, /*sync=*/false);  // a work file
    if (!st.ok()) return formica::ToGrpcStatus(st);
    totals->set_income(given);
    totals->set_closing(closing);
    totals->set_result_file(path);
    return grpc::Status::OK;
  });
}

}  // namespace fund
