#include "push_scheduler.h"

#include <algorithm>

#include "formica/common/clock.h"

namespace formica::registry {

PushScheduler::PushScheduler(Clock* clock, absl::Duration merge_window, absl::Duration warmup)
    : clock_(clock), merge_window_(merge_window) {
  warmup_end_ = clock_->Now() + warmup;
  warming_up_ = warmup > absl::ZeroDuration();
}

bool PushScheduler::SetStopPush(bool stop) {
  if (stop == stop_push_) {
    return false;
  }
  stop_push_ = stop;
  return true;
}

bool PushScheduler::EndWarmupIfDue() {
  if (!warming_up_ || clock_->Now() < warmup_end_) {
    return false;
  }
  warming_up_ = false;
  return true;
}

void PushScheduler::MarkServiceDirty(const std::string& service) {
  services_.insert(service);
  Schedule(std::max(clock_->Now(), last_flush_ + merge_window_));
}

void PushScheduler::MarkConfigDirty(const std::string& key) {
  configs_.insert(key);
  Schedule(clock_->Now());
}

void PushScheduler::Schedule(absl::Time at) {
  if (!scheduled_) {
    scheduled_ = true;
    flush_at_ = at;
  }
}

bool PushScheduler::Due() const { return scheduled_ && !Held() && clock_->Now() >= flush_at_; }

PushScheduler::Batch PushScheduler::TakeBatch() {
  scheduled_ = false;
  last_flush_ = clock_->Now();
  Batch batch;
  batch.services.swap(services_);
  batch.configs.swap(configs_);
  return batch;
}

}  // namespace formica::registry
