// formica::rpc::Discovery — where rpc finds a service's providers and its tag
// routes, and where rpc::Server announces its own. rpc::Client and
// rpc::Server know only this interface; RegistryDiscovery implements it over
// a registry::Client (DSR). Another source of providers (LDC routing, a
// fixed list in a test) is another implementation.
//
//   registry::Client* registry = ...;
//   rpc::RegistryDiscovery discovery(registry);
//   auto client = rpc::Client::Create(options, &discovery).value();
//
// Implementations are thread-safe. Callbacks may run on any thread but never
// two at once for one subscription, and must not be called after
// Unsubscribe / UnwatchRoutes returns.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica::registry {
class Client;
}

namespace formica::rpc {

// One provider of a service, as calls are balanced over it.
struct Provider {
  std::string address;  // host:port
  std::string zone;
  int32_t weight = 100;                     // relative share of the calls; 0: only when all are 0
  std::map<std::string, std::string> tags;  // matched by tag routes (color=blue...)
};

// The full provider set of a service at one version. Versions only grow.
struct ProviderSet {
  std::string service;
  uint64_t version = 0;
  std::vector<Provider> providers;
};

class Discovery {
 public:
  using ProvidersCallback = std::function<void(const ProviderSet& providers)>;
  // `routes` is the service's route text ("color=blue:90,color=green:10",
  // see docs/rpc.md), or nullopt when it has none.
  using RoutesCallback = std::function<void(const std::optional<std::string>& routes)>;

  virtual ~Discovery() = default;

  // Calls `callback` with every newer provider set of `service`, and at once
  // with the one known now, if any. Returns an id for Unsubscribe.
  // INVALID_ARGUMENT names a bad service name.
  virtual absl::StatusOr<uint64_t> Subscribe(absl::string_view service,
                                             ProvidersCallback callback) = 0;
  // After it returns, the callback is not running and never runs again
  // (when called from the callback, only the latter holds).
  virtual void Unsubscribe(uint64_t subscription_id) = 0;
  // The newest provider set known for a subscribed service, if any.
  virtual std::optional<ProviderSet> Current(absl::string_view service) const = 0;

  // Calls `callback` with every change of `service`'s tag routes, at once
  // with the current ones. Returns an id for UnwatchRoutes.
  virtual absl::StatusOr<uint64_t> WatchRoutes(absl::string_view service,
                                               RoutesCallback callback) = 0;
  // As Unsubscribe, for a route watch.
  virtual void UnwatchRoutes(uint64_t watch_id) = 0;

  // Calls `callback` with every change of the addresses asked to drain
  // from `service` (the registry's "rpc/drain/<service>", comma-separated;
  // nullopt when none), at once with the current ones. rpc::Server takes
  // itself out of rotation (weight 0) while listed. A discovery without
  // such a list answers UNIMPLEMENTED (the default).
  virtual absl::StatusOr<uint64_t> WatchDrain(absl::string_view service, RoutesCallback callback) {
    (void)service;
    (void)callback;
    return absl::UnimplementedError("this discovery has no drain list");
  }
  virtual void UnwatchDrain(uint64_t watch_id) { (void)watch_id; }

  // Announces (or updates) `provider` as serving `service` until Unpublish
  // or until this process goes away. INVALID_ARGUMENT names a bad field.
  virtual absl::Status Publish(absl::string_view service, const Provider& provider) = 0;
  // Withdraws what Publish announced. NOT_FOUND if it was not announced here.
  virtual absl::Status Unpublish(absl::string_view service, absl::string_view address) = 0;
};

// Discovery over DSR: providers are the registry's instances of the service,
// routes the config entry "rpc/routes/<service>". Callbacks run on the
// registry client's dispatch thread. `registry` is borrowed and must
// outlive this object.
class RegistryDiscovery : public Discovery {
 public:
  explicit RegistryDiscovery(registry::Client* registry) : registry_(registry) {}

  absl::StatusOr<uint64_t> Subscribe(absl::string_view service,
                                     ProvidersCallback callback) override;
  void Unsubscribe(uint64_t subscription_id) override;
  std::optional<ProviderSet> Current(absl::string_view service) const override;
  absl::StatusOr<uint64_t> WatchRoutes(absl::string_view service, RoutesCallback callback) override;
  void UnwatchRoutes(uint64_t watch_id) override;
  absl::StatusOr<uint64_t> WatchDrain(absl::string_view service, RoutesCallback callback) override;
  void UnwatchDrain(uint64_t watch_id) override;
  absl::Status Publish(absl::string_view service, const Provider& provider) override;
  absl::Status Unpublish(absl::string_view service, absl::string_view address) override;

  // The config key holding `service`'s tag routes.
  static std::string RoutesKey(absl::string_view service);

 private:
  registry::Client* const registry_;
};

}  // namespace formica::rpc
