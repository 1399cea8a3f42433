// formica::dts::Activity — the initiator's side of a business activity.
//
// The common shape: begin, run the tries, commit if they all succeeded,
// roll back otherwise.
//
//   absl::Status st = dts::RunActivity(rpc_client, {.name = "fund.Purchase"}, [&] {
//     FORMICA_RETURN_IF_ERROR(CallDebit(...));   // rpc::Client calls in here carry
//     return CallCredit(...);                    // the activity's id: each
//   });                                          // participant's try joins it
//
// Or step by step:
//
//   auto activity = dts::Activity::Begin(rpc_client, {.name = "fund.Purchase"}).value();
//   absl::Status st = activity->Run([&] { return CallDebit(...); });
//   st = st.ok() ? activity->Commit() : activity->Rollback(st.ToString());
//
// The coordinator (dtsd) is found through DSR as "formica.dts.v1.Coordinator".
// If the initiator dies before deciding, the activity's timeout rolls it back.
// Calls made outside Run (another thread, a callback) pass id() in
// CallOptions::context.txn_id.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica::rpc {
class Client;
}

namespace formica::dts {

class CoordinatorCalls;

// The coordinator's service name in the registry.
inline constexpr char kCoordinatorService[] = "formica.dts.v1.Coordinator";

// How long an activity begun without a round trip has when
// ActivityOptions.timeout is zero (dtsd's activity.default_timeout applies
// to those begun at the coordinator).
inline constexpr absl::Duration kDefaultActivityTimeout = absl::Seconds(30);

struct ActivityOptions {
  std::string name;  // what kind of activity, e.g. "fund.Purchase" (required)
  std::string initiator;
  // Not decided by then: rolled back. Zero: kDefaultActivityTimeout, or
  // the coordinator's default with begin_at_coordinator.
  absl::Duration timeout = absl::ZeroDuration();
  absl::Duration call_timeout = absl::Seconds(5);  // each call to the coordinator
  // By default Begin makes the activity's id here, carrying its deadline,
  // and dtsd first hears of the activity at its commit (with the actions
  // its tries reported back) or at a participant's enlist. Set this to
  // begin it at dtsd with a round trip instead: `formicactl dts ls` then
  // lists it while ACTIVE, and participants enlist each try with dtsd.
  bool begin_at_coordinator = false;
};

class Activity {
 public:
  // Begins an activity at the coordinator. UNAVAILABLE when it cannot be
  // reached; INVALID_ARGUMENT for a bad name or timeout.
  // Without begin_at_coordinator nothing is sent and only INVALID_ARGUMENT
  // can come back.
  static absl::StatusOr<std::unique_ptr<Activity>> Begin(rpc::Client* rpc, ActivityOptions options);
  // Rolls back an activity on which neither Commit nor Rollback was called;
  // if that fails, logs one warning (the coordinator's timeout rolls it
  // back). After a failed Commit or Rollback it sends nothing more.
  ~Activity();
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;

  const std::string& id() const { return id_; }

  // Runs `body` on this thread with the activity's id in the current call
  // context (nested in the one of a call being served, if any): the
  // rpc::Client calls it makes join the activity, and the actions their
  // tries report back (through the replies' trailing metadata, also from
  // calls those services made) go to dtsd with the commit or rollback.
  // A try whose report does not come back (made from a call on another
  // thread, or an asynchronous one) is still decided: its participant asks
  // dtsd once the deadline has passed. Returns what `body` does.
  absl::Status Run(const std::function<absl::Status()>& body) const;

  // Commits: when this returns OK the decision is durable and every action
  // will be confirmed. FAILED_PRECONDITION when the activity was already
  // rolled back (by timeout, say), naming the state. Any other error leaves
  // the outcome unknown until `formicactl dts show ID` tells it.
  absl::Status Commit();
  // Rolls back; every enlisted action will be cancelled. `reason` is recorded.
  absl::Status Rollback(absl::string_view reason);

 private:
  struct Joined;
  Activity(std::shared_ptr<CoordinatorCalls> calls, ActivityOptions options, std::string id);
  absl::Status Decide(bool commit, absl::string_view reason);

  // How it reaches the coordinator, shared with the other users of its
  // rpc::Client so that their calls batch together.
  std::shared_ptr<CoordinatorCalls> calls_;
  ActivityOptions options_;
  std::string id_;
  std::shared_ptr<Joined> joined_;  // actions reported back by Run's calls
  bool decision_tried_ = false;
};

// Begins an activity, runs `body` inside it, and commits when `body`
// returns OK, else rolls back with its status as the reason. Returns the
// body's error, or the commit's outcome.
absl::Status RunActivity(rpc::Client* rpc, ActivityOptions options,
                         const std::function<absl::Status()>& body);

}  // namespace formica::dts
