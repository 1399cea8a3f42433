// formicactl's release commands (release.cc: the controller and start,
// status, continue, rollback, resume; release_plan.cc: the plan).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "traffic.h"

namespace formica::ctl {

std::string ReleaseKey(const std::string& service);  // "release/<service>"

// The release described by --plan FILE and the flags (which override it),
// checked against the registry's providers of its service: the groups, the
// version being replaced, the thresholds. INVALID_ARGUMENT names what is
// wrong (a plan file error: its file, line and key).
absl::StatusOr<formica::rpc::v1::Release> LoadPlan(const Flags& flags, const std::string& service,
                                                   TrafficLink& link);

}  // namespace formica::ctl
