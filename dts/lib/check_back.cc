#include "check_back.h"

#include <spdlog/spdlog.h>

#include "absl/time/clock.h"
#include "coordinator_calls.h"
#include "formica/dts/v1/dts.pb.h"

namespace formica::dts {

CheckBack::CheckBack(Options options, std::shared_ptr<CoordinatorCalls> calls, PendingTries* tries)
    : options_(std::move(options)), calls_(std::move(calls)), tries_(tries) {}

CheckBack::~CheckBack() { Stop(); }

void CheckBack::Start() {
  thread_ = std::thread([this] {
    absl::MutexLock lock(&mu_);
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    while (!mu_.AwaitWithTimeout(absl::Condition(&stop), options_.interval)) {
      mu_.Unlock();
      RunOnce();
      mu_.Lock();
    }
  });
}

void CheckBack::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool CheckBack::Stopping() {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

void CheckBack::Postpone(const PendingTry& t, absl::Duration after) {
  absl::Status st = tries_->Postpone(t, absl::Now() + after);
  if (!st.ok()) SPDLOG_WARN("{}: check-back: {}", options_.participant, st.ToString());
}

void CheckBack::RunOnce() {
  absl::StatusOr<std::vector<PendingTry>> due = tries_->Due(absl::Now(), options_.batch);
  if (!due.ok()) {
    SPDLOG_WARN("{}: check-back: {}", options_.participant, due.status().ToString());
    return;
  }
  std::vector<std::pair<const PendingTry*, bool>> outcomes;
  for (const PendingTry& t : *due) {
    if (Stopping()) return;  // the participant is closing: the next start asks again
    v1::CoordinatorOp op;
    op.mutable_resolve()->set_activity_id(t.activity_id);
    v1::JoinedAction* mine = op.mutable_resolve()->add_actions();
    mine->set_participant(options_.participant);
    mine->set_action(t.action);
    absl::StatusOr<v1::OpResult> r = calls_->Run(op, options_.call_timeout);
    if (!r.ok()) {
      // Unknown to dtsd past its retention: for an operator, asked about
      // rarely. Otherwise dtsd could not be asked: soon again.
      bool lost = absl::IsNotFound(r.status());
      if (lost && reported_lost_.insert(t.activity_id).second) {
        SPDLOG_ERROR("{}: the outcome of activity {} is unknown to dtsd: {}", options_.participant,
                     t.activity_id, r.status().ToString());
      }
      Postpone(t, lost ? absl::Minutes(10) : 5 * options_.interval);
      continue;
    }
    v1::ActivityState state = r->state();
    bool confirm = state == v1::COMMITTING || state == v1::COMMITTED;
    if (r->action_state() == v1::SETTLED) {
      // An operator finished it by hand: its step must not run as well.
      SPDLOG_WARN("{}: action {} of activity {} was settled by an operator; its {} is not run",
                  options_.participant, t.action, t.activity_id, confirm ? "confirm" : "cancel");
      absl::Status dropped = tries_->Drop(t);
      if (!dropped.ok()) {
        SPDLOG_WARN("{}: check-back: {}", options_.participant, dropped.ToString());
      }
      continue;
    }
    if (!confirm && state != v1::ROLLING_BACK && state != v1::ROLLED_BACK) {
      Postpone(t, options_.interval);  // not decided yet
      continue;
    }
    outcomes.emplace_back(&t, confirm);
  }
  if (outcomes.empty()) return;
  std::vector<absl::Status> ran = tries_->Finish(outcomes);
  for (size_t k = 0; k < ran.size() && k < outcomes.size(); ++k) {
    if (ran[k].ok()) continue;
    const PendingTry& t = *outcomes[k].first;
    SPDLOG_WARN("{}: check-back of {} in {}: {}", options_.participant, t.action, t.activity_id,
                ran[k].ToString());
    Postpone(t, 30 * options_.interval);
  }
}

}  // namespace formica::dts
