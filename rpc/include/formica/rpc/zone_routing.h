// formica::rpc::ZoneRouting — how unit routing (LDC) steers rpc: the zone a
// call goes to, and whether a provider serves a call it was sent. rpc knows
// only this interface; ldc::RpcZoneRouting implements it over ldc::Router.
//
//   rpc::ClientOptions client_options;
//   client_options.zone_routing = &zone_routing;  // calls go to the user's zone
//   rpc::ServerOptions server_options;
//   server_options.zone_routing = &zone_routing;  // misrouted calls are refused
//
// A provider refuses a call for a user its zone does not serve with
// FAILED_PRECONDITION and the serving zone in the trailing metadata
// kServingZoneKey, before the handler body runs (the check is in
// rpc::Serve); rpc::Client then retries the call once in that zone, within
// the call's deadline, whatever the call's idempotency (it never ran).
// Implementations are thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica::rpc {

// Trailing metadata of a refused misrouted call: the zone that serves it.
inline constexpr char kServingZoneKey[] = "x-formica-serving-zone";

class ZoneRouting {
 public:
  virtual ~ZoneRouting() = default;

  // The zone whose providers take a call of `service` for `user_id` (empty:
  // the call names no user); `read_only` for a call that only reads. Empty
  // result: any zone, the caller's preferred. INVALID_ARGUMENT for a user id
  // that cannot be routed.
  virtual absl::StatusOr<std::string> CallZone(absl::string_view service, absl::string_view user_id,
                                               bool read_only) const = 0;

  // On a provider: empty when this process serves a call of `service` for
  // `user_id`, else the zone that does.
  virtual absl::StatusOr<std::string> ServingZone(absl::string_view service,
                                                  absl::string_view user_id) const = 0;
};

// Every call to the providers of one zone, none elsewhere; a provider with
// it serves every call. For a client that must reach one zone's services
// whoever the user: a GZone service asking each RZone in turn, a consumer
// reading its own zone's broker.
class PinnedZoneRouting final : public ZoneRouting {
 public:
  explicit PinnedZoneRouting(std::string zone) : zone_(std::move(zone)) {}
  absl::StatusOr<std::string> CallZone(absl::string_view, absl::string_view, bool) const override {
    return zone_;
  }
  absl::StatusOr<std::string> ServingZone(absl::string_view, absl::string_view) const override {
    return std::string();
  }

 private:
  const std::string zone_;
};

}  // namespace formica::rpc
