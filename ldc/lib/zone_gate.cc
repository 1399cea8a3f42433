#include "formica/ldc/zone_gate.h"

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace formica::ldc {
namespace {

class PermitPass : public dds::WriteGate::Pass {
 public:
  explicit PermitPass(Router::WritePermit permit) : permit_(std::move(permit)) {}

 private:
  Router::WritePermit permit_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<dds::WriteGate::Pass>> ZoneWriteGate::Admit(int shard,
                                                                           bool may_wait) {
  absl::StatusOr<Router::WritePermit> permit = router_->AdmitWrite(
      shard, may_wait ? absl::Now() + options_.fence_wait : absl::InfinitePast());
  if (!permit.ok()) return permit.status();
  return std::unique_ptr<Pass>(new PermitPass(*std::move(permit)));
}

absl::StatusOr<std::string> ZoneWriteGate::AdmitRead(int shard) {
  absl::StatusOr<Route> route = router_->RouteShard(shard);
  if (!route.ok()) return route.status();
  if (route->local) return std::string();
  if (options_.cross_zone_reads) return route->owner;
  return absl::FailedPreconditionError(absl::StrFormat(
      "shard %02d is owned by zone %s (rules version %d); this data source is in zone %s and "
      "reads another zone's shards only with cross-zone reads allowed",
      shard, route->owner, route->version, router_->zone()));
}

}  // namespace formica::ldc
