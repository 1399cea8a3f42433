// LocalGroupCommit: local transactions of concurrent callers committed
// together, with one sync (group commit). A work runs in the next batch;
// the caller of the oldest waiting work leads (runs the batch on its own
// thread), handed the lead by the leader before it, so waiters sleep until
// their own works are done and are never woken all at once. A work queued
// by RunAsync has no caller waiting: when one is the oldest, the committer
// thread leads, and its `done` is called on the thread that ran it.
//
//   LocalGroupCommit commit([&](const std::vector<LocalGroupCommit::Pending*>& batch) {
//     ... run each p->work in one transaction, setting p->result ...
//   });
//   commit.Start();
//   std::vector<absl::Status> results = commit.Run({&work});
//   commit.RunAsync(std::move(work), [](absl::Status st) { ... });
//   commit.Close();  // runs what is queued, then stops the committer
#pragma once

#include <functional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace formica::dts {

class LocalGroupCommit {
 public:
  // A local transaction's work: its changes are kept when it returns OK and
  // leaves `*keep` true.
  using Work = std::function<absl::Status(bool* keep)>;
  struct Caller;
  struct Pending {
    const Work* work;
    absl::Status result;  // set by the batch runner
    bool done = false;
    Caller* caller = nullptr;  // nullptr: queued by RunAsync, finished through on_done
    std::function<void(absl::Status)> on_done;
    Work owned;
  };
  using BatchRunner = std::function<void(const std::vector<Pending*>& batch)>;

  explicit LocalGroupCommit(BatchRunner run_batch);
  ~LocalGroupCommit();
  LocalGroupCommit(const LocalGroupCommit&) = delete;
  LocalGroupCommit& operator=(const LocalGroupCommit&) = delete;

  void Start();  // the committer thread
  // Runs what is queued, then stops the committer thread.
  void Close();

  // Runs `works` (each in its own savepoint of a shared transaction) and
  // returns their results in order.
  std::vector<absl::Status> Run(const std::vector<const Work*>& works);
  // Queues `work` without waiting; `done` gets its outcome.
  void RunAsync(Work work, std::function<void(absl::Status)> done);

 private:
  void HandOverLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<Pending*> RunAndFinish(std::vector<Pending*> batch);
  // Runs everything queued now as one batch (mu_ released meanwhile).
  void RunQueuedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CommitterLoop();

  const BatchRunner run_batch_;
  absl::Mutex mu_;
  std::vector<Pending*> queue_ ABSL_GUARDED_BY(mu_);
  bool leading_ ABSL_GUARDED_BY(mu_) = false;
  bool committer_leads_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  std::thread committer_;
};

}  // namespace formica::dts
