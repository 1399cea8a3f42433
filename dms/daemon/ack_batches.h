// AckBatches: a Consume stream's acks and retries on their way from the
// thread reading the stream to the thread settling them. Settling waits
// until the acks are durable (a sync, or a commit of the broker group's
// Raft log); the requests that arrive meanwhile wait here and are merged,
// in arrival order, so the next settle makes all of them durable in one
// write instead of one write each. Thread-safe.
//
//   AckBatches batches(kMaxWaitingRefs, kMaxWaitingBytes);
//   reader:  while (stream.Read(&req)) if (!batches.Push(std::move(req))) break;
//            batches.Finish();
//   settler: v1::ConsumeRequest merged;
//            while (batches.Take(&merged)) if (!Settle(merged).ok()) batches.Abandon();
#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>

#include "absl/synchronization/mutex.h"
#include "formica/dms/v1/dms.pb.h"

namespace formica::dms {

class AckBatches {
 public:
  // Push blocks while the requests waiting hold `max_refs` acks and
  // retries (a request counts at least one) or `max_bytes` (the stream's
  // reader then stops reading: gRPC's flow control holds the client back).
  AckBatches(size_t max_refs, size_t max_bytes) : max_refs_(max_refs), max_bytes_(max_bytes) {}

  // False, dropping `req`, once Abandon was called.
  bool Push(v1::ConsumeRequest req) {
    const size_t refs =
        std::max<size_t>(1, static_cast<size_t>(req.acks_size() + req.retries_size()));
    const size_t bytes = req.ByteSizeLong();
    absl::MutexLock lock(&mu_);
    auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return abandoned_ || waiting_.empty() || (refs_ < max_refs_ && bytes_ < max_bytes_);
    };
    mu_.Await(absl::Condition(&room));
    if (abandoned_) return false;
    refs_ += refs;
    bytes_ += bytes;
    waiting_.push_back(std::move(req));
    return true;
  }

  // No more pushes: Take hands out what is left, then returns false.
  void Finish() {
    absl::MutexLock lock(&mu_);
    finished_ = true;
  }

  // Settling failed: what waits is dropped (never confirmed to the client,
  // so it is delivered again) and Push refuses from now on.
  void Abandon() {
    absl::MutexLock lock(&mu_);
    abandoned_ = true;
    waiting_.clear();
    refs_ = bytes_ = 0;
  }

  // Everything waiting, merged into `merged` in arrival order; blocks until
  // something waits. False once finished (or abandoned) with nothing left.
  bool Take(v1::ConsumeRequest* merged) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !waiting_.empty() || finished_ || abandoned_;
    };
    mu_.Await(absl::Condition(&ready));
    if (waiting_.empty()) return false;
    merged->Clear();
    merged->Swap(&waiting_.front());
    waiting_.pop_front();
    for (v1::ConsumeRequest& r : waiting_) merged->MergeFrom(r);
    waiting_.clear();
    refs_ = bytes_ = 0;
    return true;
  }

 private:
  const size_t max_refs_;
  const size_t max_bytes_;
  absl::Mutex mu_;
  std::deque<v1::ConsumeRequest> waiting_ ABSL_GUARDED_BY(mu_);
  size_t refs_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace formica::dms
