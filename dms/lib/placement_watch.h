// PlacementWatch: what the producer and the consumer know of topics'
// placements over broker groups (formica/internal/dms_placement.h), read
// from the registry's config and kept current by a watch. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "formica/internal/dms_placement.h"

namespace formica::registry {
class Client;
}

namespace formica::dms {

class PlacementWatch {
 public:
  // `registry` is borrowed (null: no placements; every topic on the
  // default group).
  explicit PlacementWatch(registry::Client* registry) : registry_(registry) {}
  ~PlacementWatch();

  // The topic's placement (nullopt: none, every queue on the default
  // group). The first call for a topic reads the registry and starts
  // watching; later ones answer from what the watch delivered (callers
  // that come during the first read wait for it). When the registry does
  // not answer that read, the topic answers nullopt at once from then on,
  // without reading again, until the watch delivers its placement.
  // INVALID_ARGUMENT for an entry that is not a placement.
  absl::StatusOr<std::optional<Placement>> Get(const std::string& topic);
  // Reads the registry again now (after a broker refused a send to a queue
  // that moved); UNAVAILABLE when it cannot be read.
  absl::StatusOr<std::optional<Placement>> Refresh(const std::string& topic);
  // Calls `changed` (on the registry client's thread) with every placement
  // of `topic` the watch delivers after this call.
  void OnChange(const std::string& topic,
                std::function<void(const std::optional<Placement>&)> changed);

 private:
  struct Known {
    bool read = false;        // from the registry, once at least
    bool reading = false;     // a first read is in flight
    bool unanswered = false;  // the first read failed; the watch is in place
    uint64_t version = 0;
    bool exists = false;
    std::optional<Placement> placement;
    absl::Status error;
    uint64_t watch = 0;
    std::vector<std::function<void(const std::optional<Placement>&)>> listeners;
  };
  absl::StatusOr<std::optional<Placement>> Read(const std::string& topic, bool force);
  void Take(const std::string& topic, uint64_t version, bool exists, const std::string& value);

  registry::Client* const registry_;
  absl::Mutex mu_;
  std::map<std::string, Known> known_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::dms
