#include "activity_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "activity_id.h"
#include "formica/internal/names.h"

namespace formica::dts {
namespace {

using v1::ActivityState;

constexpr size_t kMaxNameLength = 256;
constexpr size_t kMaxPayloadBytes = 1 << 20;

int64_t UnixMs(absl::Time t) { return absl::ToUnixMillis(t); }

std::string Describe(const v1::Activity& a) {
  std::string out = absl::StrCat("activity ", a.id(), " is ", v1::ActivityState_Name(a.state()));
  if (!a.reason().empty()) absl::StrAppend(&out, " (", a.reason(), ")");
  return out;
}

bool PrintableChar(char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; }

absl::Status CheckName(absl::string_view field, const std::string& value, bool required) {
  return formica::CheckName(NameRule{field, kMaxNameLength, PrintableChar,
                                     "any character but control characters", required},
                            value);
}

std::string TimeoutReason(const v1::Activity& a) {
  if (a.begun_unix_ms() >= a.deadline_unix_ms()) return "not decided by its deadline";
  return absl::StrCat(
      "timed out after ",
      absl::FormatDuration(absl::Milliseconds(a.deadline_unix_ms() - a.begun_unix_ms())));
}

std::string Who(absl::string_view identity) {
  return identity.empty() ? std::string("(no certificate)") : absl::StrCat("'", identity, "'");
}

// Only the identity that began `a` decides it (docs/security.md).
absl::Status CheckInitiator(const v1::Activity& a, absl::string_view identity, bool commit) {
  if (a.initiator_identity().empty() || a.initiator_identity() == identity) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("identity ", Who(identity), " may not ", commit ? "commit" : "roll back",
                   " activity ", a.id(), ": it was begun by '", a.initiator_identity(),
                   "', and only the identity that began an activity decides it"));
}

// Only the identity that enlisted `x` enlists it again or checks back about it.
absl::Status CheckEnlister(const v1::Activity& a, const v1::Action& x, absl::string_view identity,
                           absl::string_view act) {
  if (x.identity().empty() || x.identity() == identity) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "identity ", Who(identity), " may not ", act, " action ", x.name(), " of participant ",
      x.participant(), " in activity ", a.id(), ": it was enlisted by '", x.identity(),
      "', and only that identity reports on it"));
}

}  // namespace

ActivityEngine::ActivityEngine(ActivityStore* store, Clock* clock, PhaseTwoScheduler* scheduler,
                               ActivityLimits limits, uint64_t epoch)
    : store_(store), clock_(clock), scheduler_(scheduler), limits_(limits), epoch_(epoch) {}

ActivityStats ActivityEngine::stats() {
  ActivityStats s;
  s.begun = begun_.load();
  s.committed = committed_.load();
  s.rolled_back = rolled_back_.load();
  s.timed_out = timed_out_.load();
  {
    absl::MutexLock lock(&mu_);
    s.unfinished = entries_.size();
  }
  s.phase_two_failures = phase_two_failures_.load();
  s.phase_two_retries = phase_two_retries_.load();
  s.synced_writes = synced_writes_.load();
  s.check_backs = check_backs_.load();
  return s;
}

UnfinishedView ActivityEngine::Unfinished() {
  std::vector<std::shared_ptr<Entry>> live;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : entries_) live.push_back(e);
  }
  UnfinishedView view;
  for (const std::shared_ptr<Entry>& e : live) {  // an entry's mu after the engine's is released
    absl::MutexLock lock(&e->mu);
    ++view.by_state[v1::ActivityState_Name(e->record.state())];
    int64_t begun = e->record.begun_unix_ms();
    if (begun > 0 && (view.oldest_begun_unix_ms == 0 || begun < view.oldest_begun_unix_ms)) {
      view.oldest_begun_unix_ms = begun;
    }
  }
  view.now_unix_ms = absl::ToUnixMillis(clock_->Now());
  return view;
}

// ---- operations ----

absl::Status ActivityEngine::Begin(const v1::BeginRequest& req, v1::BeginResponse* resp,
                                   absl::string_view identity) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  if (absl::Status st = CheckName("name", req.name(), true); !st.ok()) return st;
  if (absl::Status st = CheckName("initiator", req.initiator(), false); !st.ok()) return st;
  absl::Duration timeout =
      req.timeout_ms() == 0 ? limits_.default_timeout : absl::Milliseconds(req.timeout_ms());
  if (timeout > limits_.max_timeout) {
    return absl::InvalidArgumentError(absl::StrCat("timeout_ms ", req.timeout_ms(),
                                                   " exceeds the coordinator's maximum of ",
                                                   absl::FormatDuration(limits_.max_timeout)));
  }
  auto e = std::make_shared<Entry>();
  absl::Time now = clock_->Now();
  std::string id = absl::StrFormat("%08x-%012x", epoch_.load(), seq_.fetch_add(1) + 1);
  {
    absl::MutexLock lock(&e->mu);
    v1::Activity& a = e->record;
    a.set_id(id);
    a.set_name(req.name());
    a.set_initiator(req.initiator());
    a.set_initiator_identity(std::string(identity));
    a.set_state(v1::ACTIVE);
    a.set_begun_unix_ms(UnixMs(now));
    a.set_deadline_unix_ms(UnixMs(now + timeout));
    // Not synced: the first enlisted action's synced write carries it to
    // disk. An activity lost before that had nothing to undo, and its
    // initiator learns it at its first enlist (NOT_FOUND).
    if (absl::Status st = store_->Put(a, false); !st.ok()) return st;
  }
  {
    absl::MutexLock lock(&mu_);
    entries_[id] = e;
  }
  scheduler_->Add(now + timeout, PhaseTwoTask{id, PhaseTwoTask::kTimeout, 0});
  begun_.fetch_add(1, std::memory_order_relaxed);
  resp->set_activity_id(id);
  return absl::OkStatus();
}

void ActivityEngine::ExpireIfDueLocked(Entry& e) {
  v1::Activity& a = e.record;
  if (a.state() == v1::ACTIVE && clock_->Now() >= absl::FromUnixMillis(a.deadline_unix_ms())) {
    timed_out_.fetch_add(1, std::memory_order_relaxed);
    DecideLocked(e, false, TimeoutReason(a), /*durable=*/true).IgnoreError();
  }
}

absl::Status ActivityEngine::Enlist(const v1::EnlistRequest& req, absl::string_view identity) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  if (absl::Status st = CheckName("participant", req.participant(), true); !st.ok()) return st;
  if (absl::Status st = CheckName("action", req.action(), true); !st.ok()) return st;
  if (req.payload().size() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload is ", req.payload().size(), " bytes; at most ", kMaxPayloadBytes));
  }
  absl::StatusOr<std::shared_ptr<Entry>> found =
      FindOrTakeUp(req.activity_id(), nullptr, /*refuse_far=*/true);
  if (!found.ok()) return found.status();
  std::shared_ptr<Entry> e = *std::move(found);
  if (e == nullptr) return Missing(req.activity_id());
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  ExpireIfDueLocked(*e);
  if (a.state() != v1::ACTIVE) {
    return absl::FailedPreconditionError(absl::StrCat(Describe(a), "; cannot enlist"));
  }
  for (const v1::Action& x : a.actions()) {
    if (x.participant() == req.participant() && x.name() == req.action()) {
      if (absl::Status st = CheckEnlister(a, x, identity, "enlist"); !st.ok()) return st;
      if (x.payload() == req.payload()) return absl::OkStatus();  // a repeated try
      return absl::FailedPreconditionError(absl::StrCat(
          "action ", req.action(), " of ", req.participant(), " is already enlisted in activity ",
          a.id(), " with another payload; give each action of an activity its own name"));
    }
  }
  if (a.actions_size() >= limits_.max_actions) {
    return absl::ResourceExhaustedError(absl::StrCat("activity ", a.id(), " already has ",
                                                     a.actions_size(),
                                                     " actions, the coordinator's limit"));
  }
  v1::Action* x = a.add_actions();
  x->set_participant(req.participant());
  x->set_name(req.action());
  x->set_payload(req.payload());
  x->set_state(v1::ENLISTED);
  x->set_enlisted_unix_ms(UnixMs(clock_->Now()));
  x->set_identity(std::string(identity));
  e->token.push_back(0);
  e->calling.push_back(false);
  synced_writes_.fetch_add(1, std::memory_order_relaxed);
  // Only this action is written (synced before the answer).
  if (absl::Status st = store_->PutAction(a.id(), a.actions_size() - 1, *x, false); !st.ok()) {
    a.mutable_actions()->RemoveLast();
    e->token.pop_back();
    e->calling.pop_back();
    return st;
  }
  return absl::OkStatus();
}

absl::Status ActivityEngine::Decide(const v1::ActivityRef& req, bool commit,
                                    v1::DecisionResponse* resp, std::function<void()>* after_sync,
                                    absl::string_view identity) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  if (absl::Status st = CheckName("name", req.name(), false); !st.ok()) return st;
  if (absl::Status st = CheckName("initiator", req.initiator(), false); !st.ok()) return st;
  for (const v1::JoinedAction& j : req.actions()) {
    if (absl::Status st = CheckName("participant", j.participant(), true); !st.ok()) return st;
    if (absl::Status st = CheckName("action", j.action(), true); !st.ok()) return st;
  }
  absl::StatusOr<std::shared_ptr<Entry>> found =
      FindOrTakeUp(req.activity_id(), &req, /*refuse_far=*/commit);
  if (!found.ok()) return found.status();
  std::shared_ptr<Entry> e = *std::move(found);
  if (e == nullptr) {
    // Finished already: a repeat of the same decision is a success.
    absl::StatusOr<v1::Activity> a = Get(req.activity_id());
    if (!a.ok()) return a.status();
    if (absl::Status st = CheckInitiator(*a, identity, commit); !st.ok()) return st;
    if (a->state() == (commit ? v1::COMMITTED : v1::ROLLED_BACK)) {
      resp->set_state(a->state());
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(*a), "; cannot ", commit ? "commit" : "roll back"));
  }
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  if (absl::Status st = CheckInitiator(a, identity, commit); !st.ok()) return st;
  if (commit) ExpireIfDueLocked(*e);
  ActivityState same = commit ? v1::COMMITTING : v1::ROLLING_BACK;
  ActivityState done = commit ? v1::COMMITTED : v1::ROLLED_BACK;
  if (a.state() == same || a.state() == done) {
    resp->set_state(a.state());
    return absl::OkStatus();
  }
  if (a.state() != v1::ACTIVE) {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(a), "; cannot ", commit ? "commit" : "roll back"));
  }
  std::string reason =
      commit ? "" : (req.reason().empty() ? "rolled back by the initiator" : req.reason());
  if (a.name().empty()) {  // taken up at an enlist: the decision names it
    a.set_name(req.name());
    a.set_initiator(req.initiator());
  }
  // Begun by its initiator without a round trip: the identity deciding it
  // is recorded with the decision.
  const bool claimed = a.initiator_identity().empty() && !identity.empty();
  if (claimed) a.set_initiator_identity(std::string(identity));
  // The reported actions are written whole with the decision, in one write.
  const int first_new = a.actions_size();
  absl::Status st = AddJoinedLocked(*e, req);
  if (st.ok()) {
    st = DecideLocked(*e, commit, reason, /*durable=*/false, first_new);
    if (!st.ok()) DropActionsLocked(*e, first_new);
  }
  if (!st.ok()) {
    if (claimed) a.clear_initiator_identity();
    return st;
  }
  *after_sync = StarterFor(e);
  resp->set_state(a.state());
  return absl::OkStatus();
}

std::function<void()> ActivityEngine::StarterFor(const std::shared_ptr<Entry>& e) {
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&gate_mu_);
    generation = generation_;
  }
  return [this, e, generation] {
    CallScope scope(this, generation);  // not for a later leadership's engine
    if (!scope.ok()) return;
    absl::MutexLock lock(&e->mu);
    if (IsDecided(e->record.state())) {
      e->decision_durable = true;
      StartPhaseTwoLocked(*e);
    }
  };
}

absl::Status ActivityEngine::AddJoinedLocked(Entry& e, const v1::ActivityRef& req) {
  v1::Activity& a = e.record;
  const int before = a.actions_size();
  for (const v1::JoinedAction& j : req.actions()) {
    bool known = false;
    for (const v1::Action& x : a.actions()) {
      known = known || (x.participant() == j.participant() && x.name() == j.action());
    }
    if (known) continue;
    if (a.actions_size() >= limits_.max_actions) {
      DropActionsLocked(e, before);
      return absl::ResourceExhaustedError(
          absl::StrCat("activity ", a.id(), " would have more than ", limits_.max_actions,
                       " actions, the coordinator's limit"));
    }
    v1::Action* x = a.add_actions();
    x->set_participant(j.participant());
    x->set_name(j.action());
    x->set_state(v1::ENLISTED);
    x->set_payload_at_participant(true);
    x->set_payload(j.route());  // handed back in phase two (payload_at_participant tells why)
    x->set_enlisted_unix_ms(UnixMs(clock_->Now()));
    e.token.push_back(0);
    e.calling.push_back(false);
  }
  return absl::OkStatus();
}

void ActivityEngine::DropActionsLocked(Entry& e, int from) {
  while (e.record.actions_size() > from) {
    e.record.mutable_actions()->RemoveLast();
    e.token.pop_back();
    e.calling.pop_back();
  }
}

absl::Status ActivityEngine::Resolve(const v1::ActivityRef& req, v1::ActivityState* state,
                                     v1::ActionState* action_state,
                                     std::function<void()>* after_sync,
                                     absl::string_view identity) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  // The state of the action named; only for the identity that enlisted it.
  auto named = [&req, action_state, identity](const v1::Activity& a) {
    if (req.actions().empty()) return absl::OkStatus();
    for (const v1::Action& x : a.actions()) {
      if (x.participant() == req.actions(0).participant() && x.name() == req.actions(0).action()) {
        if (absl::Status st = CheckEnlister(a, x, identity, "check back about"); !st.ok()) {
          return st;
        }
        *action_state = x.state();
      }
    }
    return absl::OkStatus();
  };
  const std::string& id = req.activity_id();
  check_backs_.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Entry> e = FindLive(id);
  if (e == nullptr) {
    if (id.empty()) return absl::InvalidArgumentError("activity_id is required");
    absl::StatusOr<std::optional<v1::Activity>> stored = store_->Get(id);
    if (!stored.ok()) return stored.status();
    if (stored->has_value()) {
      if (absl::Status st = named(**stored); !st.ok()) return st;
      *state = (*stored)->state();
      return absl::OkStatus();
    }
    std::optional<absl::Time> deadline = DeadlineOfId(id);
    if (!deadline.has_value()) return absl::NotFoundError(absl::StrCat("no activity ", id));
    absl::Time now = clock_->Now();
    if (now < *deadline) {
      *state = v1::ACTIVE;  // its initiator may still commit it
      return absl::OkStatus();
    }
    if (now - *deadline > limits_.finished_retention) {
      return absl::NotFoundError(absl::StrCat(
          "no activity ", id, ", and its deadline passed more than ",
          absl::FormatDuration(limits_.finished_retention),
          " ago (the retention of finished activities): whether it committed is no longer "
          "recorded; settle the action by hand"));
    }
    absl::StatusOr<std::shared_ptr<Entry>> found = FindOrTakeUp(id, &req, /*refuse_far=*/false);
    if (!found.ok()) return found.status();
    e = *std::move(found);
    if (e == nullptr) {
      return Resolve(req, state, action_state, after_sync, identity);  // finished meanwhile
    }
  }
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  if (absl::Status st = named(a); !st.ok()) return st;
  if (a.state() == v1::ACTIVE && clock_->Now() >= absl::FromUnixMillis(a.deadline_unix_ms())) {
    timed_out_.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status st = DecideLocked(*e, false, TimeoutReason(a), /*durable=*/false); !st.ok()) {
      return st;
    }
    *after_sync = StarterFor(e);
  } else if (IsDecided(a.state()) && !e->decision_durable) {
    // Decided, not on disk yet: the answer waits for the sync, as the
    // decision's own answer does.
    *after_sync = [] {};
  }
  *state = a.state();
  return named(a);
}

absl::StatusOr<std::shared_ptr<ActivityEntry>> ActivityEngine::FindOrTakeUp(
    const std::string& id, const v1::ActivityRef* from, bool refuse_far) {
  // A decision (commit, rollback, or the rollback of a check-back) comes
  // right after and writes the record with it; an enlist writes only its
  // action, so the record is written here.
  const bool write_now = from == nullptr;
  if (std::shared_ptr<Entry> e = FindLive(id); e != nullptr) return e;
  std::optional<absl::Time> deadline = DeadlineOfId(id);
  if (!deadline.has_value()) return nullptr;
  absl::Time now = clock_->Now();
  if (refuse_far && *deadline - now > limits_.max_timeout) {
    return absl::InvalidArgumentError(absl::StrCat("activity ", id, " has its deadline more than ",
                                                   absl::FormatDuration(limits_.max_timeout),
                                                   " away, the coordinator's maximum"));
  }
  if (from != nullptr) {
    if (absl::Status st = CheckName("name", from->name(), false); !st.ok()) return st;
    if (absl::Status st = CheckName("initiator", from->initiator(), false); !st.ok()) return st;
  }
  // Finished already (and so not live): not taken up again. An activity is
  // written to the store as finished before it leaves the live ones, so
  // either the lookup above or this one sees it.
  absl::StatusOr<std::optional<v1::Activity>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (stored->has_value()) return nullptr;
  auto e = std::make_shared<Entry>();
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  a.set_id(id);
  a.set_name(from != nullptr ? from->name() : "");
  a.set_initiator(from != nullptr ? from->initiator() : "");
  a.set_state(v1::ACTIVE);
  a.set_begun_unix_ms(std::min(UnixMs(now), UnixMs(*deadline)));
  a.set_deadline_unix_ms(UnixMs(*deadline));
  {
    absl::MutexLock l(&mu_);
    auto [it, added] = entries_.emplace(id, e);
    if (!added) return it->second;  // taken up by another call meanwhile
  }
  // Not synced: the write of its first action or decision carries it.
  if (absl::Status st = write_now ? store_->Put(a, false) : absl::OkStatus(); !st.ok()) {
    absl::MutexLock l(&mu_);
    entries_.erase(id);
    return st;
  }
  begun_.fetch_add(1, std::memory_order_relaxed);
  scheduler_->Add(*deadline, PhaseTwoTask{id, PhaseTwoTask::kTimeout, 0});
  return e;
}

absl::Status ActivityEngine::Retry(const v1::ActivityRef& req, v1::DecisionResponse* resp) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  std::shared_ptr<Entry> e = FindLive(req.activity_id());
  if (e == nullptr) {
    absl::StatusOr<v1::Activity> a = Get(req.activity_id());
    if (!a.ok()) return a.status();
    return absl::FailedPreconditionError(absl::StrCat(Describe(*a), "; nothing to retry"));
  }
  absl::MutexLock lock(&e->mu);
  if (!IsDecided(e->record.state()) || !e->decision_durable) {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(e->record),
                     "; only a decided activity's phase two is retried, once the "
                     "decision is on disk"));
  }
  SPDLOG_INFO("operator retries phase two of {}", e->record.id());
  ScheduleActionsLocked(*e, clock_->Now(), /*reset=*/true);
  resp->set_state(e->record.state());
  return absl::OkStatus();
}

absl::Status ActivityEngine::Settle(const v1::ActivityRef& req, v1::DecisionResponse* resp) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  if (req.reason().empty()) {
    return absl::InvalidArgumentError("settling needs a reason, for the record");
  }
  std::shared_ptr<Entry> e = FindLive(req.activity_id());
  if (e == nullptr) {
    absl::StatusOr<v1::Activity> a = Get(req.activity_id());
    if (!a.ok()) return a.status();
    return absl::FailedPreconditionError(absl::StrCat(Describe(*a), "; nothing to settle"));
  }
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  if (!IsDecided(a.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(a), "; commit or roll it back before settling"));
  }
  std::vector<v1::ActionState> states_before;
  for (v1::Action& x : *a.mutable_actions()) {
    states_before.push_back(x.state());
    if (!IsDone(x.state())) x.set_state(v1::SETTLED);
  }
  std::string reason_before = a.reason();
  a.set_reason(absl::StrCat(a.reason().empty() ? "" : a.reason() + "; ",
                            "settled by an operator: ", req.reason()));
  if (absl::Status st = FinishLocked(*e, /*sync=*/true); !st.ok()) {
    for (int i = 0; i < a.actions_size(); ++i) a.mutable_actions(i)->set_state(states_before[i]);
    a.set_reason(reason_before);
    return st;
  }
  SPDLOG_WARN("{} settled by an operator: {}", a.id(), req.reason());
  resp->set_state(a.state());
  return absl::OkStatus();
}

absl::Status ActivityEngine::List(const v1::ListRequest& req, v1::ListResponse* resp) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  size_t limit = req.limit() == 0 ? 100 : req.limit();
  std::vector<ActivityState> states;
  for (int s : req.states()) {
    if (!v1::ActivityState_IsValid(s) || s == v1::ACTIVITY_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("unknown activity state ", s));
    }
    states.push_back(static_cast<ActivityState>(s));
  }
  bool finished_too = false;
  if (states.empty()) states = {v1::ACTIVE, v1::COMMITTING, v1::ROLLING_BACK};
  for (auto s : states) finished_too = finished_too || IsFinished(s);
  auto wanted = [&states](ActivityState s) {
    return std::find(states.begin(), states.end(), s) != states.end();
  };
  // Only what is answered is copied (with its actions and payloads).
  if (finished_too) {
    // The store holds every activity, newest first; live ones are read
    // from memory, where they may be newer than on disk.
    absl::Status read;
    absl::Status st = store_->ScanNewestFirst([&](const v1::Activity& own) {
      if (std::shared_ptr<Entry> e = FindLive(own.id()); e != nullptr) {
        absl::MutexLock lock(&e->mu);
        if (wanted(e->record.state())) *resp->add_activities() = e->record;
      } else if (wanted(own.state()) || !IsFinished(own.state())) {  // it may have ended since
        absl::StatusOr<std::optional<v1::Activity>> stored = store_->Get(own.id());
        if (!stored.ok()) {
          read = stored.status();
          return false;
        }
        if (stored->has_value() && wanted((*stored)->state())) {
          *resp->add_activities() = **std::move(stored);
        }
      }
      return static_cast<size_t>(resp->activities_size()) < limit;
    });
    if (!st.ok()) return st;
    if (!read.ok()) return read;
  } else {
    std::map<std::string, std::shared_ptr<Entry>> live;  // by id: creation order
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, e] : entries_) live.emplace(id, e);
    }
    for (auto it = live.rbegin(); it != live.rend(); ++it) {
      if (static_cast<size_t>(resp->activities_size()) >= limit) break;
      absl::MutexLock lock(&it->second->mu);
      if (wanted(it->second->record.state())) *resp->add_activities() = it->second->record;
    }
  }
  return absl::OkStatus();
}

// ---- decisions and phase two ----

// Records the decision. `durable`: synced now, and phase two starts;
// otherwise the caller syncs and then calls StartPhaseTwoLocked.
absl::Status ActivityEngine::DecideLocked(Entry& e, bool commit, const std::string& reason,
                                          bool durable, int first_new) {
  v1::Activity& a = e.record;
  int64_t decided_before = a.decided_unix_ms();
  std::string reason_before = a.reason();
  a.set_state(commit ? v1::COMMITTING : v1::ROLLING_BACK);
  a.set_decided_unix_ms(UnixMs(clock_->Now()));
  a.set_reason(reason);
  synced_writes_.fetch_add(1, std::memory_order_relaxed);
  int written_whole = first_new < 0 ? a.actions_size() : first_new;
  if (absl::Status st = store_->PutWithActions(a, written_whole, durable); !st.ok()) {
    a.set_state(v1::ACTIVE);
    a.set_decided_unix_ms(decided_before);
    a.set_reason(reason_before);
    return st;
  }
  if (!commit) SPDLOG_DEBUG("{} rolling back: {}", a.id(), reason);
  e.decision_durable = durable;
  if (durable) StartPhaseTwoLocked(e);
  return absl::OkStatus();
}

void ActivityEngine::StartPhaseTwoLocked(Entry& e) {
  if (e.record.actions_size() == 0) {
    if (absl::Status st = FinishLocked(e, false); !st.ok()) {
      SPDLOG_ERROR("cannot record the end of {}: {}", e.record.id(), st.ToString());
    }
    return;
  }
  ScheduleActionsLocked(e, clock_->Now(), false);
}

// Every action done: the activity ends. Not synced unless asked: losing
// it only repeats phase two, which participants take as a no-op.
absl::Status ActivityEngine::FinishLocked(Entry& e, bool sync) {
  v1::Activity& a = e.record;
  a.set_state(a.state() == v1::COMMITTING ? v1::COMMITTED : v1::ROLLED_BACK);
  a.set_finished_unix_ms(UnixMs(clock_->Now()));
  if (absl::Status st = store_->Put(a, sync); !st.ok()) {
    a.set_state(a.state() == v1::COMMITTED ? v1::COMMITTING : v1::ROLLING_BACK);
    return st;
  }
  (a.state() == v1::COMMITTED ? committed_ : rolled_back_).fetch_add(1);
  absl::MutexLock lock(&mu_);
  entries_.erase(a.id());
  return absl::OkStatus();
}

void ActivityEngine::ScheduleActionsLocked(Entry& e, absl::Time when, bool reset) {
  for (int i = 0; i < e.record.actions_size(); ++i) {
    v1::Action* x = e.record.mutable_actions(i);
    if (IsDone(x->state()) || e.calling[i]) continue;
    if (reset) x->set_attempts(0);
    scheduler_->Add(when, PhaseTwoTask{e.record.id(), i, ++e.token[i]});
  }
}

std::function<void()> ActivityEngine::Expire(const std::string& id) {
  std::shared_ptr<Entry> e = FindLive(id);
  if (e == nullptr) return nullptr;
  absl::MutexLock lock(&e->mu);
  v1::Activity& a = e->record;
  if (a.state() != v1::ACTIVE) {
    // Decided but not synced yet (an earlier round's sync failed, or an
    // answer still waits for its own): phase two starts once synced.
    return IsDecided(a.state()) && !e->decision_durable ? StarterFor(e) : nullptr;
  }
  absl::Time deadline = absl::FromUnixMillis(a.deadline_unix_ms());
  if (clock_->Now() < deadline) {
    scheduler_->Add(deadline, PhaseTwoTask{id, PhaseTwoTask::kTimeout, 0});
    return nullptr;
  }
  timed_out_.fetch_add(1, std::memory_order_relaxed);
  // Not synced here, under the activity's lock: the scheduler syncs every
  // expiry of its round at once (SyncExpired), then starts phase two.
  if (absl::Status st = DecideLocked(*e, false, TimeoutReason(a), /*durable=*/false); !st.ok()) {
    SPDLOG_ERROR("cannot roll back expired {}: {}; trying again in 1s", id, st.ToString());
    scheduler_->Add(clock_->Now() + absl::Seconds(1), PhaseTwoTask{id, PhaseTwoTask::kTimeout, 0});
    return nullptr;
  }
  return StarterFor(e);
}

absl::Status ActivityEngine::SyncExpired() { return store_->Sync(); }

std::optional<PhaseTwoCall> ActivityEngine::Prepare(const PhaseTwoTask& t) {
  std::shared_ptr<Entry> e = FindLive(t.id);
  if (e == nullptr) return std::nullopt;
  absl::MutexLock lock(&e->mu);
  const v1::Activity& a = e->record;
  if (t.action >= a.actions_size() || e->token[t.action] != t.token || e->calling[t.action] ||
      IsDone(a.actions(t.action).state()) || !IsDecided(a.state()) || !e->decision_durable) {
    return std::nullopt;
  }
  e->calling[t.action] = true;
  const v1::Action& x = a.actions(t.action);
  if (x.attempts() > 0) phase_two_retries_.fetch_add(1, std::memory_order_relaxed);
  PhaseTwoCall call{e, t.action, x.participant(), {}};
  call.item.set_activity_id(a.id());
  call.item.set_action(x.name());
  call.item.set_payload(x.payload());
  call.item.set_confirm(a.state() == v1::COMMITTING);
  return call;
}

void ActivityEngine::Completed(const PhaseTwoCall& call, const absl::Status& status) {
  Entry* e = call.entry.get();
  int index = call.index;
  absl::MutexLock lock(&e->mu);
  e->calling[index] = false;
  v1::Activity& a = e->record;
  v1::Action* x = a.mutable_actions(index);
  if (status.ok()) {
    x->set_state(a.state() == v1::COMMITTING ? v1::CONFIRMED : v1::CANCELLED);
    x->clear_last_error();
    bool all = true;
    for (const v1::Action& y : a.actions()) all = all && IsDone(y.state());
    if (all && IsDecided(a.state())) {
      if (absl::Status st = FinishLocked(*e, false); !st.ok()) {
        // Do this action again later (a no-op at the participant), and
        // with it the end of the activity.
        SPDLOG_ERROR("cannot record the end of {}: {}; trying again", a.id(), st.ToString());
        x->set_state(v1::ENLISTED);
        scheduler_->Add(clock_->Now() + limits_.retry_initial,
                        PhaseTwoTask{a.id(), index, ++e->token[index]});
      }
    }
  } else if (IsDecided(a.state()) && !IsDone(x->state())) {
    phase_two_failures_.fetch_add(1, std::memory_order_relaxed);
    x->set_attempts(x->attempts() + 1);
    x->set_last_error(status.ToString());
    uint32_t n = x->attempts();
    if ((n & (n - 1)) == 0) {  // 1, 2, 4, 8...: a log line per doubling
      SPDLOG_WARN("{} of {} action {}/{} failed (attempt {}): {}",
                  a.state() == v1::COMMITTING ? "confirm" : "cancel", a.id(), x->participant(),
                  x->name(), n, status.ToString());
    }
    scheduler_->Add(clock_->Now() + scheduler_->Backoff(n),
                    PhaseTwoTask{a.id(), index, ++e->token[index]});
  }
}

// ---- lookups and recovery ----

std::shared_ptr<ActivityEntry> ActivityEngine::FindLive(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second;
}

absl::Status ActivityEngine::Missing(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("activity_id is required");
  absl::StatusOr<std::optional<v1::Activity>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) {
    return absl::NotFoundError(absl::StrCat("no activity ", id));
  }
  return absl::FailedPreconditionError(absl::StrCat(Describe(**stored), "; cannot enlist"));
}

absl::StatusOr<v1::Activity> ActivityEngine::Get(const std::string& id) {
  CallScope scope(this);
  if (!scope.ok()) return scope.status();
  if (id.empty()) return absl::InvalidArgumentError("activity_id is required");
  if (std::shared_ptr<Entry> e = FindLive(id); e != nullptr) {
    absl::MutexLock lock(&e->mu);
    return e->record;
  }
  absl::StatusOr<std::optional<v1::Activity>> stored = store_->Get(id);
  if (!stored.ok()) return stored.status();
  if (!stored->has_value()) return absl::NotFoundError(absl::StrCat("no activity ", id));
  return **stored;
}

bool ActivityEngine::Adopt(v1::Activity record) {
  auto e = std::make_shared<Entry>();
  absl::MutexLock lock(&e->mu);
  e->record = std::move(record);
  e->token.assign(e->record.actions_size(), 0);
  e->calling.assign(e->record.actions_size(), false);
  e->decision_durable = IsDecided(e->record.state());  // read back from disk
  for (v1::Action& x : *e->record.mutable_actions()) x.set_attempts(0);
  {
    absl::MutexLock l(&mu_);
    entries_[e->record.id()] = e;
  }
  if (e->record.state() == v1::ACTIVE) {
    scheduler_->Add(absl::FromUnixMillis(e->record.deadline_unix_ms()),
                    PhaseTwoTask{e->record.id(), PhaseTwoTask::kTimeout, 0});
  }
  if (!IsDecided(e->record.state())) return false;
  bool all = true;
  for (const v1::Action& x : e->record.actions()) all = all && IsDone(x.state());
  if (all) {
    FinishLocked(*e, false).IgnoreError();
  } else {
    ScheduleActionsLocked(*e, clock_->Now(), false);
  }
  return true;
}

}  // namespace formica::dts
