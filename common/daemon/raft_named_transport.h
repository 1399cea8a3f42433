// A raft_uv_transport that lets a group's members be named by host name
// ("dmsd-1.dmsd:7391") as well as by IPv4 address. libraft's own TCP
// transport (raft_uv_tcp_*) takes dotted quads only; this one wraps it and,
// for a member named by host, resolves the name on the libuv thread pool
// (uv_getaddrinfo, never on the raft loop) before every connect and hands
// the resolved "A.B.C.D:PORT" to libraft's connect. libraft itself, its log
// and its stored configuration keep the name, so a member that comes back
// with another IP (a restarted pod) is reached at its new address at the
// next reconnect. Members named by IPv4 address go straight to libraft's
// connect, as without the wrapper.
//
// A name that does not resolve fails that connect attempt (libraft retries
// it after its connect retry delay) and is logged, naming the member and
// its host, once until the outcome changes. Closing cancels the lookups
// that have not started; one already running in the thread pool is waited
// for (at most the resolver's timeout, when DNS does not answer). For
// raft_node.cc only.
#pragma once

#include <uv.h>

// libraft's headers declare C functions without extern "C".
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica {

// Sets up `t` on `loop` (the raft node's loop); `node_id` names the member
// in the log. A connection to a member named by host fails once data sent
// on it stays unacknowledged for `dead_peer` (TCP_USER_TIMEOUT), so that
// the name is looked up again. 0 or a libraft error code.
int RaftNamedTransportInit(raft_uv_transport* t, uv_loop_t* loop, uint64_t node_id,
                           absl::Duration dead_peer);

// libraft's raft_uv_tcp_set_bind_address: `address` must be "A.B.C.D:PORT".
int RaftNamedTransportSetBindAddress(raft_uv_transport* t, const char* address);

// Releases what Init allocated, once libraft closed the transport.
void RaftNamedTransportClose(raft_uv_transport* t);

// True for a dotted-quad IPv4 address such as "10.0.0.1".
bool IsIpv4Literal(absl::string_view host);

// OK for an address this transport can reach or bind: "A.B.C.D:PORT" or
// "NAME:PORT" with NAME a host name of RFC 1123 labels (letters, digits and
// '-', 1 to 63 each, neither first nor last '-'). INVALID_ARGUMENT saying
// what is wrong otherwise (an IPv6 address among them: libraft's TCP
// transport has none). Whether a name resolves is not checked here.
absl::Status ValidateRaftAddress(absl::string_view address);

// "HOST:PORT" with HOST resolved to an IPv4 address now (blocking), for the
// address a member binds; an IPv4 address is returned as it is. UNAVAILABLE
// naming the host when it does not resolve.
absl::StatusOr<std::string> ResolveIpv4Address(absl::string_view address);

}  // namespace formica
