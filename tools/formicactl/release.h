// formicactl's release commands (release.cc: the controller and start,
// status, continue, rollback, resume; release_plan.cc: the plan).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "traffic.h"

namespace formica::ctl {

std::string ReleaseKey(const std::string& service);  // "release/<service>"

// A controller rewrites a live release's record every second; a record not
// rewritten for this long has no controller.
inline constexpr absl::Duration kReleaseStale = absl::Seconds(5);

// The release is under way: running, awaiting, continuing or rolling_back.
bool ReleaseLive(const formica::rpc::v1::Release& r);

// Sets the route of the release's service to its previous version only
// (version_key=previous:100), compare-and-set, retried while it moves.
absl::Status RouteToPrevious(TrafficLink& link, const formica::rpc::v1::Release& r);

// An operator's request written into the release's record, which its
// controller follows.
struct ReleaseAsked {
  formica::rpc::v1::Release record;  // as written
  bool controller_live = false;      // false: nobody runs it (release resume does)
};
// "continue" (the release awaits it) or "rollback" (a live or failed
// release: the previous version gets every call at once, before the record
// says rolling_back). FAILED_PRECONDITION when no release is under way, it
// is already rolling back, or it does not await continue.
absl::StatusOr<ReleaseAsked> AskRelease(TrafficLink& link, const std::string& service,
                                        const std::string& request);

// The release described by --plan FILE and the flags (which override it),
// checked against the registry's providers of its service: the groups, the
// version being replaced, the thresholds. INVALID_ARGUMENT names what is
// wrong (a plan file error: its file, line and key).
absl::StatusOr<formica::rpc::v1::Release> LoadPlan(const Flags& flags, const std::string& service,
                                                   TrafficLink& link);

}  // namespace formica::ctl
