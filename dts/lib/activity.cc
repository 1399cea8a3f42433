#include "formica/dts/activity.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "coordinator_calls.h"
#include "formica/dts/v1/dts.pb.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"

namespace formica::dts {

absl::StatusOr<std::unique_ptr<Activity>> Activity::Begin(rpc::Client* rpc,
                                                          ActivityOptions options) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dts::Activity needs an rpc::Client");
  if (options.name.empty()) return absl::InvalidArgumentError("ActivityOptions.name is required");
  if (options.timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ActivityOptions.timeout is negative");
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
    : calls_(std::move(calls)), options_(std::move(options)), id_(std::move(id)) {}

absl::Status Activity::Run(const std::function<absl::Status()>& body) const {
  rpc::CallContext context;
  context.txn_id = id_;
  rpc::CallContextScope scope(context);
  return body();
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
