// libformica turns off absl's Mutex deadlock detection when it is loaded.
// The detection is a debugging aid that builds of absl without NDEBUG (the
// distribution's among them) run on every lock: it records each lock in a
// global graph, which costs a measurable share of every gRPC call and
// business activity (see docs/dts.md, "Cost model"). Set
// FORMICA_MUTEX_DEADLOCK_DETECTION=1 in the environment to keep absl's own
// default, say while debugging a lock-order problem.
#include <cstdlib>
#include <cstring>

#include "absl/synchronization/mutex.h"

namespace formica {
namespace {

const bool kMutexChecksSet = [] {
  const char* keep = std::getenv("FORMICA_MUTEX_DEADLOCK_DETECTION");
  if (keep == nullptr || std::strcmp(keep, "1") != 0) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  return true;
}();

}  // namespace
}  // namespace formica
