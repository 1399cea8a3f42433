// RpcPhaseTwoSender: carries dtsd's confirms and cancels to participants
// over rpc::Client (found through DSR): one PhaseTwoBatch round trip per
// batch, or one Confirm or Cancel per item for a participant whose library
// predates PhaseTwoBatch (learned from its first UNIMPLEMENTED answer).
// Thread-safe.
#pragma once

#include <atomic>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "phase_two.h"

namespace formica::rpc {
class Client;
}

namespace formica::dts {

class RpcPhaseTwoSender final : public PhaseTwoSender {
 public:
  // `rpc` is borrowed; every call must be answered (PhaseTwoScheduler::
  // WaitIdle) before it goes.
  RpcPhaseTwoSender(rpc::Client* rpc, absl::Duration call_timeout)
      : rpc_(rpc), call_timeout_(call_timeout) {}

  void Send(const std::string& participant, std::vector<v1::PhaseTwoItem> items,
            std::function<void(size_t, absl::Status)> done) override;

  // Confirms and cancels sent so far (each item of a batch counts).
  uint64_t calls() const { return calls_.load(); }

 private:
  using Done = std::function<void(size_t, absl::Status)>;
  void SendOne(const std::string& participant, size_t index, v1::PhaseTwoItem item, Done done);

  rpc::Client* const rpc_;
  const absl::Duration call_timeout_;
  std::atomic<uint64_t> calls_{0};
  absl::Mutex mu_;
  std::set<std::string> no_batch_ ABSL_GUARDED_BY(mu_);  // participants without PhaseTwoBatch
};

}  // namespace formica::dts
