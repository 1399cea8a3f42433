#include "recovery.h"

#include "activity_id.h"

#include <spdlog/spdlog.h>

#include <functional>
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

namespace {

// The two kinds of ids share the store's key order. Ids made by Begin
// ("<epoch>-<sequence>") sort among themselves in the order their
// activities began (the epoch grows with every boot or leadership), ids
// made by initiators ("<deadline>-<random>") in the order of their
// deadlines; the kinds interleave by their first digit (Begin's epoch is
// the wall-clock second, "6..." in the 2020s, or a small boot counter,
// "0..."; an initiator's deadline is "1..." until 2039). Walks the ids of
// one kind in that order, stepping over each run of the other kind (a run
// shares its first character), until `visit` returns false.
absl::Status WalkKind(ActivityStore& store, bool initiators,
                      const std::function<bool(const v1::Activity&)>& visit) {
  std::string from;
  for (;;) {
    std::optional<std::string> skip_to;
    absl::Status st = store.ScanFrom(from, [&](const v1::Activity& a) {
      if (DeadlineOfId(a.id()).has_value() != initiators) {
        skip_to = std::string(1, static_cast<char>(a.id()[0] + 1));
        return false;
      }
      return visit(a);
    });
    if (!st.ok() || !skip_to.has_value() || skip_to->front() == '\0') return st;
    from = *std::move(skip_to);
  }
}

}  // namespace

// Each kind is swept in the order its activities began (Begin's) or of
// their deadlines (initiators'), and each walk stops at its first activity
// too young to go. One made by an initiator also stays until its deadline
// is past the retention, so that a check-back within the retention always
// finds it.
bool RetentionSweeper::SweepOnce(absl::Time now) {
  constexpr size_t kPerSweep = 20000;
  int64_t cutoff = absl::ToUnixMillis(now - retention_);
  std::vector<std::string> old;
  auto sweep = [&](int64_t young_from, const v1::Activity& a) {
    if (young_from >= cutoff || old.size() >= kPerSweep) return false;
    if (IsFinished(a.state()) && a.finished_unix_ms() < cutoff) old.push_back(a.id());
    return true;
  };
  absl::Status st =
      WalkKind(*store_, false, [&](const v1::Activity& a) { return sweep(a.begun_unix_ms(), a); });
  if (st.ok()) {
    st = WalkKind(*store_, true,
                  [&](const v1::Activity& a) { return sweep(a.deadline_unix_ms(), a); });
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
