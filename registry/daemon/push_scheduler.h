// When the registry pushes: the merge window that batches changes, the
// warm-up after start and the operator's stop-push switch. RegistryCore
// marks changes here and flushes the batch once it is due.
//
// The first change after a quiet period is due at once; changes within
// `merge_window` after a flush wait for its end and go out together. Config
// changes are due at once. Nothing goes out while pushes are held.
//
// Not thread-safe: RegistryCore holds its lock around every call.
#pragma once

#include <set>
#include <string>

#include "absl/time/time.h"

namespace formica {
class Clock;
}  // namespace formica

namespace formica::registry {

class PushScheduler {
 public:
  // `clock` is borrowed. A positive `warmup` holds pushes for that long.
  PushScheduler(Clock* clock, absl::Duration merge_window, absl::Duration warmup);

  // Whether pushes are held (warming up, or the stop-push switch is on).
  bool Held() const { return stop_push_ || warming_up_; }
  bool stop_push() const { return stop_push_; }
  bool warming_up() const { return warming_up_; }
  // Turns the switch; returns whether it changed.
  bool SetStopPush(bool stop);
  // Ends the warm-up once its time has come: true once, when it ends.
  bool EndWarmupIfDue();

  void MarkServiceDirty(const std::string& service);
  void MarkConfigDirty(const std::string& key);
  bool IsDirty(const std::string& service) const { return services_.count(service) > 0; }
  // Takes one service's change out of the batch (the caller pushes it now);
  // returns whether it was waiting.
  bool TakeService(const std::string& service) { return services_.erase(service) > 0; }

  // Whether a batch waits, and when it is due (on the injected clock).
  bool scheduled() const { return scheduled_; }
  absl::Time due_at() const { return flush_at_; }
  // Whether a batch waits, its time has come and pushes are not held.
  bool Due() const;

  struct Batch {
    std::set<std::string> services;
    std::set<std::string> configs;
  };
  // Starts a flush now: hands over what changed and opens a new merge window.
  Batch TakeBatch();

 private:
  void Schedule(absl::Time at);

  Clock* const clock_;
  const absl::Duration merge_window_;
  std::set<std::string> services_;
  std::set<std::string> configs_;
  bool scheduled_ = false;
  absl::Time flush_at_;
  absl::Time last_flush_ = absl::InfinitePast();
  bool stop_push_ = false;
  bool warming_up_ = false;
  absl::Time warmup_end_;
};

}  // namespace formica::registry
