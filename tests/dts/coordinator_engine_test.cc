// dtsd's engines driven by a fake clock, without daemons or gRPC: the
// activity timeout (ActivityEngine) and the backoff of phase-two retries
// (PhaseTwoScheduler). Time only moves when a test advances it.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "activity_engine.h"
#include "activity_id.h"
#include "activity_store.h"
#include "coordinator.h"
#include "formica/common/clock.h"
#include "formica/common/config.h"
#include "phase_two.h"
#include "recovery.h"

namespace formica::dts {
namespace {

// Every activity whole, in memory.
class MemoryActivityStore : public ActivityStore {
 public:
  absl::Status Put(const v1::Activity& activity, bool sync) override {
    if (sync) {
      if (fail_syncs) return absl::UnavailableError("the log is unreachable");
      ++syncs_;
    }
    v1::Activity& stored = activities_[activity.id()];
    google::protobuf::RepeatedPtrField<v1::Action> actions = std::move(*stored.mutable_actions());
    stored = activity;
    stored.clear_actions();
    for (int i = 0; i < activity.actions_size(); ++i) {
      v1::Action x = i < actions.size() ? actions[i] : activity.actions(i);
      x.set_state(activity.actions(i).state());
      x.set_attempts(activity.actions(i).attempts());
      x.set_last_error(activity.actions(i).last_error());
      *stored.add_actions() = std::move(x);
    }
    return absl::OkStatus();
  }
  absl::Status PutAction(const std::string& id, int index, const v1::Action& action,
                         bool) override {
    v1::Activity& stored = activities_[id];
    while (stored.actions_size() <= index) stored.add_actions();
    *stored.mutable_actions(index) = action;
    return absl::OkStatus();
  }
  absl::Status Sync() override {
    if (fail_syncs) return absl::UnavailableError("the log is unreachable");
    ++syncs_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) override {
    auto it = activities_.find(id);
    if (it == activities_.end()) return std::optional<v1::Activity>();
    return std::optional<v1::Activity>(it->second);
  }
  absl::Status Scan(const std::function<bool(const v1::Activity&)>& visit) override {
    for (const auto& [id, a] : activities_) {
      if (!visit(a)) break;
    }
    return absl::OkStatus();
  }
  absl::Status ScanNewestFirst(const std::function<bool(const v1::Activity&)>& visit) override {
    for (auto it = activities_.rbegin(); it != activities_.rend(); ++it) {
      if (!visit(it->second)) break;
    }
    return absl::OkStatus();
  }
  absl::Status Delete(const std::string& id) override {
    activities_.erase(id);
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> NextBootEpoch() override { return 1; }
  uint64_t syncs() const override { return syncs_; }
  uint64_t written_bytes() const override { return 0; }

  bool fail_syncs = false;

 private:
  uint64_t syncs_ = 0;
  std::map<std::string, v1::Activity> activities_;
};

// Keeps what the scheduler sends; the test answers it.
class FakeSender : public PhaseTwoSender {
 public:
  struct Sent {
    absl::Time at;
    std::string participant;
    v1::PhaseTwoItem item;
    std::function<void(size_t, absl::Status)> done;
    size_t index;
  };
  explicit FakeSender(Clock* clock) : clock_(clock) {}
  void Send(const std::string& participant, std::vector<v1::PhaseTwoItem> items,
            std::function<void(size_t, absl::Status)> done) override {
    for (size_t i = 0; i < items.size(); ++i) {
      sent.push_back(Sent{clock_->Now(), participant, std::move(items[i]), done, i});
    }
  }
  // Answers the oldest unanswered call.
  void Answer(const absl::Status& outcome) {
    ASSERT_LT(answered, sent.size());
    Sent& s = sent[answered++];
    s.done(s.index, outcome);
  }
  size_t unanswered() const { return sent.size() - answered; }

  std::vector<Sent> sent;
  size_t answered = 0;

 private:
  Clock* clock_;
};

class DtsEngines : public ::testing::Test {
 protected:
  static constexpr absl::Duration kRetryInitial = absl::Milliseconds(100);
  static constexpr absl::Duration kRetryMax = absl::Seconds(1);
  static constexpr absl::Duration kRetention = absl::Hours(72);

  // An id as an initiator makes it, carrying `deadline`.
  static std::string IdWithDeadline(absl::Time deadline, int n = 1) {
    return absl::StrFormat("%011x-%024x", absl::ToUnixMillis(deadline), n);
  }

  // A commit or rollback as an initiator that began without a round trip
  // sends it: with the actions its tries reported back.
  absl::Status DecideWith(const std::string& id, bool commit,
                          const std::vector<std::pair<std::string, std::string>>& actions) {
    v1::ActivityRef ref;
    ref.set_activity_id(id);
    ref.set_name("test.Transfer");
    for (const auto& [participant, action] : actions) {
      v1::JoinedAction* j = ref.add_actions();
      j->set_participant(participant);
      j->set_action(action);
    }
    v1::DecisionResponse decision;
    std::function<void()> start;
    absl::Status st = engine_.Decide(ref, commit, &decision, &start);
    if (start) start();
    return st;
  }

  // A participant's check-back.
  absl::StatusOr<v1::ActivityState> Resolve(const std::string& id) {
    v1::ActivityRef ref;
    ref.set_activity_id(id);
    v1::ActivityState state = v1::ACTIVITY_STATE_UNSPECIFIED;
    v1::ActionState action_state = v1::ACTION_STATE_UNSPECIFIED;
    std::function<void()> start;
    absl::Status st = engine_.Resolve(ref, &state, &action_state, &start);
    if (start) start();
    if (!st.ok()) return st;
    return state;
  }

  DtsEngines()
      : sender_(&clock_),
        scheduler_(&clock_, PhaseTwoOptions{kRetryInitial, kRetryMax, 512, /*seed=*/42}, &sender_),
        engine_(&store_, &clock_, &scheduler_,
                ActivityLimits{absl::Seconds(30), absl::Hours(1), 100, kRetryInitial, kRetention},
                1) {
    scheduler_.Attach(&engine_);
  }

  // Begins an activity with `timeout` and enlists one action of "bank.a".
  std::string BeginWithOneAction(absl::Duration timeout) {
    v1::BeginRequest begin;
    begin.set_name("test.Transfer");
    begin.set_timeout_ms(absl::ToInt64Milliseconds(timeout));
    v1::BeginResponse begun;
    EXPECT_TRUE(engine_.Begin(begin, &begun).ok());
    v1::EnlistRequest enlist;
    enlist.set_activity_id(begun.activity_id());
    enlist.set_participant("bank.a");
    enlist.set_action("debit");
    enlist.set_payload("100");
    EXPECT_TRUE(engine_.Enlist(enlist).ok());
    return begun.activity_id();
  }

  // Decides, and then does what the gRPC adapter does once the decision is
  // synced.
  absl::Status Decide(const std::string& id, bool commit) {
    v1::ActivityRef ref;
    ref.set_activity_id(id);
    v1::DecisionResponse decision;
    std::function<void()> start;
    absl::Status st = engine_.Decide(ref, commit, &decision, &start);
    if (start) start();
    return st;
  }

  v1::ActivityState State(const std::string& id) {
    absl::StatusOr<v1::Activity> a = engine_.Get(id);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? a->state() : v1::ACTIVITY_STATE_UNSPECIFIED;
  }

  // Moves time by `d` and runs what fell due, twice: a decision made by a
  // due timeout schedules its phase two for now.
  void Advance(absl::Duration d) {
    clock_.Advance(d);
    scheduler_.RunDue();
    scheduler_.RunDue();
  }

  FakeClock clock_;
  MemoryActivityStore store_;
  FakeSender sender_;
  PhaseTwoScheduler scheduler_;
  ActivityEngine engine_;
};

TEST_F(DtsEngines, AnActivityNotDecidedWithinItsTimeoutIsRolledBackAndItsActionsCancelled) {
  std::string id = BeginWithOneAction(absl::Seconds(1));

  Advance(absl::Milliseconds(999));
  EXPECT_EQ(State(id), v1::ACTIVE);
  EXPECT_TRUE(sender_.sent.empty());

  Advance(absl::Milliseconds(1));
  absl::StatusOr<v1::Activity> a = engine_.Get(id);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->state(), v1::ROLLING_BACK);
  EXPECT_TRUE(absl::StrContains(a->reason(), "timed out after 1s")) << a->reason();
  EXPECT_EQ(engine_.stats().timed_out, 1u);
  ASSERT_EQ(sender_.sent.size(), 1u);
  EXPECT_FALSE(sender_.sent[0].item.confirm());  // a cancel
  EXPECT_EQ(sender_.sent[0].item.action(), "debit");

  sender_.Answer(absl::OkStatus());
  EXPECT_EQ(State(id), v1::ROLLED_BACK);
}

TEST_F(DtsEngines, TimeoutsDueTogetherCostOneSyncAndPhaseTwoWaitsForIt) {
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(BeginWithOneAction(absl::Seconds(1)));
  // The sync fails (a replicated store's lost leadership): decided, no
  // cancel goes out on a decision that may not be in the log.
  store_.fail_syncs = true;
  Advance(absl::Seconds(1));
  EXPECT_TRUE(sender_.sent.empty());
  for (const std::string& id : ids) EXPECT_EQ(State(id), v1::ROLLING_BACK);
  store_.fail_syncs = false;
  uint64_t before = store_.syncs();
  Advance(absl::Seconds(1));  // tried again
  EXPECT_EQ(store_.syncs(), before + 1) << "one sync for the round's 20 expiries";
  EXPECT_EQ(sender_.sent.size(), 20u);
  EXPECT_EQ(engine_.stats().timed_out, 20u);
  for (const auto& call : sender_.sent) EXPECT_FALSE(call.item.confirm());
}

TEST_F(DtsEngines, AnActivityCommittedWithinItsTimeoutIsNotRolledBack) {
  std::string id = BeginWithOneAction(absl::Seconds(1));
  Advance(absl::Milliseconds(500));
  ASSERT_TRUE(Decide(id, /*commit=*/true).ok());
  EXPECT_EQ(State(id), v1::COMMITTING);
  Advance(absl::ZeroDuration());
  ASSERT_EQ(sender_.sent.size(), 1u);
  EXPECT_TRUE(sender_.sent[0].item.confirm());

  Advance(absl::Seconds(2));  // well past the deadline, the confirm still out
  EXPECT_EQ(State(id), v1::COMMITTING);
  sender_.Answer(absl::OkStatus());
  Advance(absl::Seconds(2));
  EXPECT_EQ(State(id), v1::COMMITTED);
  EXPECT_EQ(engine_.stats().timed_out, 0u);
  EXPECT_EQ(sender_.sent.size(), 1u);  // no cancel ever
}

TEST_F(DtsEngines, ACommitArrivingAfterTheTimeoutIsRefusedAndTheActivityRollsBack) {
  std::string id = BeginWithOneAction(absl::Seconds(1));
  clock_.Advance(absl::Seconds(1));  // due, but the scheduler has not run yet
  absl::Status st = Decide(id, /*commit=*/true);
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "ROLLING_BACK")) << st;
  EXPECT_EQ(engine_.stats().timed_out, 1u);
}

// Where the n-th failed attempt's retry may fall: the doubled, capped
// backoff times a factor in [0.5, 1).
absl::Duration BackoffCeiling(int attempts, absl::Duration initial, absl::Duration max) {
  absl::Duration d = initial;
  for (int i = 1; i < attempts; ++i) d = std::min(d * 2, max);
  return d;
}

TEST_F(DtsEngines, AFailingConfirmIsRetriedAtGrowingIntervalsUpToTheCapUntilItIsAnswered) {
  std::string id = BeginWithOneAction(absl::Seconds(10));
  ASSERT_TRUE(Decide(id, /*commit=*/true).ok());
  Advance(absl::ZeroDuration());
  ASSERT_EQ(sender_.sent.size(), 1u);

  constexpr int kFailures = 9;
  std::vector<absl::Duration> intervals;
  for (int attempt = 1; attempt <= kFailures; ++attempt) {
    ASSERT_EQ(sender_.unanswered(), 1u);
    absl::Time failed_at = clock_.Now();
    sender_.Answer(absl::UnavailableError("bank.a is down"));
    // Step a millisecond at a time until the retry goes out.
    while (sender_.unanswered() == 0) {
      ASSERT_LT(clock_.Now() - failed_at, absl::Seconds(5)) << "no retry after attempt " << attempt;
      Advance(absl::Milliseconds(1));
    }
    intervals.push_back(clock_.Now() - failed_at);
  }
  for (int n = 1; n <= kFailures; ++n) {
    absl::Duration ceiling = BackoffCeiling(n, kRetryInitial, kRetryMax);
    absl::Duration interval = intervals[n - 1];
    EXPECT_GE(interval, ceiling / 2) << "retry after attempt " << n;
    EXPECT_LE(interval, ceiling + absl::Milliseconds(1)) << "retry after attempt " << n;
  }
  // Growing: the retries after the cap is reached wait longer than the first.
  EXPECT_GT(intervals.back(), intervals.front() * 4);
  EXPECT_EQ(engine_.stats().phase_two_failures, static_cast<uint64_t>(kFailures));
  absl::StatusOr<v1::Activity> a = engine_.Get(id);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->actions(0).attempts(), static_cast<uint32_t>(kFailures));
  EXPECT_EQ(a->state(), v1::COMMITTING);

  sender_.Answer(absl::OkStatus());
  EXPECT_EQ(State(id), v1::COMMITTED);
  Advance(absl::Seconds(5));
  EXPECT_EQ(sender_.sent.size(), static_cast<size_t>(kFailures + 1));  // nothing after
  EXPECT_EQ(scheduler_.in_flight(), 0);
}

}  // namespace
}  // namespace formica::dts

namespace formica::dts {
namespace {

TEST_F(DtsEngines, ACommitNamingItsActionsTakesUpAnActivityBegunWithoutARoundTripAndConfirmsThem) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(10));
  ASSERT_EQ(engine_.Get(id).status().code(), absl::StatusCode::kNotFound) << "not begun at dtsd";
  ASSERT_TRUE(DecideWith(id, true, {{"bank.a", "debit"}, {"bank.b", "credit"}}).ok());
  absl::StatusOr<v1::Activity> a = engine_.Get(id);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->state(), v1::COMMITTING);
  EXPECT_EQ(a->name(), "test.Transfer");
  ASSERT_EQ(a->actions_size(), 2);
  EXPECT_TRUE(a->actions(0).payload_at_participant());
  Advance(absl::ZeroDuration());
  ASSERT_EQ(sender_.sent.size(), 2u);
  for (const auto& sent : sender_.sent) {
    EXPECT_TRUE(sent.item.confirm());
    EXPECT_TRUE(sent.item.payload().empty()) << "the participant keeps the payload";
  }
  EXPECT_EQ(sender_.sent[1].participant, "bank.b");
  sender_.Answer(absl::OkStatus());
  sender_.Answer(absl::OkStatus());
  EXPECT_EQ(State(id), v1::COMMITTED);
  EXPECT_TRUE(DecideWith(id, true, {{"bank.a", "debit"}}).ok()) << "a repeat is a success";
}

TEST_F(DtsEngines, ACheckBackBeforeTheDeadlineLeavesTheActivityOpenAndAfterItRollsItBackForGood) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(10));
  absl::StatusOr<v1::ActivityState> early = Resolve(id);
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_EQ(*early, v1::ACTIVE) << "its initiator may still commit it";
  EXPECT_EQ(engine_.Get(id).status().code(), absl::StatusCode::kNotFound) << "nothing recorded";

  Advance(absl::Seconds(10));
  absl::StatusOr<v1::ActivityState> late = Resolve(id);
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_TRUE(*late == v1::ROLLING_BACK || *late == v1::ROLLED_BACK)
      << v1::ActivityState_Name(*late);
  EXPECT_EQ(State(id), v1::ROLLED_BACK) << "no action of it is known here: it ends at once";

  absl::Status commit = DecideWith(id, true, {{"bank.a", "debit"}});
  EXPECT_EQ(commit.code(), absl::StatusCode::kFailedPrecondition) << commit;
  EXPECT_TRUE(absl::StrContains(commit.message(),
                                "is ROLLED_BACK (not decided by its deadline); cannot commit"))
      << commit;
}

TEST_F(DtsEngines, ACommitArrivingAfterTheDeadlineItsIdCarriesIsRefused) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(1));
  Advance(absl::Seconds(1));
  absl::Status commit = DecideWith(id, true, {{"bank.a", "debit"}});
  EXPECT_EQ(commit.code(), absl::StatusCode::kFailedPrecondition) << commit;
  Advance(absl::ZeroDuration());
  ASSERT_EQ(sender_.sent.size(), 0u) << "the action was not enlisted: its check-back cancels it";
  absl::StatusOr<v1::ActivityState> state = Resolve(id);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, v1::ROLLED_BACK);
}

TEST_F(DtsEngines, ACheckBackForAnActivityWhoseDeadlinePassedBeyondTheRetentionSaysItCannotTell) {
  std::string id = IdWithDeadline(clock_.Now() - kRetention - absl::Seconds(1));
  absl::StatusOr<v1::ActivityState> state = Resolve(id);
  EXPECT_EQ(state.status().code(), absl::StatusCode::kNotFound) << state.status();
  EXPECT_TRUE(absl::StrContains(state.status().message(), "no longer recorded")) << state.status();
  EXPECT_EQ(Resolve("00000001-000000000001").status().code(), absl::StatusCode::kNotFound)
      << "an id made by Begin carries no deadline";
}

TEST_F(DtsEngines, AnEnlistTakesUpAnActivityBegunWithoutARoundTripAndItsDeadlineStillHolds) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(2));
  v1::EnlistRequest enlist;
  enlist.set_activity_id(id);
  enlist.set_participant("bank.a");
  enlist.set_action("debit");
  enlist.set_payload("100");
  ASSERT_TRUE(engine_.Enlist(enlist).ok());
  EXPECT_EQ(State(id), v1::ACTIVE);
  Advance(absl::Seconds(2));
  EXPECT_EQ(State(id), v1::ROLLING_BACK);
  ASSERT_EQ(sender_.sent.size(), 1u);
  EXPECT_FALSE(sender_.sent[0].item.confirm());
  EXPECT_EQ(sender_.sent[0].item.payload(), "100");
  std::string far = IdWithDeadline(clock_.Now() + absl::Hours(2), 2);
  enlist.set_activity_id(far);
  absl::Status st = engine_.Enlist(enlist);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "the coordinator's maximum")) << st;
}

}  // namespace
}  // namespace formica::dts

namespace formica::dts {
namespace {

TEST_F(DtsEngines, ACheckBackDuringADecisionNotYetSyncedWaitsForTheSyncAndNamesTheActionsState) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(10));
  v1::ActivityRef commit;
  commit.set_activity_id(id);
  v1::JoinedAction* debit = commit.add_actions();
  debit->set_participant("bank.a");
  debit->set_action("debit");
  v1::DecisionResponse decision;
  std::function<void()> start;
  ASSERT_TRUE(engine_.Decide(commit, true, &decision, &start).ok());  // not synced yet
  ASSERT_TRUE(start != nullptr);

  v1::ActivityRef ask;
  ask.set_activity_id(id);
  *ask.add_actions() = *debit;
  v1::ActivityState state = v1::ACTIVITY_STATE_UNSPECIFIED;
  v1::ActionState action = v1::ACTION_STATE_UNSPECIFIED;
  std::function<void()> after;
  ASSERT_TRUE(engine_.Resolve(ask, &state, &action, &after).ok());
  EXPECT_EQ(state, v1::COMMITTING);
  EXPECT_EQ(action, v1::ENLISTED);
  EXPECT_TRUE(after != nullptr) << "the answer must wait for the decision's sync";

  start();  // the sync is done
  after = nullptr;
  ASSERT_TRUE(engine_.Resolve(ask, &state, &action, &after).ok());
  EXPECT_TRUE(after == nullptr) << "on disk: answered at once";

  // An operator settles it: the participant must not run its step then.
  v1::ActivityRef settle;
  settle.set_activity_id(id);
  settle.set_reason("credited by hand");
  v1::DecisionResponse settled;
  ASSERT_TRUE(engine_.Settle(settle, &settled).ok());
  ASSERT_TRUE(engine_.Resolve(ask, &state, &action, &after).ok());
  EXPECT_EQ(state, v1::COMMITTED);
  EXPECT_EQ(action, v1::SETTLED);
}

TEST_F(DtsEngines, ARollbackIsTakenEvenForAnIdWhoseDeadlineIsBeyondTheMaximum) {
  std::string far = IdWithDeadline(clock_.Now() + absl::Hours(2));
  absl::Status commit = DecideWith(far, true, {{"bank.a", "debit"}});
  EXPECT_EQ(commit.code(), absl::StatusCode::kInvalidArgument) << commit;
  absl::Status rollback = DecideWith(far, false, {{"bank.a", "debit"}});
  EXPECT_TRUE(rollback.ok()) << rollback;
  Advance(absl::ZeroDuration());
  ASSERT_EQ(sender_.sent.size(), 1u);
  EXPECT_FALSE(sender_.sent[0].item.confirm()) << "its try is cancelled, not left frozen";
}

// Identities (docs/security.md): an activity its initiator began itself is
// decided only by the identity that first decides it, a repeat of the
// decision included; an action enlisted by one identity is not re-enlisted
// or checked back about by another.
TEST_F(DtsEngines, AnActivityBegunWithoutARoundTripIsDecidedOnlyByItsFirstDecidersIdentity) {
  std::string id = IdWithDeadline(clock_.Now() + absl::Seconds(10));
  v1::EnlistRequest enlist;
  enlist.set_activity_id(id);
  enlist.set_participant("bank.a");
  enlist.set_action("debit");
  ASSERT_TRUE(engine_.Enlist(enlist, "bank-a").ok());
  EXPECT_EQ(engine_.Enlist(enlist, "bank-b").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(engine_.Enlist(enlist, "bank-a").ok()) << "its own repeated try";

  v1::ActivityRef ref;
  ref.set_activity_id(id);
  v1::DecisionResponse decision;
  std::function<void()> start;
  ASSERT_TRUE(engine_.Decide(ref, true, &decision, &start, "transfer").ok());
  start();
  absl::Status other = engine_.Decide(ref, false, &decision, &start, "bank-a");
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied) << other;
  EXPECT_EQ(other.message(), absl::StrCat("identity 'bank-a' may not roll back activity ", id,
                                          ": it was begun by 'transfer', and only the identity "
                                          "that began an activity decides it"));
  ref.add_actions()->set_participant("bank.a");
  ref.mutable_actions(0)->set_action("debit");
  v1::ActivityState state = v1::ACTIVITY_STATE_UNSPECIFIED;
  v1::ActionState action_state = v1::ACTION_STATE_UNSPECIFIED;
  std::function<void()> after;
  EXPECT_EQ(engine_.Resolve(ref, &state, &action_state, &after, "bank-b").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(engine_.Resolve(ref, &state, &action_state, &after, "bank-a").ok());
  EXPECT_EQ(action_state, v1::ENLISTED);

  Advance(absl::ZeroDuration());
  sender_.Answer(absl::OkStatus());
  ASSERT_EQ(State(id), v1::COMMITTED);
  EXPECT_EQ(engine_.Decide(ref, true, &decision, &start, "bank-b").code(),
            absl::StatusCode::kPermissionDenied)
      << "a repeat by another identity";
  EXPECT_TRUE(engine_.Decide(ref, true, &decision, &start, "transfer").ok());
}

// Without TLS no caller has an identity: anyone decides and reports, as
// before identities were recorded.
TEST_F(DtsEngines, WithoutIdentitiesAnyCallerDecidesAndReports) {
  std::string id = BeginWithOneAction(absl::Seconds(10));
  absl::StatusOr<v1::Activity> a = engine_.Get(id);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->initiator_identity(), "");
  EXPECT_EQ(a->actions(0).identity(), "");
  v1::EnlistRequest enlist;
  enlist.set_activity_id(id);
  enlist.set_participant("bank.a");
  enlist.set_action("debit");
  enlist.set_payload("100");
  EXPECT_TRUE(engine_.Enlist(enlist, "bank-b").ok());
  v1::ActivityRef ref;
  ref.set_activity_id(id);
  v1::DecisionResponse decision;
  std::function<void()> start;
  ASSERT_TRUE(engine_.Decide(ref, false, &decision, &start, "bank-b").ok());
  start();
  EXPECT_EQ(State(id), v1::ROLLING_BACK);
}

}  // namespace
}  // namespace formica::dts

namespace formica::dts {
namespace {

// A replicated dtsd's engine across a loss of leadership (docs/ha.md).
TEST_F(DtsEngines, AnEngineThatStopsServingRefusesNamingWhyAndStartsNoPhaseTwoOfTheOldLeadership) {
  std::string id = BeginWithOneAction(absl::Seconds(10));
  v1::ActivityRef ref;
  ref.set_activity_id(id);
  v1::DecisionResponse decision;
  std::function<void()> start;
  ASSERT_TRUE(engine_.Decide(ref, true, &decision, &start).ok());
  ASSERT_TRUE(start);
  engine_.StopServing("the leader is raft member 2");
  v1::BeginRequest begin;
  begin.set_name("test.Transfer");
  v1::BeginResponse begun;
  absl::Status st = engine_.Begin(begin, &begun);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(), "the leader is raft member 2");
  EXPECT_EQ(engine_.Get(id).status().code(), absl::StatusCode::kUnavailable);
  // The decision's sync finished after the step-down: its phase two is the
  // next leader's, not this one's.
  start();
  scheduler_.RunDue();
  EXPECT_EQ(sender_.sent.size(), 0u);
  // Leading again: what was live is forgotten until reloaded from the store.
  engine_.Reset(7);
  engine_.StartServing();
  EXPECT_EQ(engine_.stats().unfinished, 0u);
  ASSERT_TRUE(engine_.Begin(begin, &begun).ok());
  EXPECT_EQ(begun.activity_id().substr(0, 9), "00000007-");
}

// Ids of both kinds in one store: Begin's from a wall-clock epoch ("6...")
// and from an old boot counter ("0..."), initiators' ("1...") between
// them. Each kind is swept in its own order, whatever the other holds.
TEST(RetentionSweeperTest, RemovesFinishedActivitiesOfBothKindsOfIdsWhereverTheySort) {
  const absl::Time now = absl::FromUnixSeconds(1796000000);  // 2026-11
  const absl::Duration retention = absl::Hours(1);
  const absl::Time old = now - retention - absl::Minutes(5);
  const absl::Time young = now - absl::Minutes(5);
  MemoryActivityStore store;
  auto put = [&](const std::string& id, absl::Time begun, bool finished) {
    v1::Activity a;
    a.set_id(id);
    a.set_state(finished ? v1::COMMITTED : v1::ACTIVE);
    a.set_begun_unix_ms(absl::ToUnixMillis(begun));
    if (finished) a.set_finished_unix_ms(absl::ToUnixMillis(begun + absl::Seconds(1)));
    std::optional<absl::Time> deadline = DeadlineOfId(id);
    a.set_deadline_unix_ms(absl::ToUnixMillis(deadline.value_or(begun + absl::Seconds(30))));
    ASSERT_TRUE(store.Put(a, false).ok());
  };
  auto epoch_id = [](absl::Time epoch, int seq) {
    return absl::StrFormat("%08x-%012x", absl::ToUnixSeconds(epoch), seq);
  };
  auto initiator_id = [](absl::Time deadline, int n) {
    return absl::StrFormat("%011x-%024x", absl::ToUnixMillis(deadline), n);
  };
  const std::string begun_old = epoch_id(old, 1);
  const std::string begun_old_open = epoch_id(old, 2);
  const std::string begun_young = epoch_id(young, 1);
  const std::string counter_old = absl::StrFormat("%08x-%012x", 3, 1);
  const std::string initiator_old = initiator_id(old + absl::Seconds(30), 1);
  const std::string initiator_young = initiator_id(young + absl::Seconds(30), 2);
  ASSERT_EQ(begun_old[0], '6');
  ASSERT_EQ(initiator_old[0], '1');
  put(begun_old, old, true);
  put(begun_old_open, old, false);
  put(begun_young, young, true);
  put(counter_old, old - absl::Hours(24), true);
  put(initiator_old, old, true);
  put(initiator_young, young, true);

  RetentionSweeper sweeper(&store, Clock::Real(), retention, absl::Hours(1));
  EXPECT_FALSE(sweeper.SweepOnce(now)) << "nothing is left over the limit";
  auto held = [&](const std::string& id) {
    absl::StatusOr<std::optional<v1::Activity>> a = store.Get(id);
    return a.ok() && a->has_value();
  };
  EXPECT_FALSE(held(begun_old)) << "a finished activity begun at dtsd outlived its retention";
  EXPECT_FALSE(held(counter_old)) << "one from an old boot counter's epoch outlived it";
  EXPECT_FALSE(held(initiator_old)) << "one begun by its initiator outlived it";
  EXPECT_TRUE(held(begun_old_open)) << "an unfinished activity is never swept";
  EXPECT_TRUE(held(begun_young));
  EXPECT_TRUE(held(initiator_young));
  EXPECT_EQ(store.syncs(), 1u) << "the removals go out in one sync";
}

TEST(CoordinatorConfig, TheReplicatedExampleIsMemberOneOfAGroupOfThree) {
  absl::StatusOr<Config> config = Config::LoadFile(FORMICA_SOURCE_DIR "/deploy/dtsd-raft.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<CoordinatorOptions> o = LoadCoordinatorOptions(*config);
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_TRUE(o->raft.has_value());
  EXPECT_EQ(o->raft->node_id, 1u);
  EXPECT_EQ(o->raft->peers.size(), 3u);
  absl::StatusOr<Config> single = Config::LoadFile(FORMICA_SOURCE_DIR "/deploy/dtsd.yaml");
  ASSERT_TRUE(single.ok()) << single.status();
  o = LoadCoordinatorOptions(*single);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->raft.has_value()) << "without a raft section dtsd runs alone";
}

}  // namespace
}  // namespace formica::dts
