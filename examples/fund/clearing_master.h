// fund::ClearingMaster — the master of the daily clearing (fund-clear run).
// It checks the day's trade file whole (nothing is done with a bad one),
// splits it and the opening holdings (the previous day's result file) by
// user shard into one file pair per shard under the work directory, and
// hands the shards out to the workers it finds through DSR
// (fund.v1.ClearingWorker), `parallel` at a time:
//   phase one  every shard's share total before income (Prepare);
//   then       the day's income divided among shards by those totals
//              (largest remainder, ties to the smaller shard);
//   phase two  each shard's part divided among its users (Distribute).
// It reconciles per user (the workers' differences) and in total (the trade
// file's totals, opening + trades + income = closing, with check_online the
// fund service's total shares), stops the day naming the users when
// anything differs, and merges the shards' results into one file sorted by
// user id with a checksum trailer (trade_file.h). A call that fails (a
// worker killed) is made again on another worker: workers keep no state,
// so the result is the same. The same inputs give byte-identical output.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::rpc {
class Client;
}

namespace fund {

struct ClearingOptions {
  std::string trades_file;    // required
  std::string opening_file;   // the previous day's result file; empty: nobody held shares
  std::string work_dir;       // required; shard files go to <work_dir>/day-<day>/
  std::string out_dir;        // required; clearing-<day>.csv goes here
  int64_t income = -1;        // the fund's income of the day in cents; -1: from yield_bp
  int64_t yield_bp = 250;     // annual yield in basis points: income = shares * bp / 10000 / 365
  bool check_online = false;  // reconcile against the fund service's holdings
  // With LDC zones: the RZones the fund runs in; check_online then takes
  // the fund's total shares from the GZone's fund.v1.FundTotals, which must
  // answer for exactly these zones.
  std::set<std::string> zones;
  int parallel = 4;      // shards in flight at once
  bool progress = true;  // a live line on stderr
  absl::Duration call_timeout = absl::Seconds(300);
};

struct ClearingReport {
  int64_t day = 0;
  int64_t users = 0;
  int64_t trades = 0;
  int64_t opening = 0;
  int64_t purchased = 0;
  int64_t redeemed = 0;
  int64_t income = 0;
  int64_t closing = 0;
  int64_t retries = 0;  // shard calls made again (a worker failed)
  double seconds = 0;
  std::string output;
  bool unchanged = false;  // the output file existed with the same bytes
};

class ClearingMaster {
 public:
  explicit ClearingMaster(formica::rpc::Client* rpc) : rpc_(rpc) {}
  // INVALID_ARGUMENT for a bad input file (naming file and line);
  // FAILED_PRECONDITION when the day does not reconcile, naming the users
  // (all of them in <out_dir>/clearing-<day>.differences); UNAVAILABLE when
  // no worker could clear a shard.
  absl::StatusOr<ClearingReport> Run(const ClearingOptions& options);

 private:
  formica::rpc::Client* rpc_;
};

}  // namespace fund
