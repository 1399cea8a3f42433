#include "formica/dts/activity.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_id.h"
#include "coordinator_calls.h"
#include "formica/dts/v1/dts.pb.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"

namespace formica::dts {
namespace {

// "<deadline ms, 11 hex>-<24 random hex>" (see activity_id.h).
absl::StatusOr<std::string> NewActivityId(absl::Time deadline) {
  unsigned char random[kRandomDigits / 2];
  size_t got = 0;
  while (got < sizeof(random)) {
    ssize_t n = getrandom(random + got, sizeof(random) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("no random bytes for an activity id: errno ", errno));
    }
    got += static_cast<size_t>(n);
  }
  char id[kDeadlineDigits + 1 + kRandomDigits + 1];
  std::snprintf(id, sizeof(id), "%011llx-",
                static_cast<unsigned long long>(absl::ToUnixMillis(deadline) & 0xfffffffffffull));
  for (size_t i = 0; i < sizeof(random); ++i) {
    std::snprintf(id + kDeadlineDigits + 1 + 2 * i, 3, "%02x", random[i]);
  }
  return std::string(id);
}

}  // namespace

// The actions the tries of Run's calls reported back.
struct Activity::Joined {
  struct Action {
    std::string participant;
    std::string action;
    std::string route;  // see JoinedAction.route
  };
  absl::Mutex mu;
  std::vector<Action> actions ABSL_GUARDED_BY(mu);
};

absl::StatusOr<std::unique_ptr<Activity>> Activity::Begin(rpc::Client* rpc,
                                                          ActivityOptions options) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dts::Activity needs an rpc::Client");
  if (options.name.empty()) return absl::InvalidArgumentError("ActivityOptions.name is required");
  if (options.timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ActivityOptions.timeout is negative");
  }
  if (!options.begin_at_coordinator) {
    absl::Duration timeout =
        options.timeout == absl::ZeroDuration() ? kDefaultActivityTimeout : options.timeout;
    if (timeout > kMaxActivityTimeout) {
      return absl::InvalidArgumentError(
          absl::StrCat("ActivityOptions.timeout ", absl::FormatDuration(timeout), " exceeds ",
                       absl::FormatDuration(kMaxActivityTimeout),
                       " (begin_at_coordinator allows up to dtsd's activity.max_timeout)"));
    }
    absl::StatusOr<std::string> id = NewActivityId(absl::Now() + timeout);
    if (!id.ok()) return id.status();
    return std::unique_ptr<Activity>(
        new Activity(CoordinatorCalls::Shared(rpc), std::move(options), *std::move(id)));
  }
  v1::CoordinatorOp op;
  v1::BeginRequest* request = op.mutable_begin();
  request->set_name(options.name);
  request->set_initiator(options.initiator);
  request->set_timeout_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options.timeout)));
  std::shared_ptr<CoordinatorCalls> calls = CoordinatorCalls::Shared(rpc);
  absl::StatusOr<v1::OpResult> begun = calls->Run(op, options.call_timeout);
  if (!begun.ok()) return begun.status();
  return std::unique_ptr<Activity>(
      new Activity(std::move(calls), std::move(options), begun->activity_id()));
}

Activity::Activity(std::shared_ptr<CoordinatorCalls> calls, ActivityOptions options, std::string id)
    : calls_(std::move(calls)),
      options_(std::move(options)),
      id_(std::move(id)),
      joined_(std::make_shared<Joined>()) {}

absl::Status Activity::Run(const std::function<absl::Status()>& body) const {
  rpc::CallContext context;
  context.txn_id = id_;
  rpc::CallContextScope scope(context);
  absl::Status st = body();
  // "dts <id> <participant> <action> [<route>]": ours are kept; any other
  // goes on to the scope this one is nested in.
  std::vector<std::string> others;
  for (std::string& entry : rpc::TakeJoined()) {
    std::vector<absl::string_view> f = absl::StrSplit(entry, ' ');
    std::optional<std::string> participant, action, route = std::string();
    if ((f.size() == 4 || f.size() == 5) && f[0] == "dts" && f[1] == id_) {
      participant = UnescapeJoinedField(f[2]);
      action = UnescapeJoinedField(f[3]);
      if (f.size() == 5) route = UnescapeJoinedField(f[4]);
    }
    if (participant.has_value() && action.has_value() && route.has_value()) {
      absl::MutexLock lock(&joined_->mu);
      bool known = false;
      for (const Joined::Action& k : joined_->actions) {
        known = known || (k.participant == *participant && k.action == *action);
      }
      if (!known) {
        joined_->actions.push_back(
            Joined::Action{*std::move(participant), *std::move(action), *std::move(route)});
      }
    } else {
      others.push_back(std::move(entry));
    }
  }
  for (std::string& entry : others) rpc::ReportJoined(std::move(entry));
  return st;
}

absl::Status RunActivity(rpc::Client* rpc, ActivityOptions options,
                         const std::function<absl::Status()>& body) {
  absl::StatusOr<std::unique_ptr<Activity>> activity = Activity::Begin(rpc, std::move(options));
  if (!activity.ok()) return activity.status();
  absl::Status st = (*activity)->Run(body);
  if (!st.ok()) {
    (*activity)->Rollback(st.ToString()).IgnoreError();  // else its timeout does it
    return st;
  }
  return (*activity)->Commit();
}

Activity::~Activity() {
  // After a Commit or Rollback, even a failed one, nothing more is sent: its
  // caller has the outcome or knows it is unknown, and the coordinator
  // times out an activity whose decision never reached it.
  if (decision_tried_) return;
  absl::Status st = Rollback("the initiator left without deciding");
  if (!st.ok()) {
    SPDLOG_WARN(
        "activity {} was left undecided and its rollback failed ({}); its timeout will roll it "
        "back",
        id_, st.ToString());
  }
}

absl::Status Activity::Commit() { return Decide(true, ""); }
absl::Status Activity::Rollback(absl::string_view reason) { return Decide(false, reason); }

absl::Status Activity::Decide(bool commit, absl::string_view reason) {
  v1::CoordinatorOp op;
  v1::ActivityRef* ref = commit ? op.mutable_commit() : op.mutable_rollback();
  ref->set_activity_id(id_);
  ref->set_reason(std::string(reason));
  ref->set_name(options_.name);
  ref->set_initiator(options_.initiator);
  {
    absl::MutexLock lock(&joined_->mu);
    for (const Joined::Action& a : joined_->actions) {
      v1::JoinedAction* j = ref->add_actions();
      j->set_participant(a.participant);
      j->set_action(a.action);
      j->set_route(a.route);
    }
  }
  decision_tried_ = true;
  absl::Status st = calls_->Run(op, options_.call_timeout).status();
  if (!st.ok() && !absl::IsFailedPrecondition(st) && !absl::IsNotFound(st) &&
      !absl::IsInvalidArgument(st)) {
    return absl::Status(st.code(),
                        absl::StrCat("the outcome of activity ", id_, " is unknown (", st.message(),
                                     "); see `formicactl dts show ", id_, "`"));
  }
  return st;
}

}  // namespace formica::dts
