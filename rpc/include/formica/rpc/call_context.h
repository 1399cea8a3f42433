// The context a call carries across services, in gRPC metadata: W3C trace
// context, the calling application, the user the call is for (LDC routes
// by it), the caller's zone, and the business activity's transaction id
// (DTS). rpc::Client writes it; rpc::Server reads it and hands it to
// handlers running inside rpc::Serve.
#pragma once

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace grpc {
class ClientContext;
class ServerContextBase;
}  // namespace grpc

namespace formica::rpc {

struct CallContext {
  std::string traceparent;  // "00-<trace id>-<parent id>-<flags>"
  std::string caller_app;
  std::string user_id;
  std::string zone;
  std::string txn_id;
};

// Metadata keys (lower case, as gRPC requires).
inline constexpr char kTraceparentKey[] = "traceparent";
inline constexpr char kCallerAppKey[] = "x-formica-caller";
inline constexpr char kUserIdKey[] = "x-formica-user";
inline constexpr char kZoneKey[] = "x-formica-zone";
inline constexpr char kTxnIdKey[] = "x-formica-txn";
// Trailing metadata of a reply: what the call joined (see ReportJoined).
inline constexpr char kJoinedKey[] = "x-formica-joined";

// The context of the call a handler is serving on this thread, while it
// runs inside rpc::Serve (see server.h); nullptr elsewhere. rpc::Client
// calls made there inherit it (trace, user, transaction) and the deadline.
const CallContext* CurrentCallContext();

// Makes `context` current on this thread for the scope's lifetime: calls
// made by rpc::Client on this thread inherit it and stay within `deadline`.
// Fields left empty are taken from the scope it is nested in (a handler's
// call, say), and the earlier deadline wins. dts::Activity uses this to carry
// its transaction id.
class CallContextScope {
 public:
  explicit CallContextScope(CallContext context, absl::Time deadline = absl::InfiniteFuture());
  ~CallContextScope();
  CallContextScope(const CallContextScope&) = delete;
  CallContextScope& operator=(const CallContextScope&) = delete;

 private:
  struct State;
  State* state_;
};

// Tells the caller of the call being served on this thread that it joined
// something (DTS: an action tried in a business activity). `entry` travels
// back in the reply's trailing metadata (key x-formica-joined; printable
// ASCII only, space to '~'), whether the call succeeds or fails, and
// rpc::Client adds the entries of every synchronous call made inside a
// CallContextScope or rpc::Serve to that scope: a handler's own calls'
// entries thus reach its caller too. Returns false, reporting nothing,
// outside rpc::Serve and CallContextScope or for a value that is not
// printable ASCII.
bool ReportJoined(std::string entry);

// The entries reported to the innermost scope on this thread, taken out
// of it (see ReportJoined); empty outside any scope.
std::vector<std::string> TakeJoined();

// Reads the context a caller sent.
CallContext ReadCallContext(const grpc::ServerContextBase& server_context);

// Writes `context` onto an outgoing call; empty fields are left out.
void WriteCallContext(const CallContext& context, grpc::ClientContext* client_context);

// A traceparent for a call made under `parent` (a new span id, the same
// trace), or a new trace when `parent` is empty or malformed.
std::string ChildTraceparent(const std::string& parent);

}  // namespace formica::rpc
