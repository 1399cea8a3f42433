// DedupStore: where dmsd keeps the index of producers' dedup keys (which
// message a key was first stored as) and, per queue, how far the index has
// caught up with the log. One narrow interface over the meta store so that
// produce and the dedup index can be tested without it. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica::dms {

// Where a dedup key's message went, and when it was produced.
struct DedupEntry {
  int queue = 0;
  uint64_t offset = 0;
  int64_t born_unix_ms = 0;
};

class DedupStore {
 public:
  virtual ~DedupStore() = default;

  // The entry of `key` in `topic`; nullopt when there is none or it cannot
  // be read.
  virtual absl::StatusOr<std::optional<DedupEntry>> Find(absl::string_view topic,
                                                         absl::string_view key) = 0;

  // The queue's mark: the first offset whose dedup key may not be indexed
  // yet. nullopt when none was recorded (or it cannot be read).
  virtual absl::StatusOr<std::optional<uint64_t>> Mark(absl::string_view topic, int queue) = 0;

  // Writes `entries` (key -> entry) and `marks` (queue -> mark) of `topic`
  // in one atomic write, not synced.
  virtual absl::Status Index(absl::string_view topic,
                             const std::vector<std::pair<std::string, DedupEntry>>& entries,
                             const std::map<int, uint64_t>& marks) = 0;

  // Removes the entries of `topic` whose message is at or past
  // `lost_from[queue]` in its queue, in one synced write; returns how many.
  virtual absl::StatusOr<size_t> ForgetFrom(absl::string_view topic,
                                            const std::map<int, uint64_t>& lost_from) = 0;

  // Removes the entries of every topic produced before `oldest_unix_ms`,
  // and any that cannot be read.
  virtual void Sweep(int64_t oldest_unix_ms) = 0;
};

}  // namespace formica::dms
