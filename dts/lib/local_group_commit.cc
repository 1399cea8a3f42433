#include "local_group_commit.h"

#include <utility>

namespace formica::dts {

// One Run call: the leader hands the lead to it by name.
struct LocalGroupCommit::Caller {
  bool may_lead = false;
};

LocalGroupCommit::LocalGroupCommit(BatchRunner run_batch) : run_batch_(std::move(run_batch)) {}

LocalGroupCommit::~LocalGroupCommit() { Close(); }

void LocalGroupCommit::Start() {
  committer_ = std::thread([this] { CommitterLoop(); });
}

void LocalGroupCommit::Close() {
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  if (committer_.joinable()) committer_.join();
}

void LocalGroupCommit::RunAsync(Work work, std::function<void(absl::Status)> done) {
  auto* p =
      new Pending{nullptr, absl::OkStatus(), false, nullptr, std::move(done), std::move(work)};
  p->work = &p->owned;
  absl::MutexLock lock(&mu_);
  queue_.push_back(p);
  if (!leading_) {
    leading_ = true;
    committer_leads_ = true;
  }
}

void LocalGroupCommit::HandOverLocked() {
  if (queue_.empty()) {
    leading_ = false;
  } else if (queue_.front()->caller != nullptr) {
    queue_.front()->caller->may_lead = true;
  } else {
    committer_leads_ = true;
  }
}

// Runs a batch (mu_ not held) and finishes its RunAsync works; the others
// are marked done by the leader once it holds mu_ again.
std::vector<LocalGroupCommit::Pending*> LocalGroupCommit::RunAndFinish(
    std::vector<Pending*> batch) {
  run_batch_(batch);
  std::vector<Pending*> waited;
  for (Pending* p : batch) {
    if (p->caller != nullptr) {
      waited.push_back(p);
    } else {
      p->on_done(std::move(p->result));
      delete p;
    }
  }
  return waited;
}

void LocalGroupCommit::RunQueuedLocked() {
  std::vector<Pending*> batch;
  batch.swap(queue_);
  mu_.Unlock();
  std::vector<Pending*> waited = RunAndFinish(std::move(batch));
  mu_.Lock();
  for (Pending* p : waited) p->done = true;
}

void LocalGroupCommit::CommitterLoop() {
  absl::MutexLock lock(&mu_);
  auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return committer_leads_ || closing_; };
  while (true) {
    mu_.Await(absl::Condition(&wake));
    if (!committer_leads_) return;  // closing, and nothing handed over
    committer_leads_ = false;
    // Leads for one batch, then hands over as any leader does.
    if (!queue_.empty()) RunQueuedLocked();
    HandOverLocked();
  }
}

std::vector<absl::Status> LocalGroupCommit::Run(const std::vector<const Work*>& works) {
  Caller me;
  std::vector<Pending> mine;
  mine.reserve(works.size());
  for (const Work* w : works) mine.push_back(Pending{w, absl::OkStatus(), false, &me, {}, {}});
  auto all_done = [&mine]() {
    for (const Pending& p : mine) {
      if (!p.done) return false;
    }
    return true;
  };
  // Woken only when its works are done or it is handed the lead.
  auto wake = [&]()
                  ABSL_NO_THREAD_SAFETY_ANALYSIS { return all_done() || me.may_lead || !leading_; };
  absl::MutexLock lock(&mu_);
  for (Pending& p : mine) queue_.push_back(&p);
  while (!all_done()) {
    if (leading_ && !me.may_lead) {
      mu_.Await(absl::Condition(&wake));
      continue;
    }
    // Lead until our own works are done, then hand the lead to the owner
    // of the oldest work still queued (or give it up).
    leading_ = true;
    me.may_lead = false;
    while (!all_done() && !queue_.empty()) RunQueuedLocked();
    HandOverLocked();
  }
  std::vector<absl::Status> results;
  for (Pending& p : mine) results.push_back(std::move(p.result));
  return results;
}

}  // namespace formica::dts
