// Housekeeping: dmsd's periodic chores. Each round (RunOnce, every second
// from the broker's housekeeping thread) measures the disk against its
// watermark and writes the groups' committed offsets; every `interval` it
// also sweeps dedup keys out of their window and applies retention (whole
// segments older than `retention_age`, or over `retention_bytes` per
// queue). Knows nothing of gRPC; time comes from the Clock. Not
// thread-safe: one thread runs the rounds.
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "consumer_groups.h"
#include "dedup_index.h"
#include "disk_watermark.h"
#include "formica/common/clock.h"
#include "topic_catalog.h"

namespace formica::dms {

struct HousekeepingOptions {
  absl::Duration retention_age = absl::Hours(72);
  int64_t retention_bytes = 0;  // per queue; 0: no size limit
  absl::Duration interval = absl::Seconds(10);
};

class Housekeeping {
 public:
  // All borrowed. The first round sweeps and applies retention.
  Housekeeping(HousekeepingOptions options, TopicCatalog* topics, ConsumerGroups* groups,
               DedupIndex* dedup, DiskWatermark* disk, Clock* clock);

  void RunOnce();
  // Removes what retention allows from every queue of every topic.
  void ApplyRetention();

 private:
  HousekeepingOptions options_;
  TopicCatalog* topics_;
  ConsumerGroups* groups_;
  DedupIndex* dedup_;
  DiskWatermark* disk_;
  Clock* clock_;
  absl::Time next_sweep_;
};

}  // namespace formica::dms
