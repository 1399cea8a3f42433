// rpc::Client's counters for one provider, one series per method called
// (formica/rpc/metrics.h, side "client"). The method is read from the
// finished call's grpc::ClientContext when it is a generated stub's (a
// string literal); a generic stub's call, whose name gRPC keeps only as the
// caller's pointer, is counted under the method "". Made on first use, then
// found without a lock.
#pragma once

#include <grpcpp/client_context.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "call_stats.h"

namespace formica::rpc {

// "/pkg.Service/Method" of a call started with `ctx`; null when no call was
// started with it. Stable for the process's life when it is a generated
// stub's (the pointer is the stub's method name).
const char* CalledMethod(const grpc::ClientContext& ctx);

class MethodCallStats {
 public:
  MethodCallStats(std::string service, std::string provider)
      : service_(std::move(service)), provider_(std::move(provider)) {}
  ~MethodCallStats();

  // The series of `full_method` ("/pkg.Service/Method"; null, "" or a
  // name outside any loaded object's static data: the method ""). It is
  // read only when it is static data. Thread-safe; takes a lock the first
  // time a static name is seen, and for every non-static one.
  CallStats* For(const char* full_method);

 private:
  struct Node {
    const char* key;
    std::shared_ptr<CallStats> stats;
    Node* next;
  };
  static constexpr int kMaxNodes = 64;
  const std::string service_;
  const std::string provider_;
  std::atomic<Node*> head_{nullptr};
  absl::Mutex mu_;  // serializes additions
  // Keeps the last series handed out past kMaxNodes alive (the registry
  // keeps every series anyway).
  std::shared_ptr<CallStats> overflow_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::rpc
