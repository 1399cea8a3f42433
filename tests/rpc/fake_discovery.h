// A Discovery a test controls: it holds one provider set and one route text
// per service, hands them to subscribers at once, and pushes changes to them
// synchronously from Push and SetRoutes, on the caller's thread (so a test
// must not push while it unsubscribes).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "formica/rpc/discovery.h"

namespace formica::rpc::testing {

class FakeDiscovery : public Discovery {
 public:
  // Replaces `set.service`'s providers and tells its subscribers.
  void Push(const ProviderSet& set) {
    std::map<uint64_t, ProvidersCallback> callbacks;
    {
      absl::MutexLock lock(&mu_);
      sets_[set.service] = set;
      for (const auto& [id, sub] : subscriptions_) {
        if (sub.first == set.service) callbacks[id] = sub.second;
      }
    }
    for (const auto& [id, callback] : callbacks) callback(set);
  }

  // Replaces `service`'s routes (nullopt: none) and tells its watchers.
  void SetRoutes(const std::string& service, std::optional<std::string> routes) {
    std::map<uint64_t, RoutesCallback> callbacks;
    {
      absl::MutexLock lock(&mu_);
      routes_[service] = routes;
      for (const auto& [id, watch] : watches_) {
        if (watch.first == service) callbacks[id] = watch.second;
      }
    }
    for (const auto& [id, callback] : callbacks) callback(routes);
  }

  absl::StatusOr<uint64_t> Subscribe(absl::string_view service,
                                     ProvidersCallback callback) override {
    std::optional<ProviderSet> now;
    uint64_t id = 0;
    {
      absl::MutexLock lock(&mu_);
      id = ++next_id_;
      subscriptions_[id] = {std::string(service), callback};
      auto it = sets_.find(std::string(service));
      if (it != sets_.end()) now = it->second;
    }
    if (now.has_value()) callback(*now);
    return id;
  }
  void Unsubscribe(uint64_t id) override {
    absl::MutexLock lock(&mu_);
    subscriptions_.erase(id);
  }
  std::optional<ProviderSet> Current(absl::string_view service) const override {
    absl::MutexLock lock(&mu_);
    auto it = sets_.find(std::string(service));
    if (it == sets_.end()) return std::nullopt;
    return it->second;
  }
  absl::StatusOr<uint64_t> WatchRoutes(absl::string_view service,
                                       RoutesCallback callback) override {
    std::optional<std::string> now;
    uint64_t id = 0;
    {
      absl::MutexLock lock(&mu_);
      id = ++next_id_;
      watches_[id] = {std::string(service), callback};
      auto it = routes_.find(std::string(service));
      if (it != routes_.end()) now = it->second;
    }
    callback(now);
    return id;
  }
  void UnwatchRoutes(uint64_t id) override {
    absl::MutexLock lock(&mu_);
    watches_.erase(id);
  }
  absl::Status Publish(absl::string_view service, const Provider& provider) override {
    absl::MutexLock lock(&mu_);
    published_[std::string(service)][provider.address] = provider;
    return absl::OkStatus();
  }
  absl::Status Unpublish(absl::string_view service, absl::string_view address) override {
    absl::MutexLock lock(&mu_);
    if (published_[std::string(service)].erase(std::string(address)) == 0) {
      return absl::NotFoundError("not published");
    }
    return absl::OkStatus();
  }

  // What Publish announced for `service` and Unpublish did not withdraw.
  std::map<std::string, Provider> Published(const std::string& service) const {
    absl::MutexLock lock(&mu_);
    auto it = published_.find(service);
    return it == published_.end() ? std::map<std::string, Provider>{} : it->second;
  }

 private:
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, ProviderSet> sets_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::optional<std::string>> routes_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::pair<std::string, ProvidersCallback>> subscriptions_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::pair<std::string, RoutesCallback>> watches_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<std::string, Provider>> published_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::rpc::testing
