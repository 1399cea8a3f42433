// formica::ldc::RpcZoneRouting — LDC's routing for rpc: a call carrying a
// user id (x-formica-user) goes to providers in the user's owner zone; a
// call without one to the caller's zone, as without LDC; a global service
// (the rules' global_services) to the GZone, and a read-only call of one to
// a CZone in the caller's city when there is one. On a provider it is the
// double check: a call for a user another zone owns is refused naming that
// zone, and rpc::Client retries it there once.
//
//   ldc::RpcZoneRouting routing(router.get());
//   rpc::ClientOptions client_options;  client_options.zone_routing = &routing;
//   rpc::ServerOptions server_options;  server_options.zone_routing = &routing;
//   server_options.zone = router->zone();
//
// Thread-safe; `router` is borrowed and must outlive it.
#pragma once

#include <string>

#include "formica/ldc/router.h"
#include "formica/rpc/zone_routing.h"

namespace formica::ldc {

class RpcZoneRouting : public rpc::ZoneRouting {
 public:
  explicit RpcZoneRouting(const Router* router) : router_(router) {}

  absl::StatusOr<std::string> CallZone(absl::string_view service, absl::string_view user_id,
                                       bool read_only) const override;
  // Empty (serve) on the GZone and CZones (they host global services), for
  // a call without a user, and for a user whose shard this zone owns
  // (fenced or not: its writes then wait in the data source). `service` is
  // the gRPC service name (package.Service).
  absl::StatusOr<std::string> ServingZone(absl::string_view service,
                                          absl::string_view user_id) const override;

 private:
  const Router* const router_;
};

}  // namespace formica::ldc
