#include "formica/ldc/rpc_routing.h"

#include "absl/status/status.h"

namespace formica::ldc {

absl::StatusOr<std::string> RpcZoneRouting::CallZone(absl::string_view service,
                                                     absl::string_view user_id,
                                                     bool read_only) const {
  std::shared_ptr<const RuleSet> rules = router_->rules();
  if (rules == nullptr) return absl::UnavailableError("no LDC rules applied yet");
  if (rules->global_services.count(std::string(service)) > 0) {
    if (read_only) {
      const Zone* here = rules->FindZone(router_->zone());
      for (const Zone& z : rules->zones) {
        if (here != nullptr && z.kind == ZoneKind::kCZone && z.city == here->city) return z.name;
      }
    }
    return rules->GlobalZone()->name;
  }
  if (user_id.empty()) return std::string();
  absl::StatusOr<int> shard = UserShard(user_id);
  if (!shard.ok()) return shard.status();
  return rules->owner[*shard];
}

absl::StatusOr<std::string> RpcZoneRouting::ServingZone(absl::string_view service,
                                                        absl::string_view user_id) const {
  std::shared_ptr<const RuleSet> rules = router_->rules();
  if (rules == nullptr) return absl::UnavailableError("no LDC rules applied yet; retry");
  const Zone* here = rules->FindZone(router_->zone());
  // The GZone and the CZones hold global data for everyone: they serve what they host.
  if (here != nullptr && here->kind != ZoneKind::kRZone) return std::string();
  if (rules->global_services.count(std::string(service)) > 0) return rules->GlobalZone()->name;
  if (user_id.empty()) return std::string();
  absl::StatusOr<int> shard = UserShard(user_id);
  if (!shard.ok()) return shard.status();
  const std::string& owner = rules->owner[*shard];
  return owner == router_->zone() ? std::string() : owner;
}

}  // namespace formica::ldc
