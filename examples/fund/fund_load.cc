// fund-load: drives random purchases and redemptions through the fund's
// gateway (fund::OrderDriver) with a live progress line, then checks that
// money and shares add up: balances + shares unchanged, shares moved by
// exactly the confirmed orders, the ledger holding every confirmed order
// once, nothing left frozen or incoming.
//   fund-load --registry H:P [--users N] [--seconds S] [--concurrency C]
//             [--orders N] [--redeem-ratio R] [--repeat-ratio R] [--seed N]
//             [--prefix P] [--zones Z1,Z2] [--quiet]
// --zones: the fund runs in these LDC zones (docs/fund.md, "Two zones"):
// the totals come from the GZone's fund.v1.FundTotals, which must answer for
// exactly these zones, each zone's figures are printed, and orders go to
// users 10.. (a routed user id has two digits).
// The last line is one JSON object: orders, orders_per_s, p50_ms, p99_ms,
// confirmed, refused, repeats, repeats_matching, money_conserved.
// Exit code 0 when everything adds up, 1 otherwise.
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "driver.h"
#include "formica/common/tls.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "store.h"
#include "totals.h"

namespace v1 = fund::v1;

int main(int argc, char** argv) {
  // Mutual TLS when FORMICA_TLS_CA, FORMICA_TLS_CERT and FORMICA_TLS_KEY are set.
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "fund-load: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  std::map<std::string, std::string> f = {
      {"users", "1000"},        {"seconds", "10"},        {"concurrency", "8"}, {"orders", "0"},
      {"redeem-ratio", "0.35"}, {"repeat-ratio", "0.05"}, {"seed", "1"},        {"prefix", ""}};
  if (!fund::ParseFlags(argc, argv, 1,
                        {"registry", "users", "seconds", "concurrency", "orders", "redeem-ratio",
                         "repeat-ratio", "seed", "prefix", "zones"},
                        {"quiet"}, &f) ||
      f["registry"].empty()) {
    std::fprintf(stderr, "usage: fund-load --registry H:P [--users N] [--seconds S] ...\n");
    return 2;
  }
  formica::registry::ClientOptions ro;
  ro.client_name = "fund-load";
  for (absl::string_view r : absl::StrSplit(f["registry"], ',')) ro.registries.emplace_back(r);
  auto registry = formica::registry::Client::Create(ro);
  if (!registry.ok()) {
    std::fprintf(stderr, "fund-load: %s\n", registry.status().ToString().c_str());
    return 2;
  }
  formica::rpc::ClientOptions co;
  co.app_name = "fund-load";
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  if (!rpc.ok()) return 2;
  // With LDC zones (--zones a,b): the fund-wide totals from the GZone.
  std::set<std::string> zones = absl::StrSplit(f["zones"], ',', absl::SkipEmpty());
  v1::FundWideTotals wide;
  auto read = [&]() -> absl::StatusOr<fund::FundTotals> {
    if (zones.empty()) return fund::ReadTotals(rpc->get());
    auto t = fund::ReadFundWideTotals(rpc->get());
    if (!t.ok()) return t.status();
    std::set<std::string> answered;
    for (const v1::ZoneTotals& z : t->zones()) answered.insert(z.zone());
    if (answered != zones) {
      return absl::FailedPreconditionError(
          absl::StrCat("fund.v1.FundTotals answered for zones ", absl::StrJoin(answered, ","),
                       ", not the --zones given (", f["zones"], ")"));
    }
    wide = *t;
    return fund::FundTotals{t->balances(), t->shares(), t->ledger()};
  };
  auto before = read();
  if (!before.ok()) {
    std::fprintf(stderr, "fund-load: reading totals: %s\n", before.status().ToString().c_str());
    return 1;
  }
  fund::DriverOptions o;
  o.users = std::atoll(f["users"].c_str());
  if (!f["zones"].empty()) o.first_user = 10;
  o.duration = absl::Seconds(std::atof(f["seconds"].c_str()));
  o.concurrency = std::atoi(f["concurrency"].c_str());
  o.max_orders = std::atoll(f["orders"].c_str());
  o.redeem_ratio = std::atof(f["redeem-ratio"].c_str());
  o.repeat_ratio = std::atof(f["repeat-ratio"].c_str());
  o.seed = std::strtoull(f["seed"].c_str(), nullptr, 10);
  o.prefix = f["prefix"].empty() ? absl::StrCat("o", absl::ToUnixMillis(absl::Now())) : f["prefix"];
  o.progress = f.count("quiet") == 0;
  fund::OrderDriver driver(rpc->get());
  fund::DriverReport r = driver.Run(o);
  double per_s = r.orders / std::max(r.seconds, 1e-9);
  double p50 = fund::Percentile(r.latency_ms, 50);
  double p99 = fund::Percentile(r.latency_ms, 99);
  std::printf("orders %lld in %.1fs: %.0f/s, p50 %.1f ms, p99 %.1f ms\n",
              static_cast<long long>(r.orders), r.seconds, per_s, p50, p99);
  std::printf("confirmed %lld, refused %lld", static_cast<long long>(r.confirmed),
              static_cast<long long>(r.refused));
  for (const auto& [why, n] : r.refusals)
    std::printf(" (%s: %lld)", why.c_str(), static_cast<long long>(n));
  std::printf("; repeats %lld, answered with the first result %lld; call errors repeated %lld\n",
              static_cast<long long>(r.repeats), static_cast<long long>(r.repeats_matching),
              static_cast<long long>(r.call_errors));
  for (const std::string& m : r.repeat_mismatches) std::printf("repeat mismatch: %s\n", m.c_str());
  if (r.unanswered > 0) {
    std::printf("%lld orders unanswered, the last: %s\n", static_cast<long long>(r.unanswered),
                r.last_error.c_str());
  }
  // Wait for phase two and the ledger to settle, then check.
  bool conserved = false;
  std::string why;
  absl::Time until = absl::Now() + absl::Seconds(60);
  while (true) {
    auto after = read();
    if (after.ok()) {
      int64_t money_before = before->balances.available() + before->shares.available();
      int64_t money_after = after->balances.available() + after->shares.available();
      int64_t net = r.purchased - r.redeemed;
      int64_t ledger_net = (after->ledger.purchased() - after->ledger.redeemed()) -
                           (before->ledger.purchased() - before->ledger.redeemed());
      bool quiet = after->balances.frozen() == 0 && after->balances.incoming() == 0 &&
                   after->shares.frozen() == 0 && after->shares.incoming() == 0;
      conserved = quiet && money_before == money_after &&
                  after->shares.available() - before->shares.available() == net &&
                  ledger_net == net && r.unanswered == 0;
      why = absl::StrCat("balances+shares before ", money_before, " after ", money_after,
                         "; shares moved ", after->shares.available() - before->shares.available(),
                         ", confirmed orders net ", net, ", ledger net ", ledger_net, "; frozen ",
                         after->balances.frozen() + after->shares.frozen(), ", incoming ",
                         after->balances.incoming() + after->shares.incoming(), "; unanswered ",
                         r.unanswered);
    } else {
      why = after.status().ToString();
    }
    if (conserved || absl::Now() > until) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  std::printf("money and shares %s: %s\n", conserved ? "add up" : "DO NOT add up", why.c_str());
  auto settled = read();
  if (settled.ok()) {
    for (const v1::ZoneTotals& z : wide.zones()) {
      std::printf(
          "zone %s: %lld users, balances %lld, shares %lld, frozen %lld, ledger %lld entries\n",
          z.zone().c_str(), static_cast<long long>(z.balances().users()),
          static_cast<long long>(z.balances().available()),
          static_cast<long long>(z.shares().available()),
          static_cast<long long>(z.balances().frozen() + z.shares().frozen()),
          static_cast<long long>(z.ledger().entries()));
    }
    if (!zones.empty()) {
      std::printf(
          "fund-wide (fund.v1.FundTotals, GZone): %lld users, balances %lld, shares %lld, frozen "
          "%lld, incoming %lld\n",
          static_cast<long long>(wide.balances().users()),
          static_cast<long long>(wide.balances().available()),
          static_cast<long long>(wide.shares().available()),
          static_cast<long long>(wide.balances().frozen() + wide.shares().frozen()),
          static_cast<long long>(wide.balances().incoming() + wide.shares().incoming()));
    }
    std::printf("ledger: %lld order-confirmed messages delivered in all (%lld by this run)\n",
                static_cast<long long>(settled->ledger.entries()),
                static_cast<long long>(settled->ledger.entries() - before->ledger.entries()));
  }
  std::printf(
      "{\"orders\": %lld, \"orders_per_s\": %.1f, \"p50_ms\": %.2f, \"p99_ms\": %.2f, "
      "\"confirmed\": %lld, \"refused\": %lld, \"repeats\": %lld, \"repeats_matching\": %lld, "
      "\"money_conserved\": %s}\n",
      static_cast<long long>(r.orders), per_s, p50, p99, static_cast<long long>(r.confirmed),
      static_cast<long long>(r.refused), static_cast<long long>(r.repeats),
      static_cast<long long>(r.repeats_matching), conserved ? "true" : "false");
  return conserved && r.repeat_mismatches.empty() ? 0 : 1;
}
