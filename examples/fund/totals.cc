#include "totals.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "driver.h"
#include "formica/common/grpc_status.h"
#include "formica/ldc/rules.h"
#include "formica/registry/client.h"
#include "formica/rpc/server.h"

namespace fund {

ZoneClients::~ZoneClients() {
  absl::MutexLock lock(&mu_);
  for (auto& [zone, link] : links_) link.rpc.reset();  // before the routing it uses
}

absl::StatusOr<formica::rpc::Client*> ZoneClients::For(const std::string& zone) {
  absl::MutexLock lock(&mu_);
  auto it = links_.find(zone);
  if (it != links_.end()) return it->second.rpc.get();
  Link link;
  link.routing = std::make_unique<formica::rpc::PinnedZoneRouting>(zone);
  formica::rpc::ClientOptions o;
  o.app_name = app_name_;
  o.zone = zone;
  o.zone_routing = link.routing.get();
  o.default_timeout = absl::Seconds(10);
  auto rpc = formica::rpc::Client::Create(o, registry_);
  if (!rpc.ok()) return rpc.status();
  link.rpc = std::move(*rpc);
  return (links_[zone] = std::move(link)).rpc.get();
}

void AddTotals(const v1::Totals& from, v1::Totals* to) {
  to->set_users(to->users() + from.users());
  to->set_available(to->available() + from.available());
  to->set_frozen(to->frozen() + from.frozen());
  to->set_incoming(to->incoming() + from.incoming());
}

void AddTotals(const v1::LedgerTotals& from, v1::LedgerTotals* to) {
  to->set_entries(to->entries() + from.entries());
  to->set_purchased(to->purchased() + from.purchased());
  to->set_redeemed(to->redeemed() + from.redeemed());
}

absl::StatusOr<v1::FundWideTotals> TotalsService::Sum() {
  std::shared_ptr<const formica::ldc::RuleSet> rules = router_->rules();
  if (rules == nullptr) return absl::UnavailableError("no LDC rules applied yet");
  v1::FundWideTotals out;
  out.set_rules_version(router_->version());
  for (const formica::ldc::Zone& zone : rules->zones) {
    if (zone.kind != formica::ldc::ZoneKind::kRZone) continue;
    absl::StatusOr<formica::rpc::Client*> rpc = zones_->For(zone.name);
    if (!rpc.ok()) return rpc.status();
    absl::StatusOr<FundTotals> t = ReadTotals(*rpc);
    if (!t.ok()) {
      return absl::UnavailableError(
          absl::StrCat("zone ", zone.name, "'s totals: ", t.status().ToString()));
    }
    v1::ZoneTotals* z = out.add_zones();
    z->set_zone(zone.name);
    *z->mutable_balances() = t->balances;
    *z->mutable_shares() = t->shares;
    *z->mutable_ledger() = t->ledger;
    AddTotals(t->balances, out.mutable_balances());
    AddTotals(t->shares, out.mutable_shares());
    AddTotals(t->ledger, out.mutable_ledger());
  }
  return out;
}

grpc::Status TotalsService::Read(grpc::ServerContext* ctx, const v1::FundTotalsRequest*,
                                 v1::FundWideTotals* out) {
  return formica::rpc::Serve(ctx, [&] {
    absl::StatusOr<v1::FundWideTotals> t = Sum();
    if (!t.ok()) return formica::ToGrpcStatus(t.status());
    *out = *std::move(t);
    return grpc::Status::OK;
  });
}

absl::StatusOr<v1::FundWideTotals> ReadFundWideTotals(formica::rpc::Client* rpc) {
  v1::FundWideTotals out;
  formica::rpc::CallOptions call;
  call.timeout = absl::Seconds(30);
  call.idempotent = true;
  absl::Status st =
      rpc->CallWithStub<v1::FundTotals>(v1::FundTotals::service_full_name(), call,
                                        [&](v1::FundTotals::Stub& s, grpc::ClientContext* c) {
                                          return s.Read(c, v1::FundTotalsRequest(), &out);
                                        });
  if (!st.ok()) return st;
  return out;
}

}  // namespace fund
