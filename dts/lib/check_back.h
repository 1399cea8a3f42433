// The check-back: how a participant finishes the tries of activities begun
// by their initiators (ids that carry their deadline) whose report never
// reached dtsd. Every interval it takes the tries past their deadline that
// no confirm or cancel has reached, asks dtsd each one's outcome (resolve,
// batched with the process's other coordinator calls), and has the
// participant run the confirm or cancel itself. A try it cannot finish now
// is asked about again later, so the oldest never hold back the others:
// dtsd unreachable, in 5 intervals; a failing step, in 30; an activity
// dtsd no longer knows (past its retention), in 10 minutes, logged once
// for an operator. An action an operator settled is dropped, its step not
// run. Written once for every participant kind, over PendingTries: dts::Participant's
// SQLite table (participant.cc), dts::ShardedParticipant's sharded table
// (sharded_participant.cc).
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace formica::dts {

class CoordinatorCalls;

// A try waiting for its outcome at its participant.
struct PendingTry {
  std::string activity_id;
  std::string action;
  std::string route;  // where the participant keeps it (a shard key), or empty
};

// A participant kind's pending tries, as the check-back sees them.
class PendingTries {
 public:
  virtual ~PendingTries() = default;
  // Tries whose next check is due at `now`, the longest due first, at
  // most `limit`.
  virtual absl::StatusOr<std::vector<PendingTry>> Due(absl::Time now, int limit) = 0;
  // Asks about `t` again at `when`.
  virtual absl::Status Postpone(const PendingTry& t, absl::Time when) = 0;
  // Forgets `t` without running a step (an operator settled its action).
  virtual absl::Status Drop(const PendingTry& t) = 0;
  // Runs each try's confirm (true) or cancel (false) as phase two would;
  // one status per try.
  virtual std::vector<absl::Status> Finish(
      const std::vector<std::pair<const PendingTry*, bool>>& outcomes) = 0;
};

class CheckBack {
 public:
  struct Options {
    std::string participant;  // its registry name, as its tries reported it
    absl::Duration interval = absl::Seconds(1);
    absl::Duration call_timeout = absl::Seconds(3);  // each resolve at dtsd
    int batch = 500;                                 // tries taken per pass
  };
  // `tries` is borrowed and must outlive Stop.
  CheckBack(Options options, std::shared_ptr<CoordinatorCalls> calls, PendingTries* tries);
  ~CheckBack();  // Stop()

  // Runs a pass every interval on a thread of its own until Stop.
  void Start();
  // Waits for the pass under way, if any; none starts after. Idempotent.
  void Stop();
  // One pass, on the caller's thread.
  void RunOnce();

 private:
  bool Stopping();
  void Postpone(const PendingTry& t, absl::Duration after);

  const Options options_;
  std::shared_ptr<CoordinatorCalls> calls_;
  PendingTries* const tries_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  absl::flat_hash_set<std::string> reported_lost_;  // the pass's thread only
};

}  // namespace formica::dts
