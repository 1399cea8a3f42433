#include "barrier.h"

#include "absl/time/clock.h"
#include "formica/dts/activity.h"

namespace formica::dts {

const char* BarrierPhaseName(BarrierPhase phase) {
  switch (phase) {
    case BarrierPhase::kTry:
      return "try";
    case BarrierPhase::kConfirm:
      return "confirm";
    case BarrierPhase::kCancel:
      return "cancel";
  }
  return "?";
}

absl::Status CheckTry(const BarrierAction& a, bool declared) {
  if (a.activity_id.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "try of '", a.action, "' outside a business activity (no txn id in the call context)"));
  }
  if (!declared) {
    return absl::InvalidArgumentError(
        absl::StrCat("action '", a.action, "' is not declared by participant ", a.participant));
  }
  return absl::OkStatus();
}

absl::Status CheckPhaseTwo(absl::string_view activity_id, absl::string_view action) {
  if (activity_id.empty() || action.empty()) {
    return absl::InvalidArgumentError("activity_id and action are required");
  }
  return absl::OkStatus();
}

absl::Status TryUnderBarrier(BarrierRows& rows, const BarrierAction& a, bool* keep,
                             const std::function<absl::Status()>& body) {
  absl::StatusOr<BarrierRows::TryClaim> claim = rows.ClaimTry();
  if (!claim.ok()) return claim.status();
  switch (*claim) {
    case BarrierRows::TryClaim::kAfterCancel:
      *keep = false;
      return absl::AbortedError(absl::StrCat("action ", a.action, " of activity ", a.activity_id,
                                             " was cancelled before its try arrived; refused"));
    case BarrierRows::TryClaim::kRepeat:
      *keep = false;  // done before
      return absl::OkStatus();
    case BarrierRows::TryClaim::kFirst:
      break;
  }
  return body();
}

absl::Status PhaseTwoUnderBarrier(BarrierRows& rows, const BarrierAction& a, bool confirm,
                                  bool* keep, const std::function<absl::Status()>& step) {
  // Read (and where the store can, locked) first: confirm and cancel of one
  // action wait for each other on its try row.
  absl::StatusOr<bool> tried = rows.Has(BarrierPhase::kTry);
  if (!tried.ok()) return tried.status();
  absl::StatusOr<bool> fresh = rows.Mark(confirm ? BarrierPhase::kConfirm : BarrierPhase::kCancel);
  if (!fresh.ok()) return fresh.status();
  if (!*fresh) {
    *keep = false;  // a repeat: done before
    return absl::OkStatus();
  }
  // Defense in depth: dtsd decides once, so the opposite outcome can only
  // be here after a fault; refuse rather than undo money twice.
  absl::StatusOr<bool> opposite =
      rows.Has(confirm ? BarrierPhase::kCancel : BarrierPhase::kConfirm);
  if (!opposite.ok()) return opposite.status();
  if (*opposite) {
    return absl::FailedPreconditionError(
        absl::StrCat("action ", a.action, " of activity ", a.activity_id, " was already ",
                     confirm ? "cancelled" : "confirmed", " by participant ", a.participant,
                     "; refusing to ", confirm ? "confirm" : "cancel", " it"));
  }
  if (!*tried) {
    if (confirm) {
      return absl::FailedPreconditionError(
          absl::StrCat("no try of action ", a.action, " in activity ", a.activity_id,
                       " was recorded by participant ", a.participant, "; nothing to confirm"));
    }
    // An empty rollback: nothing to undo, and a late try must not run.
    absl::StatusOr<bool> barred = rows.BarLateTry();
    if (!barred.ok()) return barred.status();
    if (*barred) return absl::OkStatus();
    return absl::AbortedError("the action's try arrived while it was cancelled; retry");
  }
  return step();
}

absl::Status RecordedTryUnderBarrier(BarrierRows& rows, PendingRow& pending, const BarrierAction& a,
                                     absl::string_view payload, absl::Time deadline, bool* keep,
                                     const std::function<absl::Status()>& body) {
  absl::StatusOr<std::optional<std::string>> before = pending.Payload();
  if (!before.ok()) return before.status();
  if (before->has_value() && **before != payload) {
    *keep = false;
    return absl::FailedPreconditionError(absl::StrCat(
        "action ", a.action, " of ", a.participant, " is already enlisted in activity ",
        a.activity_id, " with another payload; give each action of an activity its own name"));
  }
  return TryUnderBarrier(rows, a, keep, [&]() -> absl::Status {
    if (absl::Status st = pending.Add(payload, deadline); !st.ok()) return st;
    return body();
  });
}

absl::Status RecordedPhaseTwoUnderBarrier(
    BarrierRows& rows, PendingRow& pending, const BarrierAction& a, bool confirm, bool* keep,
    const std::string& given, const std::function<absl::Status(const std::string& payload)>& step) {
  absl::Status st = PhaseTwoUnderBarrier(rows, a, confirm, keep, [&]() -> absl::Status {
    if (!given.empty()) return step(given);
    absl::StatusOr<std::optional<std::string>> kept = pending.Payload();
    if (!kept.ok()) return kept.status();
    return step(kept->has_value() ? **kept : given);
  });
  if (st.ok() && *keep) return pending.Drop();
  return st;
}

absl::Status CheckTryDeadline(absl::string_view activity_id, absl::Time deadline) {
  if (deadline - absl::Now() > kMaxActivityTimeout + absl::Minutes(5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("activity ", activity_id, " has its deadline more than ",
                     absl::FormatDuration(kMaxActivityTimeout), " away; its try is refused"));
  }
  return absl::OkStatus();
}

}  // namespace formica::dts
