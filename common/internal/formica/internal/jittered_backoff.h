// Exponential backoff with jitter, for a loop that retries after a failure:
// each wait is drawn at random between half and all of the current step,
// and the step doubles after each wait up to `max`. Reset() after a success
// starts over at `initial`. The registry client's reconnect loop uses it.
//
//   JitteredBackoff backoff(absl::Milliseconds(100), absl::Seconds(5));
//   while (!TryOnce()) Sleep(backoff.Next());
//
// Not thread-safe. No clock: the caller waits the returned duration however
// it waits (a mutex's AwaitWithTimeout, a timer).
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>

#include "absl/time/time.h"

namespace formica {

class JitteredBackoff {
 public:
  // REQUIRES: 0 < initial <= max. `seed` fixes the jitter (for tests).
  JitteredBackoff(absl::Duration initial, absl::Duration max,
                  uint64_t seed = std::random_device{}())
      : initial_(initial), max_(max), step_(initial), rng_(seed) {}

  // The wait before the next try: at random in [step/2, step], to the
  // microsecond. Then the step doubles, up to max.
  absl::Duration Next() {
    std::uniform_int_distribution<int64_t> dist(absl::ToInt64Microseconds(step_) / 2,
                                                absl::ToInt64Microseconds(step_));
    absl::Duration wait = absl::Microseconds(dist(rng_));
    step_ = std::min(step_ * 2, max_);
    return wait;
  }

  // Back to `initial` (after a try that worked for a while).
  void Reset() { step_ = initial_; }

  // The step the next wait is drawn from.
  absl::Duration step() const { return step_; }

 private:
  const absl::Duration initial_;
  const absl::Duration max_;
  absl::Duration step_;
  std::mt19937_64 rng_;
};

}  // namespace formica
