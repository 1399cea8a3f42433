#include "group_commit.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include "absl/time/clock.h"

namespace formica::dts {

void GroupCommit::AfterSync(std::function<void(const absl::Status&)> done) {
  AfterSync(store_->generation(), std::move(done));
}

void GroupCommit::AfterSync(uint64_t generation, std::function<void(const absl::Status&)> done) {
  absl::MutexLock lock(&mu_);
  waiters_.push_back({generation, std::move(done)});
}

void GroupCommit::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void GroupCommit::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void GroupCommit::Loop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    auto ready = [this]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !waiters_.empty() || stopping_; };
    mu_.Await(absl::Condition(&ready));
    if (waiters_.empty()) return;  // stopping, nothing owed
    std::vector<Waiter> batch;
    batch.swap(waiters_);
    mu_.Unlock();
    // Every write these waiters made returned before they queued.
    absl::Time started = absl::Now();
    absl::Status st = store_->Sync();
    sync_latency_.Observe(absl::Now() - started);
    if (!st.ok() && abort_on_failure_) {
      SPDLOG_CRITICAL("cannot sync the activity log ({}); stopping", st.ToString());
      std::abort();
    }
    const uint64_t generation = store_->generation();
    for (Waiter& w : batch) {
      if (st.ok() && w.generation != generation) {
        w.done(absl::UnavailableError(
            "the leadership this write was made in ended before it was committed; the next "
            "leader knows its outcome"));
      } else {
        w.done(st);
      }
    }
    mu_.Lock();
  }
}

}  // namespace formica::dts
