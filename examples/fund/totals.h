// The fund in LDC zones: rpc clients held to one zone, and the GZone's
// fund-wide totals service (fund.v1.FundTotals).
//
// Each RZone keeps its own users' balances, shares and statements; nothing
// holds the fund as a whole. TotalsService, hosted in the GZone
// (`fund-server --zone gz --ldc --services totals`, fund.v1.FundTotals listed
// in the rules' global_services), answers the fund-wide figures by asking
// every RZone of the rules for its totals (Account.Balances, Fund.Shares,
// Ledger.Totals, each call held to that zone's providers) and adding them
// up, zone by zone in the answer too.
//
//   fund::ZoneClients zones(registry, "fund-totals");
//   fund::TotalsService totals(router, &zones);
//   auto sum = fund::ReadFundWideTotals(rpc);   // a caller, anywhere
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "formica/ldc/router.h"
#include "formica/rpc/client.h"
#include "formica/rpc/zone_routing.h"
#include "fund/v1/fund.grpc.pb.h"

namespace formica::registry {
class Client;
}

namespace fund {

// One rpc client per zone, each held to that zone, made on first use.
// Thread-safe; `registry` is borrowed.
class ZoneClients {
 public:
  ZoneClients(formica::registry::Client* registry, std::string app_name)
      : registry_(registry), app_name_(std::move(app_name)) {}
  ~ZoneClients();
  // The client whose calls go to `zone`'s providers only.
  absl::StatusOr<formica::rpc::Client*> For(const std::string& zone);

 private:
  struct Link {
    std::unique_ptr<formica::rpc::PinnedZoneRouting> routing;
    std::unique_ptr<formica::rpc::Client> rpc;
  };
  formica::registry::Client* const registry_;
  const std::string app_name_;
  absl::Mutex mu_;
  std::map<std::string, Link> links_ ABSL_GUARDED_BY(mu_);
};

// Adds `from` into `to` (users, available, frozen, incoming; the ledger's
// entries and amounts).
void AddTotals(const v1::Totals& from, v1::Totals* to);
void AddTotals(const v1::LedgerTotals& from, v1::LedgerTotals* to);

// fund.v1.FundTotals. `router` (the GZone's) and `zones` are borrowed.
class TotalsService final : public v1::FundTotals::Service {
 public:
  TotalsService(const formica::ldc::Router* router, ZoneClients* zones)
      : router_(router), zones_(zones) {}
  // UNAVAILABLE naming the zone when one RZone does not answer: a sum
  // without a zone is no total.
  grpc::Status Read(grpc::ServerContext* ctx, const v1::FundTotalsRequest*,
                    v1::FundWideTotals* out) override;
  absl::StatusOr<v1::FundWideTotals> Sum();

 private:
  const formica::ldc::Router* router_;
  ZoneClients* zones_;
};

// The fund-wide totals from the GZone's fund.v1.FundTotals, through `rpc`.
absl::StatusOr<v1::FundWideTotals> ReadFundWideTotals(formica::rpc::Client* rpc);

}  // namespace fund
