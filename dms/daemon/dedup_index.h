// DedupIndex: which message each producer dedup key was first stored as,
// within the dedup window, over a DedupStore. The index is written after
// the log and unsynced; each queue's mark says how far it has caught up,
// and on open the records past the mark are indexed again from the log.
// Thread-safe.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dedup_store.h"
#include "formica/common/clock.h"
#include "topic.h"
#include "topic_catalog.h"

namespace formica::dms {

class DedupIndex {
 public:
  // Borrowed.
  DedupIndex(DedupStore* store, Clock* clock, absl::Duration window);

  // Messages born before this are outside the window.
  int64_t OldestMs() const;

  absl::StatusOr<std::optional<uint64_t>> Mark(absl::string_view topic, int queue) {
    return store_->Mark(topic, queue);
  }

  // Where an earlier send of `key` in `t` went, when it was within the
  // window (born at or after `oldest_ms`) and its record still holds that
  // message; nullopt otherwise (not a duplicate).
  absl::StatusOr<std::optional<Produced>> Lookup(TopicState& t, const std::string& key,
                                                 int64_t oldest_ms);

  // Records keys and marks of `t` (see DedupStore::Index).
  absl::Status Index(const TopicState& t,
                     const std::vector<std::pair<std::string, DedupEntry>>& entries,
                     const std::map<int, uint64_t>& marks) {
    return store_->Index(t.name, entries, marks);
  }

  // Sets up t's dedup bookkeeping, indexing the records past each queue's
  // mark from the log.
  absl::Status CatchUp(TopicState& t);

  // Forgets the keys of t's messages at or past `lost_from[queue]` (lost
  // from the log), so a retried send stores its message again.
  absl::Status ForgetLost(const TopicState& t, const std::map<int, uint64_t>& lost_from);

  // Removes keys older than the window.
  void Sweep();

 private:
  DedupStore* store_;
  Clock* clock_;
  absl::Duration window_;
};

}  // namespace formica::dms
