// The TCC barrier: how a participant keeps try, confirm and cancel of one
// action safe, whatever order and however often they arrive. Rows in a
// barrier table, written in the same local transaction as the business
// change, make
//   - confirm and cancel idempotent (a repeat is a no-op success);
//   - a cancel with no try before it an empty rollback that succeeds;
//   - a try that arrives after its cancel refused (no hanging resources);
//   - confirm after cancel, or cancel after confirm, refused.
// The protocol is written once here, over BarrierRows; each participant
// kind brings an adapter for its store: dts::Participant over its SQLite
// database (participant.cc), dts::ShardedParticipant over a DDS shard
// (sharded_participant.cc).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace formica::dts {

enum class BarrierPhase { kTry, kConfirm, kCancel };

// "try", "confirm" or "cancel": the phase column's values.
const char* BarrierPhaseName(BarrierPhase phase);

// One action's barrier rows, as seen from inside the local transaction that
// also holds its business change. Implemented by each store's adapter.
class BarrierRows {
 public:
  virtual ~BarrierRows() = default;

  // Writes the row of `phase`; false when it was there already.
  virtual absl::StatusOr<bool> Mark(BarrierPhase phase) = 0;
  // Whether the row of `phase` is there. Where the store can, this locks
  // the row against a concurrent writer until the transaction ends.
  virtual absl::StatusOr<bool> Has(BarrierPhase phase) = 0;

  enum class TryClaim {
    kFirst,        // the try's row is written now: run its body
    kRepeat,       // the try ran before
    kAfterCancel,  // the action's cancel came first: refuse
  };
  // Claims the try of the action for this transaction.
  virtual absl::StatusOr<TryClaim> ClaimTry() = 0;

  // After a cancel found no try: keeps a later try from running. False when
  // the try is being written concurrently (the cancel must be retried).
  virtual absl::StatusOr<bool> BarLateTry() = 0;
};

// Which action the rows are for, for messages.
struct BarrierAction {
  absl::string_view participant;
  absl::string_view activity_id;
  absl::string_view action;
};

// The try's local work: claims the try and runs `body` when it is the first.
// A repeat is OK with `*keep` false (nothing of it to keep); a try after the
// cancel is ABORTED.
absl::Status TryUnderBarrier(BarrierRows& rows, const BarrierAction& a, bool* keep,
                             const std::function<absl::Status()>& body);

// A confirm's or cancel's local work: marks it and runs `step` when it is
// the first and allowed. A repeat is OK with `*keep` false; the opposite
// outcome already recorded, or a confirm without a try, is
// FAILED_PRECONDITION; a cancel without a try is an empty rollback (OK,
// `step` not run) that bars a late try.
absl::Status PhaseTwoUnderBarrier(BarrierRows& rows, const BarrierAction& a, bool confirm,
                                  bool* keep, const std::function<absl::Status()>& step);

// The pending row of one action: the try of an activity whose initiator
// made its id (the id carries the deadline), kept with the try's payload
// until its confirm or cancel, so that phase two and the check-back (see
// check_back.h) have it. Implemented by each store's adapter, inside the
// local transaction that also holds the barrier rows.
class PendingRow {
 public:
  virtual ~PendingRow() = default;
  // The payload its try was given; nullopt when none is pending.
  virtual absl::StatusOr<std::optional<std::string>> Payload() = 0;
  // Records the try; its check-back is due at `deadline`.
  virtual absl::Status Add(absl::string_view payload, absl::Time deadline) = 0;
  virtual absl::Status Drop() = 0;
};

// The try of an activity begun by its initiator: as TryUnderBarrier, with
// the pending row written before `body` runs. A second try of the action
// with another payload is FAILED_PRECONDITION.
absl::Status RecordedTryUnderBarrier(BarrierRows& rows, PendingRow& pending, const BarrierAction& a,
                                     absl::string_view payload, absl::Time deadline, bool* keep,
                                     const std::function<absl::Status()>& body);

// Phase two of such a try: as PhaseTwoUnderBarrier; `step` gets `given`
// when it is not empty, else the payload kept in the pending row (dtsd
// sends none for a try reported back), and the row goes with a step kept.
absl::Status RecordedPhaseTwoUnderBarrier(
    BarrierRows& rows, PendingRow& pending, const BarrierAction& a, bool confirm, bool* keep,
    const std::string& given, const std::function<absl::Status(const std::string& payload)>& step);

// A try of an activity whose deadline is further away than any initiator
// may set (kMaxActivityTimeout) is refused: INVALID_ARGUMENT. It would stay
// undecided that long if its report were lost.
absl::Status CheckTryDeadline(absl::string_view activity_id, absl::Time deadline);

// The errors a participant gives before any local transaction: a try with
// no activity, an undeclared action, a phase two without its ids.
absl::Status CheckTry(const BarrierAction& a, bool declared);
absl::Status CheckPhaseTwo(absl::string_view activity_id, absl::string_view action);

// The confirm and cancel steps a participant declares per action. Thread-
// safe. `Step` is the participant kind's step type.
template <typename Step>
class DeclaredSteps {
 public:
  void Declare(const std::string& action, Step confirm, Step cancel) {
    absl::MutexLock lock(&mu_);
    steps_[action] = Pair{std::move(confirm), std::move(cancel)};
  }
  bool Declared(absl::string_view action) {
    absl::MutexLock lock(&mu_);
    return steps_.find(action) != steps_.end();
  }
  // The step, or UNIMPLEMENTED naming the action and `participant`.
  absl::StatusOr<Step> For(absl::string_view action, bool confirm, absl::string_view participant) {
    absl::MutexLock lock(&mu_);
    auto it = steps_.find(action);
    if (it == steps_.end()) {
      return absl::UnimplementedError(
          absl::StrCat("action '", action, "' is not declared by participant ", participant));
    }
    return confirm ? it->second.confirm : it->second.cancel;
  }

 private:
  struct Pair {
    Step confirm;
    Step cancel;
  };
  absl::Mutex mu_;
  std::map<std::string, Pair, std::less<>> steps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::dts
