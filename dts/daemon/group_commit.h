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
  // `store` is borrowed and must outlive this.
  explicit GroupCommit(ActivityStore* store) : store_(store) {}
  ~GroupCommit() { Stop(); }
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // Runs `done` on the syncer thread once a sync covers every write that
  // returned before this call. A sync that fails aborts the process:
  // answering from a state that may not be on disk would break every
  // promise made; a restart recovers from what is.
  void AfterSync(std::function<void()> done);

  void Start();
  // Runs every callback still queued (after their sync), then stops.
  void Stop();

  // How long each of its syncs took (for the metrics).
  const DurationHistogram& sync_latency() const { return sync_latency_; }

 private:
  void Loop();

  ActivityStore* const store_;
  absl::Mutex mu_;
  std::vector<std::function<void()>> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  DurationHistogram sync_latency_;
};

}  // namespace formica::dts
