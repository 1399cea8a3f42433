// CoordinatorCalls: how the client library talks to dtsd. Begin, Enlist,
// Commit and Rollback calls that threads of one process make at the same
// time travel together in one Batch round trip: the first caller sends at
// once, and whoever arrives while a batch is on its way goes in the next
// (as group commit does for syncs). Thread-safe.
//
// Owned by whoever calls the coordinator: each Activity, Participant and
// ShardedParticipant holds a shared_ptr to the instance of its rpc::Client,
// so that all of them living at once batch together; it goes with the last
// of them.
//
//   std::shared_ptr<CoordinatorCalls> calls = CoordinatorCalls::Shared(rpc);
//   absl::StatusOr<v1::OpResult> begun = calls->Run(op, absl::Seconds(5));
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/dts/v1/dts.pb.h"

namespace formica::rpc {
class Client;
}

namespace formica::dts {

class CoordinatorCalls {
 public:
  // The instance its live users share for `rpc`: made when there is none,
  // freed with the last shared_ptr to it. `rpc` is borrowed and must
  // outlive every holder.
  static std::shared_ptr<CoordinatorCalls> Shared(rpc::Client* rpc);

  // One that batches only its own holders' ops.
  explicit CoordinatorCalls(rpc::Client* rpc);
  ~CoordinatorCalls();
  CoordinatorCalls(const CoordinatorCalls&) = delete;
  CoordinatorCalls& operator=(const CoordinatorCalls&) = delete;

  // Runs one op; its own outcome is the status (with the result's fields
  // for begin, commit and rollback). UNAVAILABLE or DEADLINE_EXCEEDED when
  // the round trip failed.
  absl::StatusOr<v1::OpResult> Run(const v1::CoordinatorOp& op, absl::Duration timeout);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The identity a participant takes confirm and cancel from: `configured`,
// else FORMICA_DTS_COORDINATOR_IDENTITY, else "" (any caller).
std::string CoordinatorIdentity(const std::string& configured);

}  // namespace formica::dts
