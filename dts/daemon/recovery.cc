#include "recovery.h"

#include "activity_id.h"

#include <spdlog/spdlog.h>

#include <optional>
#include <string>
#include <vector>

namespace formica::dts {

absl::Status RecoverActivities(ActivityStore& store, ActivityEngine& engine) {
  std::vector<std::string> unfinished;
  absl::Status st = store.Scan([&](const v1::Activity& a) {
    if (!IsFinished(a.state())) unfinished.push_back(a.id());
    return true;
  });
  if (!st.ok()) return st;
  int decided = 0;
  for (const std::string& id : unfinished) {
    absl::StatusOr<std::optional<v1::Activity>> a = store.Get(id);
    if (!a.ok()) return a.status();
    if (!a->has_value()) continue;  // removed since the scan: cannot happen before serving
    if (engine.Adopt(**std::move(a))) ++decided;
  }
  SPDLOG_INFO("recovered {} unfinished activities ({} decided, phase two resumes)",
              unfinished.size(), decided);
  return absl::OkStatus();
}

void RetentionSweeper::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void RetentionSweeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

// Two runs of ids, each in the order activities began: ids made by Begin
// ("<epoch>-<sequence>", from "0"), then ids made by initiators ("<deadline>-
// <random>", from "1"). Each scan stops at its first activity too young to
// go. One made by an initiator also stays until its deadline is past the
// retention, so that a check-back within the retention always finds it.
bool RetentionSweeper::SweepOnce(absl::Time now) {
  constexpr size_t kPerSweep = 20000;
  int64_t cutoff = absl::ToUnixMillis(now - retention_);
  std::vector<std::string> old;
  absl::Status st = store_->Scan([&](const v1::Activity& a) {
    if (DeadlineOfId(a.id()).has_value()) return false;  // the initiators' run begins
    if (a.begun_unix_ms() >= cutoff || old.size() >= kPerSweep) return false;
    if (IsFinished(a.state()) && a.finished_unix_ms() < cutoff) old.push_back(a.id());
    return true;
  });
  if (st.ok()) {
    st = store_->ScanFrom(kFirstInitiatorId, [&](const v1::Activity& a) {
      if (!DeadlineOfId(a.id()).has_value()) return true;
      if (a.deadline_unix_ms() >= cutoff || old.size() >= kPerSweep) return false;
      if (IsFinished(a.state()) && a.finished_unix_ms() < cutoff) old.push_back(a.id());
      return true;
    });
  }
  for (const std::string& id : old) {
    if (st.ok()) st = store_->Delete(id);
  }
  // A replicated store holds deletes until a sync proposes them.
  if (st.ok() && !old.empty()) st = store_->Sync();
  if (!st.ok()) SPDLOG_WARN("retention sweep: {}", st.ToString());
  if (!old.empty()) SPDLOG_INFO("retention: removed {} finished activities", old.size());
  return st.ok() && old.size() >= kPerSweep;
}

void RetentionSweeper::Loop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.Unlock();
    bool more = SweepOnce(clock_->Now());
    mu_.Lock();
    if (!more) mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval_);
  }
}

}  // namespace formica::dts
