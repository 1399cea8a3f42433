// Distributed ids for sharded rows: 64-bit, time-ordered, and carrying the
// user's shard in their last two decimal digits, so an order id routes to
// the same shard as its user (ShardOf works on either).
//
//   id = ((milliseconds since 2025-01-01) << 16 | worker << 10 | sequence) * 100 + shard
//
// 40 bits of milliseconds last until 2059; 64 workers (processes that
// generate ids at once each need their own number); 1,024 ids per
// millisecond per worker, after which the generator moves to the next
// millisecond. Ids of one generator only grow, even if the wall clock steps
// back. Thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/clock.h"

namespace formica::dds {

class IdGenerator {
 public:
  static constexpr int kMaxWorker = 63;

  // INVALID_ARGUMENT for a worker outside 0..63. `clock` is borrowed.
  static absl::StatusOr<std::unique_ptr<IdGenerator>> Create(int worker,
                                                             Clock* clock = Clock::Real());

  // A new id in logical shard `shard` (0..99; INVALID_ARGUMENT otherwise).
  absl::StatusOr<int64_t> Next(int shard);

  // When `id` was made (to the millisecond).
  static absl::Time TimeOf(int64_t id);

 private:
  IdGenerator(int worker, Clock* clock) : worker_(worker), clock_(clock) {}
  const int worker_;
  Clock* const clock_;
  absl::Mutex mu_;
  int64_t last_ms_ ABSL_GUARDED_BY(mu_) = -1;
  int sequence_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace formica::dds
