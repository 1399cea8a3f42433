// GroupCommit: answers that must wait until what was written before them is
// on disk wait here, and one sync of the activity store covers every one
// that queued meanwhile, on one thread: no thread parked per call. Knows
// nothing of gRPC. Thread-safe.
//
//   GroupCommit commit(store);
//   commit.Start();
//   store->Put(activity, /*sync=*/false);
//   commit.AfterSync([=] { answer(absl::OkStatus()); });
//   commit.Stop();   // one last sync answers whoever still waits
#pragma once

#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "activity_store.h"
#include "formica/internal/duration_histogram.h"

namespace formica::dts {

class GroupCommit {
 public:
  // `store` is borrowed and must outlive this. With `abort_on_failure`
  // (one dtsd on its own disk) a failed sync aborts the process; without
  // (a replicated store, whose sync fails when leadership is lost) the
  // failure is handed to the callbacks of AfterSyncOrFailure.
  explicit GroupCommit(ActivityStore* store, bool abort_on_failure = true)
      : store_(store), abort_on_failure_(abort_on_failure) {}
  ~GroupCommit() { Stop(); }
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // Runs `done` on the syncer thread once a sync covers every write that
  // returned before this call. A sync that fails aborts the process (without
  // abort_on_failure: `done` is dropped, see AfterSyncOrFailure):
  // answering from a state that may not be on disk would break every
  // promise made; a restart recovers from what is.
  void AfterSync(std::function<void()> done);
  // Runs `done` with the outcome of the sync that covers every write that
  // returned before this call (never a failure with abort_on_failure).
  void AfterSyncOrFailure(std::function<void(const absl::Status&)> done);

  void Start();
  // Runs every callback still queued (after their sync), then stops.
  void Stop();

  // How long each of its syncs took (for the metrics).
  const DurationHistogram& sync_latency() const { return sync_latency_; }

 private:
  void Loop();

  ActivityStore* const store_;
  const bool abort_on_failure_;
  absl::Mutex mu_;
  std::vector<std::function<void(const absl::Status&)>> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  DurationHistogram sync_latency_;
};

}  // namespace formica::dts
