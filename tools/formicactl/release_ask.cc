// What formicactl's release commands and the console share (release.h): the
// record's key, whether a release is under way, and the operator's requests
// in its record (continue, rollback) that the controller follows.
#include "absl/strings/str_cat.h"
#include "release.h"

namespace formica::ctl {

namespace v1 = formica::rpc::v1;

std::string ReleaseKey(const std::string& service) { return "release/" + service; }

bool ReleaseLive(const v1::Release& r) {
  return r.state() == "running" || r.state() == "awaiting" || r.state() == "continuing" ||
         r.state() == "rolling_back";
}

absl::Status RouteToPrevious(TrafficLink& link, const v1::Release& r) {
  std::string route = absl::StrCat(r.version_key(), "=", r.previous(), ":100");
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<Entry> now = link.Get(RouteKey(r.service()));
    if (!now.ok()) return now.status();
    if (now->value == route) return absl::OkStatus();
    absl::Status st = link.Put(RouteKey(r.service()), route, now->version).status();
    if (!absl::IsFailedPrecondition(st)) return st;
  }
  return absl::AbortedError("the route kept changing");
}

absl::StatusOr<ReleaseAsked> AskRelease(TrafficLink& link, const std::string& service,
                                        const std::string& request) {
  if (request != "continue" && request != "rollback") {
    return absl::InvalidArgumentError(
        absl::StrCat("'", request, "' is not a release request: continue or rollback"));
  }
  StoredRecord<v1::Release> record(link, ReleaseKey(service), "release");
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<bool> exists = record.Load();
    if (!exists.ok()) return exists.status();
    const v1::Release& r = record.value;
    bool failed = *exists && r.state() == "failed";
    if (!*exists || (!ReleaseLive(r) && !(request == "rollback" && failed))) {
      return absl::FailedPreconditionError(
          absl::StrCat("no release of ", service, " is under way",
                       *exists ? absl::StrCat(" (the last one is ", r.state(), ")") : ""));
    }
    if (r.state() == "rolling_back") {
      return absl::FailedPreconditionError("the release is being rolled back");
    }
    if (request == "continue" && r.state() != "awaiting") {
      return absl::FailedPreconditionError(
          absl::StrCat("the release is ", r.state(), ", not waiting for continue"));
    }
    bool stale = record.SinceUpdate() >= kReleaseStale || failed;
    if (request == "rollback") {
      // The previous version's traffic at once, whoever runs the rest.
      if (absl::Status st = RouteToPrevious(link, record.value); !st.ok()) return st;
    }
    record.value.set_state(request == "continue" ? "continuing" : "rolling_back");
    absl::Status st = record.Save();
    if (absl::IsFailedPrecondition(st)) continue;
    if (!st.ok()) return st;
    return ReleaseAsked{record.value, !stale};
  }
  return absl::AbortedError("the release's record kept changing; try again");
}

}  // namespace formica::ctl
