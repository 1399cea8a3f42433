// formicactl's traffic commands (traffic.cc: view, set, stats;
// traffic_shift.cc: shift, pause, resume, abort): what both share — the
// registry and the providers as these commands see them, and the arithmetic
// of routes and shares.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/routes.h"
#include "formicactl.h"

namespace formica::ctl {

// One provider of a service, as the registry lists it.
struct ProviderInfo {
  std::string address;
  std::string zone;
  int32_t weight = 0;
  std::map<std::string, std::string> tags;

  bool Carries(const std::string& key, const std::string& value) const;
};

// A config entry read from the registry.
struct Entry {
  std::string value;
  uint64_t version = 0;  // 0: the key does not exist
};

// The registry (config entries, provider lists) and the providers' Stats and
// health services, each call bounded by --timeout.
class TrafficLink {
 public:
  explicit TrafficLink(const Flags& flags);
  ~TrafficLink();

  // NOT_FOUND when the registry lists no provider of `service`.
  absl::StatusOr<std::vector<ProviderInfo>> Providers(const std::string& service);
  absl::StatusOr<Entry> Get(const std::string& key);
  // A compare-and-set: FAILED_PRECONDITION when the key is no longer at
  // `expected_version` (0: must not exist). Returns the new version.
  absl::StatusOr<uint64_t> Put(const std::string& key, const std::string& value,
                               uint64_t expected_version);
  // Deletes `key` if still at `expected_version`.
  absl::Status Delete(const std::string& key, uint64_t expected_version);
  // What a provider served of `service` so far (its server-side series,
  // every method added up).
  absl::StatusOr<rpc::CallSeries> Served(const std::string& address, const std::string& service);
  // The provider answers SERVING to the gRPC health check.
  bool Healthy(const std::string& address);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

std::string RouteKey(const std::string& service);  // "rpc/routes/<service>"
std::string ShiftKey(const std::string& service);  // "rpc/shifts/<service>"

// The share of the calls (percent, adding up to 100) each provider gets
// under `routes` as rpc::Client applies them: a route's percent goes to the
// providers carrying its tag in proportion to their weights, or to every
// provider when none carries it; no route: by weight. Zone preference,
// health and warm-up are not counted.
std::vector<double> Shares(const std::vector<ProviderInfo>& providers,
                           const std::vector<rpc::TagRoute>& routes);

// Why `routes` cannot be set for these providers, if it cannot: a tag with
// a share that no provider carries (naming the tags they do carry), or a tag
// given twice.
absl::Status CheckRoutes(const std::string& service, const std::vector<rpc::TagRoute>& routes,
                         const std::vector<ProviderInfo>& providers);

// Prints a failure on stderr as Fail does; returns 1.
int FailWith(const absl::Status& status);

int TrafficShift(const Flags& flags, const std::vector<std::string>& args);

}  // namespace formica::ctl
