#include "disk_watermark.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_format.h"

namespace formica::dms {

DiskWatermark::DiskWatermark(std::string data_dir, double full_ratio)
    : data_dir_(std::move(data_dir)), full_ratio_(full_ratio) {}

void DiskWatermark::Check() {
  struct statvfs vfs;
  std::string why;
  double used = -1;
  if (::statvfs(data_dir_.c_str(), &vfs) == 0 && vfs.f_blocks > 0) {
    used = 1.0 - static_cast<double>(vfs.f_bavail) / static_cast<double>(vfs.f_blocks);
  }
  // Fault injection for tests: a file holding the fraction to assume.
  if (const char* fake = std::getenv("FORMICA_FAULT_DISK_USED_FILE"); fake != nullptr) {
    std::ifstream in(fake);
    double v = 0;
    if (in >> v) used = v;
  }
  if (used >= 0) {
    if (used > full_ratio_) {
      why = absl::StrFormat(
          "dmsd's disk (storage.data_dir %s) is %.1f%% full, over its watermark of %.1f%% "
          "(storage.disk_full_ratio); produce resumes when space is freed",
          data_dir_, used * 100, full_ratio_ * 100);
    }
  }
  absl::MutexLock lock(&mu_);
  if (why.empty() != refusal_.empty()) {
    if (why.empty()) {
      SPDLOG_INFO("disk below the watermark again: produce resumes");
    } else {
      SPDLOG_WARN("{}", why);
    }
  }
  refusal_ = why;
  used_ = used;
}

double DiskWatermark::used_ratio() const {
  absl::MutexLock lock(&mu_);
  return used_;
}

std::string DiskWatermark::refusal() const {
  absl::MutexLock lock(&mu_);
  return refusal_;
}

}  // namespace formica::dms
