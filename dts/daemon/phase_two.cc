#include "phase_two.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace formica::dts {
namespace {

constexpr size_t kMaxPhaseTwoBatch = 256;
constexpr size_t kMaxPhaseTwoBytes = 2 << 20;  // under gRPC's 4 MiB message limit

}  // namespace

PhaseTwoScheduler::PhaseTwoScheduler(Clock* clock, PhaseTwoOptions options, PhaseTwoSender* sender)
    : clock_(clock),
      options_(options),
      sender_(sender),
      rng_(options.seed != 0 ? options.seed : std::random_device{}()) {}

PhaseTwoScheduler::~PhaseTwoScheduler() { Stop(); }

void PhaseTwoScheduler::Attach(PhaseTwoWork* work) { work_ = work; }

void PhaseTwoScheduler::Add(absl::Time when, PhaseTwoTask task) {
  absl::MutexLock lock(&mu_);
  tasks_.emplace(when, std::move(task));
  wake_ = true;
}

absl::Duration PhaseTwoScheduler::Backoff(uint32_t attempts) {
  absl::Duration d = options_.retry_initial;
  for (uint32_t i = 1; i < attempts && d < options_.retry_max; ++i) d *= 2;
  d = std::min(d, options_.retry_max);
  absl::MutexLock lock(&mu_);
  // Full jitter over the upper half, so retries of many actions spread out.
  double f = 0.5 + 0.5 * std::uniform_real_distribution<double>(0, 1)(rng_);
  return d * f;
}

int PhaseTwoScheduler::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

void PhaseTwoScheduler::Start() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = false;  // started again after a Stop
  }
  thread_ = std::thread([this] { Loop(); });
}

void PhaseTwoScheduler::Clear() {
  absl::MutexLock lock(&mu_);
  tasks_.clear();
}

void PhaseTwoScheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void PhaseTwoScheduler::WaitIdle() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  mu_.Await(absl::Condition(&idle));
}

void PhaseTwoScheduler::SlotFreed() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
  wake_ = true;
}

void PhaseTwoScheduler::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      absl::Time now = clock_->Now();
      absl::Time next = now + absl::Seconds(1);
      if (!tasks_.empty()) next = std::min(next, tasks_.begin()->first);
      // At the in-flight cap, due calls wait for a freed slot (wake_), not
      // in a spin; timeouts still run within 50 ms.
      if (in_flight_ >= options_.max_in_flight) next = now + absl::Milliseconds(50);
      if (!stopping_ && (tasks_.empty() || next > now)) {
        mu_.AwaitWithTimeout(absl::Condition(&wake_), next - now);
      }
      wake_ = false;
      if (stopping_) return;
    }
    RunDue();
  }
}

std::vector<PhaseTwoTask> PhaseTwoScheduler::TakeDue() {
  std::vector<PhaseTwoTask> due;
  absl::MutexLock lock(&mu_);
  absl::Time now = clock_->Now();
  for (auto it = tasks_.begin(); it != tasks_.end() && it->first <= now;) {
    PhaseTwoTask& t = it->second;
    if (t.action != PhaseTwoTask::kTimeout) {
      if (in_flight_ >= options_.max_in_flight) {
        ++it;  // stays queued; timeouts behind it still run
        continue;
      }
      ++in_flight_;
    }
    due.push_back(std::move(t));
    it = tasks_.erase(it);
  }
  return due;
}

void PhaseTwoScheduler::RunDue() {
  std::map<std::string, std::vector<PhaseTwoCall>> by_participant;
  std::vector<std::string> expired;
  std::vector<std::function<void()>> starters;
  for (PhaseTwoTask& t : TakeDue()) {
    if (t.action == PhaseTwoTask::kTimeout) {
      if (std::function<void()> start = work_->Expire(t.id)) {
        expired.push_back(t.id);
        starters.push_back(std::move(start));
      }
    } else if (std::optional<PhaseTwoCall> call = work_->Prepare(t); call.has_value()) {
      by_participant[call->participant].push_back(std::move(*call));
    } else {
      SlotFreed();
    }
  }
  if (!starters.empty()) {
    // One sync for the round's expiries, not one under each activity's lock.
    if (absl::Status st = work_->SyncExpired(); st.ok()) {
      for (auto& start : starters) start();
    } else {
      SPDLOG_ERROR("cannot sync {} expired activities: {}; trying again in 1s", expired.size(),
                   st.ToString());
      absl::Time retry = clock_->Now() + absl::Seconds(1);
      for (std::string& id : expired)
        Add(retry, PhaseTwoTask{std::move(id), PhaseTwoTask::kTimeout, 0});
    }
  }
  for (auto& [participant, calls] : by_participant) {
    // Chunks of at most kMaxPhaseTwoBatch items and kMaxPhaseTwoBytes.
    std::vector<PhaseTwoCall> chunk;
    size_t bytes = 0;
    for (PhaseTwoCall& call : calls) {
      size_t size = call.item.ByteSizeLong();
      if (!chunk.empty() &&
          (chunk.size() >= kMaxPhaseTwoBatch || bytes + size > kMaxPhaseTwoBytes)) {
        Launch(participant, std::move(chunk));
        chunk.clear();
        bytes = 0;
      }
      bytes += size;
      chunk.push_back(std::move(call));
    }
    if (!chunk.empty()) Launch(participant, std::move(chunk));
  }
}

void PhaseTwoScheduler::Launch(const std::string& participant, std::vector<PhaseTwoCall> calls) {
  // Payloads move into the items: one copy in memory while they are out.
  std::vector<v1::PhaseTwoItem> items;
  items.reserve(calls.size());
  for (PhaseTwoCall& call : calls) items.push_back(std::move(call.item));
  auto out = std::make_shared<std::vector<PhaseTwoCall>>(std::move(calls));
  sender_->Send(participant, std::move(items), [this, out](size_t i, absl::Status outcome) {
    work_->Completed((*out)[i], outcome);
    SlotFreed();
  });
}

}  // namespace formica::dts
