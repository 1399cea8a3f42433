// The one place where absl::Status and grpc::Status meet. Codes map one to
// one (both follow google.rpc.Code); messages pass through unchanged.
#pragma once

#include <grpcpp/support/status.h>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace formica {

// Converts an absl::Status to the grpc::Status a handler returns.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Converts a grpc::Status received from a call to an absl::Status.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Builds an absl::Status from a raw google.rpc.Code number and message, as
// carried in Formica's own result messages. Unknown numbers become UNKNOWN.
absl::Status StatusFromCode(int code, absl::string_view message);

}  // namespace formica
