// libformica turns off absl's Mutex deadlock detection when loaded (a
// debugging aid that costs a share of every call when absl is built without
// NDEBUG); FORMICA_MUTEX_DEADLOCK_DETECTION=1 keeps absl's default. Each
// case runs in a child process: the mode is set once, when the library
// loads.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "formica/common/clock.h"

namespace formica {
namespace {

// Takes two mutexes in one order, then in the other: a potential deadlock
// that absl's detection reports (and, by default, aborts on).
int LockBothWaysInAChild(bool keep_detection) {
  pid_t pid = fork();
  if (pid == 0) {
    if (keep_detection) {
      // What the library does when loaded with the variable set.
      absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
    }
    absl::Mutex a, b;
    {
      absl::MutexLock la(&a);
      absl::MutexLock lb(&b);
    }
    {
      absl::MutexLock lb(&b);
      absl::MutexLock la(&a);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(MutexChecks, LibformicaTurnsOffAbslDeadlockDetection) {
  (void)Clock::Real();  // this test links libformica: its loading set the mode
  int status = LockBothWaysInAChild(false);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the lock-order inversion was reported: detection is still on (status " << status << ")";
  int with_detection = LockBothWaysInAChild(true);
  EXPECT_TRUE(WIFSIGNALED(with_detection))
      << "with detection on, absl aborts on the same inversion (status " << with_detection
      << "): the first case shows libformica turned it off";
}

}  // namespace
}  // namespace formica
