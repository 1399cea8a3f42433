// ActivityEngine: the state machine of dtsd's business activities. An
// activity begins ACTIVE, gathers enlisted actions, is decided (COMMITTING
// or ROLLING_BACK) by its initiator or by its timeout, and ends (COMMITTED
// or ROLLED_BACK) once every action is confirmed or cancelled. Every change
// is written to the ActivityStore before it is answered; the caller (the
// gRPC adapter) makes the answer wait for a sync (GroupCommit). Timeouts
// and phase-two calls are run by a PhaseTwoScheduler, for which the engine
// is the PhaseTwoWork. Knows nothing of gRPC; time comes from a Clock.
// Thread-safe.
//
//   ActivityEngine engine(store, clock, &scheduler, limits, epoch);
//   scheduler.Attach(&engine);
//   v1::BeginResponse begun;
//   absl::Status st = engine.Begin(request, &begun);
//   std::function<void()> start;
//   st = engine.Decide(ref, /*commit=*/true, &decision, &start);
//   commit.AfterSync([=](const absl::Status& synced) {
//     if (!synced.ok()) return answer(synced);
//     if (start) start();
//     answer(st);
//   });
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "activity_store.h"
#include "formica/common/clock.h"
#include "formica/dts/v1/dts.pb.h"
#include "phase_two.h"

namespace formica::dts {

inline bool IsFinished(v1::ActivityState s) { return s == v1::COMMITTED || s == v1::ROLLED_BACK; }
inline bool IsDecided(v1::ActivityState s) { return s == v1::COMMITTING || s == v1::ROLLING_BACK; }
inline bool IsDone(v1::ActionState s) {
  return s == v1::CONFIRMED || s == v1::CANCELLED || s == v1::SETTLED;
}

// One unfinished activity. Lock order: an entry's mu before the engine's
// and the scheduler's.
struct ActivityEntry {
  absl::Mutex mu;
  v1::Activity record ABSL_GUARDED_BY(mu);
  // Per action: the token of its one live phase-two task, and whether a
  // call is out now. Stale tasks (older tokens) are dropped.
  std::vector<uint64_t> token ABSL_GUARDED_BY(mu);
  std::vector<bool> calling ABSL_GUARDED_BY(mu);
  // The decision is on disk: only then may confirms or cancels go out.
  bool decision_durable ABSL_GUARDED_BY(mu) = false;
};

struct ActivityLimits {
  absl::Duration default_timeout = absl::Seconds(30);  // when Begin names none
  absl::Duration max_timeout = absl::Hours(24);
  int max_actions = 1000;  // per activity
  // After the end of an activity could not be written: when to try again.
  absl::Duration retry_initial = absl::Milliseconds(200);
  // How long finished activities are kept: a check-back for an activity
  // whose deadline passed longer ago than this cannot be answered.
  absl::Duration finished_retention = absl::Hours(72);
};

struct ActivityStats {
  uint64_t begun = 0;
  uint64_t committed = 0;
  uint64_t rolled_back = 0;
  uint64_t timed_out = 0;
  uint64_t unfinished = 0;
  uint64_t phase_two_failures = 0;
  uint64_t phase_two_retries = 0;  // phase-two calls made again after a failed one
  uint64_t synced_writes = 0;      // enlists and decisions written to be synced
  uint64_t check_backs = 0;        // Resolve calls
};

// The unfinished activities now, for the metrics: how many in each state
// (ActivityState names) and when the oldest began.
struct UnfinishedView {
  std::map<std::string, uint64_t> by_state;
  int64_t oldest_begun_unix_ms = 0;  // 0: none
  int64_t now_unix_ms = 0;           // the engine's clock when read
};

class ActivityEngine final : public PhaseTwoWork {
 public:
  // Every pointer is borrowed and must outlive the engine. `epoch` (the
  // store's boot epoch) prefixes every activity id this engine makes.
  ActivityEngine(ActivityStore* store, Clock* clock, PhaseTwoScheduler* scheduler,
                 ActivityLimits limits, uint64_t epoch);

  // Each answers as the Coordinator RPC of the same name; none syncs.
  // `identity` is the caller's certificate identity ("" without TLS): the
  // identity that begins an activity is the only one that decides it, the
  // one that enlists an action the only one that enlists it again or checks
  // back about it (PERMISSION_DENIED naming both otherwise).
  absl::Status Begin(const v1::BeginRequest& req, v1::BeginResponse* resp,
                     absl::string_view identity = {});
  // The action is written; answer once a sync covers it.
  absl::Status Enlist(const v1::EnlistRequest& req, absl::string_view identity = {});
  // Records the decision. Answer once a sync covers it; when `*after_sync`
  // is set, run it first: it starts phase two of the decision now on disk.
  absl::Status Decide(const v1::ActivityRef& req, bool commit, v1::DecisionResponse* resp,
                      std::function<void()>* after_sync, absl::string_view identity = {});
  // A participant's check-back: the activity's state in `*state` (ACTIVE:
  // not decided yet, ask again later). An activity whose id carries its
  // deadline and that dtsd never saw decided is rolled back once the
  // deadline has passed (written; answer once a sync covers it, after
  // running `*after_sync` when set).
  // The state of the action `req` names (its first `actions` entry) goes
  // to `*action_state` when the activity has it.
  absl::Status Resolve(const v1::ActivityRef& req, v1::ActivityState* state,
                       v1::ActionState* action_state, std::function<void()>* after_sync,
                       absl::string_view identity = {});
  absl::Status Retry(const v1::ActivityRef& req, v1::DecisionResponse* resp);
  absl::Status Settle(const v1::ActivityRef& req, v1::DecisionResponse* resp);
  absl::Status List(const v1::ListRequest& req, v1::ListResponse* resp);
  absl::StatusOr<v1::Activity> Get(const std::string& id);

  // Takes back an unfinished activity read from the store at start: an
  // ACTIVE one waits for its deadline, a decided one resumes phase two at
  // once (its decision is on disk). Returns whether it was decided.
  bool Adopt(v1::Activity record);

  // Leadership (a replicated dtsd, docs/ha.md). The engine serves from
  // construction. StopServing refuses every later call UNAVAILABLE with
  // `refusal` and returns once the calls under way have returned; Reset
  // then forgets every live activity and takes `epoch` for the ids it
  // makes (REQUIRES: not serving, the scheduler stopped, idle and cleared);
  // Adopt takes back the unfinished ones and StartServing opens again.
  void StopServing(const std::string& refusal);
  void SetRefusal(const std::string& refusal);
  void Reset(uint64_t epoch);
  void StartServing();

  ActivityStats stats();
  // Reads every unfinished activity (each under its own lock).
  UnfinishedView Unfinished();

  // PhaseTwoWork: the scheduler's due tasks.
  std::function<void()> Expire(const std::string& id) override;
  absl::Status SyncExpired() override;
  std::optional<PhaseTwoCall> Prepare(const PhaseTwoTask& task) override;
  void Completed(const PhaseTwoCall& call, const absl::Status& outcome) override;

 private:
  using Entry = ActivityEntry;
  // Counts one call while the engine serves (StopServing waits for it);
  // refused when not serving, or serving another period than `generation`
  // (0: any).
  class CallScope {
   public:
    explicit CallScope(ActivityEngine* engine, uint64_t generation = 0);
    ~CallScope();
    bool ok() const { return status_.ok(); }
    const absl::Status& status() const { return status_; }

   private:
    ActivityEngine* const engine_;
    absl::Status status_;
  };

  std::shared_ptr<Entry> FindLive(const std::string& id);
  // The live entry of `id`; for an id that carries its deadline and that
  // dtsd never saw, a new ACTIVE one (its initiator began it without a
  // round trip). nullptr when it is not live otherwise (finished, or
  // unknown with an id made by Begin).
  // `refuse_far`: an id whose deadline is further away than max_timeout is
  // refused (a rollback is never refused for it).
  absl::StatusOr<std::shared_ptr<Entry>> FindOrTakeUp(const std::string& id,
                                                      const v1::ActivityRef* from, bool refuse_far);
  // Adds the actions a commit or rollback reports that are not enlisted yet,
  // in memory: the decision's write stores them.
  absl::Status AddJoinedLocked(Entry& e, const v1::ActivityRef& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  void DropActionsLocked(Entry& e, int from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  absl::Status Missing(const std::string& id);
  std::function<void()> StarterFor(const std::shared_ptr<Entry>& e);
  // Records the decision; actions from `first_new` on (-1: none) are new
  // and written whole in the same write.
  absl::Status DecideLocked(Entry& e, bool commit, const std::string& reason, bool durable,
                            int first_new = -1) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  void StartPhaseTwoLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  absl::Status FinishLocked(Entry& e, bool sync) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  void ScheduleActionsLocked(Entry& e, absl::Time when, bool reset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);
  // An ACTIVE activity past its deadline is rolled back (durably) first.
  void ExpireIfDueLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu);

  ActivityStore* const store_;
  Clock* const clock_;
  PhaseTwoScheduler* const scheduler_;
  const ActivityLimits limits_;
  std::atomic<uint64_t> epoch_;
  std::atomic<uint64_t> seq_{0};

  absl::Mutex gate_mu_;
  bool serving_ ABSL_GUARDED_BY(gate_mu_) = true;
  std::string refusal_ ABSL_GUARDED_BY(gate_mu_);
  int in_calls_ ABSL_GUARDED_BY(gate_mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(gate_mu_) = 1;  // one per serving period

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> begun_{0}, committed_{0}, rolled_back_{0}, timed_out_{0};
  std::atomic<uint64_t> phase_two_failures_{0}, synced_writes_{0}, check_backs_{0};
  std::atomic<uint64_t> phase_two_retries_{0};
};

}  // namespace formica::dts
