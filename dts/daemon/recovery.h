// What dtsd does on start, before it serves, and what it does for as long
// as it runs with what is finished: recovery reloads every unfinished
// activity from the store into the engine; the retention sweeper removes
// finished activities once they are older than the retention. Neither knows
// of gRPC; time comes from a Clock.
#pragma once

#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "activity_engine.h"
#include "activity_store.h"
#include "formica/common/clock.h"

namespace formica::dts {

// Hands every unfinished activity in `store` to `engine` (ActivityEngine::
// Adopt): ACTIVE ones wait for their deadline, decided ones resume phase
// two at once. Before serving: the store must not change meanwhile.
absl::Status RecoverActivities(ActivityStore& store, ActivityEngine& engine);

// Removes finished activities older than `retention`, every `interval`, on
// its own thread. Thread-safe.
class RetentionSweeper {
 public:
  // `store` and `clock` are borrowed and must outlive the sweeper.
  RetentionSweeper(ActivityStore* store, Clock* clock, absl::Duration retention,
                   absl::Duration interval)
      : store_(store), clock_(clock), retention_(retention), interval_(interval) {}
  ~RetentionSweeper() { Stop(); }
  RetentionSweeper(const RetentionSweeper&) = delete;
  RetentionSweeper& operator=(const RetentionSweeper&) = delete;

  void Start();
  void Stop();

  // One sweep as of `now`: removes up to a limit of finished activities
  // begun and finished before now - retention. Returns true when it
  // stopped at its limit with more to remove.
  bool SweepOnce(absl::Time now);

 private:
  void Loop();

  ActivityStore* const store_;
  Clock* const clock_;
  const absl::Duration retention_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace formica::dts
