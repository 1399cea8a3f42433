#include "formica/dds/ids.h"

#include <memory>

#include "absl/strings/str_cat.h"

namespace formica::dds {
namespace {

const absl::Time kEpoch =
    absl::FromCivil(absl::CivilSecond(2025, 1, 1, 0, 0, 0), absl::UTCTimeZone());
constexpr int64_t kMaxMs = (int64_t{1} << 40) - 1;
constexpr int kSequenceBits = 10;
constexpr int kWorkerBits = 6;

}  // namespace

absl::StatusOr<std::unique_ptr<IdGenerator>> IdGenerator::Create(int worker, Clock* clock) {
  if (worker < 0 || worker > kMaxWorker) {
    return absl::InvalidArgumentError(
        absl::StrCat("id worker must be 0 to ", kMaxWorker, ", not ", worker));
  }
  return std::unique_ptr<IdGenerator>(new IdGenerator(worker, clock));
}

absl::StatusOr<int64_t> IdGenerator::Next(int shard) {
  if (shard < 0 || shard > 99) {
    return absl::InvalidArgumentError(absl::StrCat("shard must be 0 to 99, not ", shard));
  }
  int64_t ms = absl::ToInt64Milliseconds(clock_->Now() - kEpoch);
  absl::MutexLock lock(&mu_);
  if (ms <= last_ms_) {
    // The same millisecond, or the clock stepped back: keep counting on.
    ms = last_ms_;
    if (++sequence_ >= (1 << kSequenceBits)) {
      ++ms;  // this millisecond is used up: borrow the next
      sequence_ = 0;
    }
  } else {
    sequence_ = 0;
  }
  if (ms < 0 || ms > kMaxMs) {
    return absl::OutOfRangeError("the clock is outside the id range (2025 to 2059)");
  }
  last_ms_ = ms;
  int64_t base =
      (ms << (kWorkerBits + kSequenceBits)) | (int64_t{worker_} << kSequenceBits) | sequence_;
  return base * 100 + shard;
}

absl::Time IdGenerator::TimeOf(int64_t id) {
  return kEpoch + absl::Milliseconds((id / 100) >> (kWorkerBits + kSequenceBits));
}

}  // namespace formica::dds
