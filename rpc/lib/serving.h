// The call being served on this thread, while a handler runs inside
// rpc::Serve. rpc::Client reads it so that calls made by a handler carry the
// caller's context and stay within its deadline without being told.
#pragma once

#include <grpcpp/support/string_ref.h>

#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "formica/rpc/call_context.h"

namespace formica::rpc {

struct ServingCall {
  CallContext context;
  absl::Time deadline = absl::InfiniteFuture();
  std::vector<std::string> joined;  // see ReportJoined; this thread only
};

// nullptr outside rpc::Serve and rpc::CallContextScope.
const ServingCall* CurrentServingCall();

// Adds the x-formica-joined entries of a reply to the current scope, if any.
void AddJoined(const std::multimap<grpc::string_ref, grpc::string_ref>& trailers);

// Trailing metadata a server adds to a call it refused before running it
// (over a concurrency limit): the caller may retry it anywhere, even when
// it is not idempotent.
inline constexpr char kRejectedKey[] = "x-formica-rejected";

}  // namespace formica::rpc
