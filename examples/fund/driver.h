// fund::OrderDriver — what a crowd of payment-app users does to the fund:
// random purchases and redemptions through the gateway from `concurrency`
// threads, each order with its own client order id, some of them sent
// again on purpose (a user tapping twice). An order whose call fails is
// repeated with the same id until it gets an answer, as a client must, so
// each order ends confirmed or refused exactly once, and the driver knows
// per user what the fund should now hold. Used by fund-load, the tests and
// the benchmark.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fund/v1/fund.pb.h"

namespace formica::rpc {
class Client;
}

namespace fund {

struct DriverOptions {
  int64_t users = 1000;    // users first_user..users
  int64_t first_user = 1;  // 10 with LDC zones (a routed user id has two digits at least)
  int concurrency = 8;     // threads, each one order at a time
  absl::Duration duration = absl::Seconds(10);
  int64_t max_orders = 0;  // 0: until `duration`
  double redeem_ratio = 0.35;
  double repeat_ratio = 0.05;  // orders sent twice on purpose
  int64_t max_amount = 20000;  // cents, amounts are 1..max_amount
  std::string prefix = "o";    // client order ids are <prefix>-<thread>-<n>
  uint64_t seed = 1;
  bool progress = false;  // a live line on stderr, once a second
  absl::Duration call_timeout = absl::Seconds(10);
  // Called before each order is sent (tests: to kill a daemon mid-run).
  std::function<void(int64_t sent)> before_order;
};

struct DriverReport {
  int64_t orders = 0;  // distinct orders answered
  int64_t confirmed = 0;
  int64_t refused = 0;
  int64_t call_errors = 0;                     // failed calls that were then repeated
  int64_t unanswered = 0;                      // orders given up on (still failing at the end)
  std::string last_error;                      // the last of those failures
  int64_t repeats = 0;                         // deliberate repeats sent
  int64_t repeats_matching = 0;                // ...answered with the first result, marked repeated
  std::vector<std::string> repeat_mismatches;  // the others, explained
  std::map<std::string, int64_t> refusals;     // refusal text prefix -> count
  double seconds = 0;
  std::vector<double> latency_ms;  // first attempt of each answered order
  // Per user: confirmed purchases minus confirmed redemptions.
  std::map<int64_t, int64_t> net_shares;
  int64_t purchased = 0;  // confirmed, in cents
  int64_t redeemed = 0;
};

class OrderDriver {
 public:
  explicit OrderDriver(formica::rpc::Client* rpc) : rpc_(rpc) {}
  DriverReport Run(const DriverOptions& options);
  // One order, answered or failed once (no repeat).
  absl::StatusOr<v1::OrderResult> Place(const v1::Order& order, absl::Duration timeout);

 private:
  formica::rpc::Client* rpc_;
};

// Percentile (0..100) by nearest rank; 0 for none.
double Percentile(std::vector<double> v, double p);

// Money and shares as the services hold them now (Balances, Shares, the
// ledger's Totals), and whether they add up.
struct FundTotals {
  v1::Totals balances;
  v1::Totals shares;
  v1::LedgerTotals ledger;
};
absl::StatusOr<FundTotals> ReadTotals(formica::rpc::Client* rpc);
// The same summed over zones: one client per zone (each prefers its own
// zone's providers for calls without a user).
absl::StatusOr<FundTotals> ReadTotals(const std::vector<formica::rpc::Client*>& zones);

}  // namespace fund
