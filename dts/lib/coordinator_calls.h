// CoordinatorCalls: how the client library talks to dtsd. Begin, Enlist,
// Commit and Rollback calls that threads of one process make at the same
// time travel together in one Batch round trip: the first caller sends at
// once, and whoever arrives while a batch is on its way goes in the next
// (as group commit does for syncs). One per rpc::Client; thread-safe.
#pragma once

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/dts/v1/dts.pb.h"

namespace formica::rpc {
class Client;
}

namespace formica::dts {

class CoordinatorCalls {
 public:
  // The instance for `rpc` (made on first use, lives as long as the process).
  static CoordinatorCalls& For(rpc::Client* rpc);

  // Runs one op; its own outcome is the status (with the result's fields
  // for begin, commit and rollback). UNAVAILABLE or DEADLINE_EXCEEDED when
  // the round trip failed.
  absl::StatusOr<v1::OpResult> Run(const v1::CoordinatorOp& op, absl::Duration timeout);

  class Impl;

 private:
  explicit CoordinatorCalls(rpc::Client* rpc);
  Impl* impl_;
};

}  // namespace formica::dts
