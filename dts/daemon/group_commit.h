// GroupCommit: answers that must wait until what was written before them is
// on disk wait here, and one sync of the activity store covers every one
// that queued meanwhile, on one thread: no thread parked per call. Knows
// nothing of gRPC. Thread-safe.
//
//   GroupCommit commit(store);
//   commit.Start();
//   store->Put(activity, /*sync=*/false);
//   commit.AfterSync([=](const absl::Status& synced) { answer(synced); });
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
  // failure is handed to the callbacks of AfterSync.
  explicit GroupCommit(ActivityStore* store, bool abort_on_failure = true)
      : store_(store), abort_on_failure_(abort_on_failure) {}
  ~GroupCommit() { Stop(); }
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // Runs `done` on the syncer thread with the outcome of a sync that covers
  // every write that returned before this call. A waiter queued in another
  // generation of the store than the sync ends in (a replicated store that
  // lost and regained leadership meanwhile, dropping what it buffered) is
  // answered UNAVAILABLE, never OK. With abort_on_failure a
  // sync that fails aborts the process instead (answering from a state
  // that may not be on disk would break every promise made; a restart
  // recovers from what is), so `done` only ever sees OK.
  void AfterSync(std::function<void(const absl::Status&)> done);
  // The same for writes made since `generation` (the store's generation()
  // read before making them): closes the gap between the writes and this
  // call, in which a leadership could end and begin again.
  void AfterSync(uint64_t generation, std::function<void(const absl::Status&)> done);
  uint64_t generation() const { return store_->generation(); }

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
  struct Waiter {
    uint64_t generation;  // the store's when the waiter queued
    std::function<void(const absl::Status&)> done;
  };
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  DurationHistogram sync_latency_;
};

}  // namespace formica::dts
