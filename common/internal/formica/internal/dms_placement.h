// Several dmsd broker groups (docs/dms.md, "Several broker groups"): a
// group's name and the service it is published under, and a topic's
// placement (which group holds each queue), kept in the registry's config
// under "dms.placement.<topic>". Shared by dmsd, the producer and consumer,
// and formicactl.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica::dms {

// CRC-32C (Castagnoli) of `data`, continuing from `crc`.
uint32_t Crc32c(absl::string_view data, uint32_t crc = 0);

// The queue of a message with key `key` (non-empty) in a topic of `queues`
// queues: the broker's rule, which a producer following a placement applies
// itself.
inline int QueueForKey(absl::string_view key, int queues) {
  return static_cast<int>(Crc32c(key) % static_cast<uint32_t>(queues));
}

// How formicactl names the default group (which has no name); never a
// group's name.
inline constexpr char kDefaultGroupWord[] = "default";

// OK, or INVALID_ARGUMENT naming `what` unless `name` is 1 to 63 of
// [a-z0-9-] and not "default".
absl::Status ValidBrokerGroup(absl::string_view what, absl::string_view name);

// The service a broker group publishes: "formica.dms.v1.Broker" for the
// default group (""), "formica.dms.v1.Broker.<group>" for a named one.
std::string BrokerServiceOf(absl::string_view group);

// The registry config key holding `topic`'s placement.
std::string PlacementKey(absl::string_view topic);

// Per queue, the group holding it ("" : the default group).
struct Placement {
  std::vector<std::string> groups;
  int queues() const { return static_cast<int>(groups.size()); }
  // The distinct groups holding at least one queue, in queue order.
  std::vector<std::string> Groups() const;
};

// {"queues": 8, "groups": ["", "g2", ...]} (one entry per queue).
// INVALID_ARGUMENT says what is wrong with `json`.
absl::StatusOr<Placement> ParsePlacement(absl::string_view json);
std::string FormatPlacement(const Placement& placement);

}  // namespace formica::dms
