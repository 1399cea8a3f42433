// RegistryDiscovery: rpc's Discovery over a registry::Client (DSR).
#include <utility>

#include "absl/strings/str_cat.h"
#include "formica/registry/client.h"
#include "formica/rpc/discovery.h"

namespace formica::rpc {
namespace {

ProviderSet FromSnapshot(const registry::ServiceSnapshot& snapshot) {
  ProviderSet out;
  out.service = snapshot.service;
  out.version = snapshot.version;
  out.providers.reserve(snapshot.instances.size());
  for (const registry::Instance& instance : snapshot.instances) {
    out.providers.push_back(
        Provider{instance.address, instance.zone, instance.weight, instance.tags});
  }
  return out;
}

}  // namespace

std::string RegistryDiscovery::RoutesKey(absl::string_view service) {
  return absl::StrCat("rpc/routes/", service);
}

absl::StatusOr<uint64_t> RegistryDiscovery::Subscribe(absl::string_view service,
                                                      ProvidersCallback callback) {
  return registry_->Subscribe(
      service, [callback = std::move(callback)](const registry::ServiceSnapshot& snapshot) {
        callback(FromSnapshot(snapshot));
      });
}

void RegistryDiscovery::Unsubscribe(uint64_t subscription_id) {
  registry_->Unsubscribe(subscription_id);
}

std::optional<ProviderSet> RegistryDiscovery::Current(absl::string_view service) const {
  std::optional<registry::ServiceSnapshot> snapshot = registry_->GetSnapshot(service);
  if (!snapshot.has_value()) return std::nullopt;
  return FromSnapshot(*snapshot);
}

absl::StatusOr<uint64_t> RegistryDiscovery::WatchRoutes(absl::string_view service,
                                                        RoutesCallback callback) {
  return registry_->WatchConfig(
      RoutesKey(service), [callback = std::move(callback)](const registry::ConfigValue& value) {
        callback(value.exists ? std::optional<std::string>(value.value) : std::nullopt);
      });
}

void RegistryDiscovery::UnwatchRoutes(uint64_t watch_id) { registry_->Unwatch(watch_id); }

absl::StatusOr<uint64_t> RegistryDiscovery::WatchDrain(absl::string_view service,
                                                       RoutesCallback callback) {
  return registry_->WatchConfig(
      absl::StrCat("rpc/drain/", service),
      [callback = std::move(callback)](const registry::ConfigValue& value) {
        callback(value.exists ? std::optional<std::string>(value.value) : std::nullopt);
      });
}

void RegistryDiscovery::UnwatchDrain(uint64_t watch_id) { registry_->Unwatch(watch_id); }

absl::Status RegistryDiscovery::Publish(absl::string_view service, const Provider& provider) {
  registry::Instance instance;
  instance.service = std::string(service);
  instance.address = provider.address;
  instance.zone = provider.zone;
  instance.weight = provider.weight;
  instance.tags = provider.tags;
  return registry_->Publish(instance);
}

absl::Status RegistryDiscovery::Unpublish(absl::string_view service, absl::string_view address) {
  return registry_->Unpublish(service, address);
}

}  // namespace formica::rpc
