#include "coordinator_calls.h"

#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/client.h"

namespace formica::dts {
namespace {

constexpr int kMaxOps = 256;
constexpr size_t kMaxBytes = 2 << 20;  // well under gRPC's 4 MiB message limit

}  // namespace

class CoordinatorCalls::Impl {
 public:
  explicit Impl(rpc::Client* rpc) : rpc_(rpc) {}

  struct Pending {
    const v1::CoordinatorOp* op;
    absl::Time deadline;
    absl::StatusOr<v1::OpResult> result = absl::UnknownError("not sent");
    bool done = false;
  };

  absl::StatusOr<v1::OpResult> Run(const v1::CoordinatorOp& op, absl::Duration timeout) {
    Pending mine{&op, absl::Now() + timeout};
    auto done_or_free = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return mine.done || !sending_; };
    absl::MutexLock lock(&mu_);
    queue_.push_back(&mine);
    while (!mine.done) {
      if (sending_) {
        mu_.Await(absl::Condition(&done_or_free));
        continue;
      }
      // Send until our own op is answered, then let a waiter take over.
      sending_ = true;
      while (!mine.done && !queue_.empty()) {
        std::vector<Pending*> batch;
        size_t bytes = 0;
        size_t taken = 0;
        for (; taken < queue_.size() && static_cast<int>(taken) < kMaxOps; ++taken) {
          bytes += queue_[taken]->op->ByteSizeLong();
          if (taken > 0 && bytes > kMaxBytes) break;
          batch.push_back(queue_[taken]);
        }
        queue_.erase(queue_.begin(), queue_.begin() + batch.size());
        mu_.Unlock();
        Send(batch);
        mu_.Lock();
        for (Pending* p : batch) p->done = true;
      }
      sending_ = false;
    }
    return std::move(mine.result);
  }

 private:
  void Send(const std::vector<Pending*>& batch) {
    // Ops whose caller has stopped waiting are not sent; the batch lives as
    // long as the most patient caller still waiting.
    v1::BatchRequest request;
    std::vector<Pending*> sent;
    absl::Time now = absl::Now();
    absl::Time deadline = now;
    for (Pending* p : batch) {
      if (p->deadline <= now) {
        p->result = absl::DeadlineExceededError("no answer from the coordinator in time");
        continue;
      }
      *request.add_ops() = *p->op;
      sent.push_back(p);
      deadline = std::max(deadline, p->deadline);
    }
    if (sent.empty()) return;
    v1::BatchResponse response;
    rpc::CallOptions call;
    call.timeout = std::max(absl::Milliseconds(1), deadline - absl::Now());
    call.idempotent = true;        // each op is: begin leaves at most an empty activity behind
    call.inherit_current = false;  // this thread's own call must not bound the others' ops
    absl::Status st =
        rpc_->Call(kCoordinatorService, call,
                   [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                     return v1::Coordinator::NewStub(channel)->Batch(ctx, request, &response);
                   });
    if (st.ok() && response.results_size() != static_cast<int>(sent.size())) {
      st = absl::InternalError(absl::StrCat("the coordinator answered ", response.results_size(),
                                            " of ", sent.size(), " ops"));
    }
    for (size_t i = 0; i < sent.size(); ++i) {
      if (!st.ok()) {
        sent[i]->result = st;
        continue;
      }
      const v1::OpResult& r = response.results(static_cast<int>(i));
      if (r.code() != 0) {
        sent[i]->result = StatusFromCode(r.code(), r.message());
      } else {
        sent[i]->result = r;
      }
    }
  }

  rpc::Client* const rpc_;
  absl::Mutex mu_;
  std::vector<Pending*> queue_ ABSL_GUARDED_BY(mu_);
  bool sending_ ABSL_GUARDED_BY(mu_) = false;
};

std::shared_ptr<CoordinatorCalls> CoordinatorCalls::Shared(rpc::Client* rpc) {
  // Which instance each rpc::Client's live users share; an entry goes with
  // its instance, so a later client at the same address starts afresh.
  static absl::Mutex* mu = new absl::Mutex();
  static auto* live = new absl::flat_hash_map<rpc::Client*, std::weak_ptr<CoordinatorCalls>>();
  absl::MutexLock lock(mu);
  std::weak_ptr<CoordinatorCalls>& slot = (*live)[rpc];
  if (std::shared_ptr<CoordinatorCalls> calls = slot.lock(); calls != nullptr) return calls;
  std::shared_ptr<CoordinatorCalls> calls(new CoordinatorCalls(rpc), [rpc](CoordinatorCalls* c) {
    {
      absl::MutexLock lock(mu);
      auto it = live->find(rpc);
      if (it != live->end() && it->second.expired()) live->erase(it);
    }
    delete c;
  });
  slot = calls;
  return calls;
}

CoordinatorCalls::CoordinatorCalls(rpc::Client* rpc) : impl_(std::make_unique<Impl>(rpc)) {}
CoordinatorCalls::~CoordinatorCalls() = default;

absl::StatusOr<v1::OpResult> CoordinatorCalls::Run(const v1::CoordinatorOp& op,
                                                   absl::Duration timeout) {
  return impl_->Run(op, timeout);
}

std::string CoordinatorIdentity(const std::string& configured) {
  if (!configured.empty()) return configured;
  const char* env = std::getenv("FORMICA_DTS_COORDINATOR_IDENTITY");
  return env == nullptr ? "" : env;
}

}  // namespace formica::dts
