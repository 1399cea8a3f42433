// DiskWatermark: whether the data directory's file system is too full to
// take more messages. Produce is refused while it is (consumers keep
// working); Check (from housekeeping) measures again. Thread-safe.
//
// Fault injection for tests: FORMICA_FAULT_DISK_USED_FILE names a file
// holding the fraction used to assume.
#pragma once

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace formica::dms {

class DiskWatermark {
 public:
  // `full_ratio`: the fraction (0..1) of the file system in use above
  // which produce is refused.
  DiskWatermark(std::string data_dir, double full_ratio);

  // Measures the file system again and logs when the state changes.
  void Check() ABSL_LOCKS_EXCLUDED(mu_);

  // Why produce is refused now, or empty when it is not.
  std::string refusal() const ABSL_LOCKS_EXCLUDED(mu_);
  // The used fraction of the data directory's file system at the last
  // Check (-1 before one, or when it could not be read).
  double used_ratio() const ABSL_LOCKS_EXCLUDED(mu_);
  double full_ratio() const { return full_ratio_; }

 private:
  const std::string data_dir_;
  const double full_ratio_;
  mutable absl::Mutex mu_;
  std::string refusal_ ABSL_GUARDED_BY(mu_);
  double used_ ABSL_GUARDED_BY(mu_) = -1;
};

}  // namespace formica::dms
