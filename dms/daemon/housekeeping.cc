#include "housekeeping.h"

#include <spdlog/spdlog.h>

#include <string>

namespace formica::dms {

Housekeeping::Housekeeping(HousekeepingOptions options, TopicCatalog* topics,
                           ConsumerGroups* groups, DedupIndex* dedup, DiskWatermark* disk,
                           Clock* clock)
    : options_(options),
      topics_(topics),
      groups_(groups),
      dedup_(dedup),
      disk_(disk),
      clock_(clock),
      next_sweep_(clock->Now()) {}

void Housekeeping::RunOnce() {
  disk_->Check();
  groups_->Checkpoint();
  if (clock_->Now() >= next_sweep_) {
    next_sweep_ = clock_->Now() + options_.interval;
    dedup_->Sweep();
    ApplyRetention();
  }
}

void Housekeeping::ApplyRetention() {
  absl::Time cutoff = clock_->Now() - options_.retention_age;
  uint64_t max_bytes =
      options_.retention_bytes > 0 ? static_cast<uint64_t>(options_.retention_bytes) : 0;
  for (TopicState* t : topics_->All()) {
    for (int q = 0; q < t->topic->queues(); ++q) {
      absl::StatusOr<uint64_t> removed = t->topic->RemoveOld(q, cutoff, max_bytes);
      if (!removed.ok()) {
        SPDLOG_ERROR("topic {} queue {}: retention: {}", t->name, q,
                     std::string(removed.status().message()));
      } else if (*removed > 0) {
        SPDLOG_INFO("topic {} queue {}: retention removed messages below offset {}", t->name, q,
                    *removed);
      }
    }
  }
}

}  // namespace formica::dms
