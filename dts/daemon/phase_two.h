// PhaseTwoScheduler: when dtsd does what it owes later — an activity's
// timeout, and each confirm or cancel, retried with capped, jittered
// exponential backoff until the participant answers. It keeps the due times,
// bounds the calls out at once, groups due confirms and cancels by
// participant into batches and hands them to a PhaseTwoSender. What a task
// means (which activity, which action, what its answer changes) is the
// PhaseTwoWork's business: the activity engine. Knows nothing of gRPC; time
// comes from a Clock. Thread-safe.
//
//   PhaseTwoScheduler scheduler(clock, options, &sender);
//   scheduler.Attach(&engine);   // before any task falls due
//   scheduler.Start();           // a thread runs due tasks; tests call RunDue() instead
//   scheduler.Add(deadline, {id, PhaseTwoTask::kTimeout, 0});
//   ...
//   scheduler.Stop();            // no more tasks run
//   scheduler.WaitIdle();        // every call out has been answered
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "formica/common/clock.h"
#include "formica/dts/v1/dts.pb.h"

namespace formica::dts {

struct ActivityEntry;  // the activity engine's; opaque here

// Something owed at a time: an activity's timeout (action == kTimeout), or
// action `action`'s confirm or cancel. `token` tells a live task from a
// stale one (the work drops stale ones).
struct PhaseTwoTask {
  static constexpr int kTimeout = -1;
  std::string id;
  int action;
  uint64_t token;
};

// One confirm or cancel ready to go; its action is marked as being called.
struct PhaseTwoCall {
  std::shared_ptr<ActivityEntry> entry;
  int index;
  std::string participant;
  v1::PhaseTwoItem item;
};

// Carries confirms and cancels to participants (the gRPC adapter does).
class PhaseTwoSender {
 public:
  virtual ~PhaseTwoSender() = default;
  // Sends `items`, all for `participant`, and calls `done(i, outcome)`
  // exactly once for each item i, on any thread, possibly before Send
  // returns.
  virtual void Send(const std::string& participant, std::vector<v1::PhaseTwoItem> items,
                    std::function<void(size_t, absl::Status)> done) = 0;
};

// What due tasks do (the activity engine).
class PhaseTwoWork {
 public:
  virtual ~PhaseTwoWork() = default;
  // The activity's timeout is due: decides it without syncing and returns
  // what starts its phase two once the decision is synced (empty: nothing
  // to start, or tried again later).
  virtual std::function<void()> Expire(const std::string& id) = 0;
  // One sync for every decision the Expire calls of a round made (on a
  // replicated store, one log commit instead of one per timeout).
  virtual absl::Status SyncExpired() = 0;
  // The call a due phase-two task makes, or nothing when the task is stale.
  virtual std::optional<PhaseTwoCall> Prepare(const PhaseTwoTask& task) = 0;
  // The participant's answer to `call`.
  virtual void Completed(const PhaseTwoCall& call, const absl::Status& outcome) = 0;
};

struct PhaseTwoOptions {
  absl::Duration retry_initial = absl::Milliseconds(200);
  absl::Duration retry_max = absl::Seconds(30);  // backoff cap
  int max_in_flight = 512;                       // confirms and cancels out at once
  uint64_t seed = 0;                             // of the jitter; 0: random
};

class PhaseTwoScheduler {
 public:
  // `clock` and `sender` are borrowed and must outlive the scheduler.
  PhaseTwoScheduler(Clock* clock, PhaseTwoOptions options, PhaseTwoSender* sender);
  ~PhaseTwoScheduler();  // Stop()s; requires WaitIdle() first when calls may be out
  PhaseTwoScheduler(const PhaseTwoScheduler&) = delete;
  PhaseTwoScheduler& operator=(const PhaseTwoScheduler&) = delete;

  // REQUIRES: called once, before Start() or RunDue(). `work` is borrowed.
  void Attach(PhaseTwoWork* work);

  // Runs `task` at `when` (or at once when that is past).
  void Add(absl::Time when, PhaseTwoTask task);

  // How long to wait before attempt `attempts` + 1 of a failing call:
  // retry_initial doubled per attempt, capped at retry_max, times a random
  // factor in [0.5, 1) so that retries of many actions spread out.
  absl::Duration Backoff(uint32_t attempts);

  // Runs every task due by the clock's now, as far as the in-flight cap
  // allows; timeouts are never held back by the cap.
  void RunDue();

  // A thread that waits for due tasks and runs them, until Stop(). May be
  // started again after Stop() (a coordinator that leads again).
  void Start();
  void Stop();
  // Drops every task not yet due or not yet run. REQUIRES: stopped.
  void Clear();
  // Waits until every confirm and cancel handed to the sender is answered.
  void WaitIdle();

  int in_flight() const;

 private:
  std::vector<PhaseTwoTask> TakeDue();
  void Launch(const std::string& participant, std::vector<PhaseTwoCall> calls);
  void SlotFreed();
  void Loop();

  Clock* const clock_;
  const PhaseTwoOptions options_;
  PhaseTwoSender* const sender_;
  PhaseTwoWork* work_ = nullptr;

  mutable absl::Mutex mu_;
  std::multimap<absl::Time, PhaseTwoTask> tasks_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace formica::dts
