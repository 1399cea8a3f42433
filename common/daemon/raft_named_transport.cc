// libraft's TCP transport with members named by host name
// (raft_named_transport.h).
#include "raft_named_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "formica/common/status.h"
#include "formica/internal/address.h"
#include "spdlog/spdlog.h"

namespace formica {
namespace {

// "HOST:PORT" -> host and port; false when there is no ':'.
bool SplitHostPort(absl::string_view address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return false;
  *host = std::string(address.substr(0, colon));
  *port = std::string(address.substr(colon + 1));
  return true;
}

void CopyErrmsg(const raft_uv_transport& from, raft_uv_transport* to) {
  std::memcpy(to->errmsg, from.errmsg, sizeof(to->errmsg));
}

struct NamedConnect;

// What one member last heard of a peer named by host: the address its name
// resolved to and the failure logged last ("" after a connect succeeded).
struct PeerLog {
  std::string resolved;
  std::string failure;
};

struct NamedTransport {
  raft_uv_transport* outer = nullptr;
  raft_uv_transport inner{};  // libraft's TCP transport
  uv_loop_t* loop = nullptr;
  uint64_t node_id = 0;
  unsigned dead_peer_ms = 0;  // TCP_USER_TIMEOUT of connections to named members
  raft_uv_accept_cb accept_cb = nullptr;
  raft_uv_transport_close_cb close_cb = nullptr;
  bool closing = false;
  bool inner_closed = false;
  std::set<NamedConnect*> resolving;  // connects waiting for their name's address
  std::map<raft_id, PeerLog> peers;

  void Failed(raft_id id, const std::string& address, const std::string& why) {
    PeerLog& log = peers[id];
    if (log.failure == why) return;  // said once until the outcome changes
    log.failure = why;
    spdlog::warn("raft node {}: cannot reach member {} at {}: {}; retrying", node_id, id, address,
                 why);
  }
  void Resolved(raft_id id, const std::string& address, const std::string& ip) {
    PeerLog& log = peers[id];
    if (log.resolved == ip) return;
    log.resolved = ip;
    spdlog::info("raft node {}: member {} at {} resolves to {}", node_id, id, address, ip);
  }
  void Connected(raft_id id, const std::string& address) {
    PeerLog& log = peers[id];
    if (log.failure.empty()) return;
    log.failure.clear();
    spdlog::info("raft node {}: member {} at {} is reachable again", node_id, id, address);
  }
  void MaybeFireCloseCb() {
    if (!closing || !inner_closed || !resolving.empty() || close_cb == nullptr) return;
    raft_uv_transport_close_cb cb = close_cb;
    close_cb = nullptr;
    cb(outer);
  }
};

// One connect to a member named by host: the resolution, then libraft's
// connect to the address it gave.
struct NamedConnect {
  NamedTransport* transport = nullptr;
  raft_uv_connect* req = nullptr;  // libraft's request, answered through req->cb
  raft_id id = 0;
  std::string address;  // as libraft knows it: "HOST:PORT"
  std::string host;
  std::string port;
  std::string resolved;  // "A.B.C.D:PORT"
  uv_getaddrinfo_t resolve{};
  raft_uv_connect inner_req{};
};

// Answers libraft's connect request and frees `c`.
void Finish(NamedConnect* c, uv_stream_t* stream, int status) {
  raft_uv_connect* req = c->req;
  delete c;
  req->cb(req, stream, status);
}

void InnerConnectCb(raft_uv_connect* inner_req, uv_stream_t* stream, int status) {
  auto* c = static_cast<NamedConnect*>(inner_req->data);
  NamedTransport* t = c->transport;
  if (status == 0) {
    t->Connected(c->id, c->address);
    // libraft only writes to this stream and sets no timeout on it: a member
    // gone without a reset (its machine lost, its pod rescheduled on another
    // IP) would hold the connection until TCP gives up, about 15 minutes,
    // and its name would not be looked up again until then. Unacknowledged
    // data older than this fails the connection, and the next connect
    // resolves the name afresh.
    uv_os_fd_t fd = -1;
    if (stream != nullptr && t->dead_peer_ms > 0 &&
        uv_fileno(reinterpret_cast<uv_handle_t*>(stream), &fd) == 0) {
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &t->dead_peer_ms, sizeof(t->dead_peer_ms));
    }
  } else if (status != RAFT_CANCELED) {
    t->Failed(c->id, c->address,
              absl::StrCat("connecting to ", c->resolved, ": ", raft_strerror(status),
                           t->inner.errmsg[0] != '\0' ? absl::StrCat(" (", t->inner.errmsg, ")")
                                                      : std::string()));
  }
  Finish(c, stream, status);
}

void ResolvedCb(uv_getaddrinfo_t* resolve, int status, struct addrinfo* result) {
  auto* c = static_cast<NamedConnect*>(resolve->data);
  NamedTransport* t = c->transport;
  t->resolving.erase(c);
  std::string ip;
  if (status == 0 && result != nullptr && result->ai_family == AF_INET) {
    char text[INET_ADDRSTRLEN] = {};
    uv_ip4_name(reinterpret_cast<const sockaddr_in*>(result->ai_addr), text, sizeof(text));
    ip = text;
  }
  uv_freeaddrinfo(result);
  if (t->closing) {
    Finish(c, nullptr, RAFT_CANCELED);
    t->MaybeFireCloseCb();
    return;
  }
  if (ip.empty()) {
    t->Failed(c->id, c->address,
              absl::StrCat("host '", c->host, "' does not resolve to an IPv4 address",
                           status != 0 ? absl::StrCat(" (", uv_strerror(status), ")") : ""));
    Finish(c, nullptr, RAFT_NOCONNECTION);
    return;
  }
  t->Resolved(c->id, c->address, ip);
  c->resolved = absl::StrCat(ip, ":", c->port);
  c->inner_req.data = c;
  t->inner.errmsg[0] = '\0';
  int rv = t->inner.connect(&t->inner, &c->inner_req, c->id, c->resolved.c_str(), InnerConnectCb);
  if (rv != 0) {
    t->Failed(c->id, c->address,
              absl::StrCat("connecting to ", c->resolved, ": ", raft_strerror(rv)));
    Finish(c, nullptr, RAFT_NOCONNECTION);
  }
}

NamedTransport* From(raft_uv_transport* t) { return static_cast<NamedTransport*>(t->impl); }

int Init(raft_uv_transport* outer, raft_id id, const char* address) {
  NamedTransport* t = From(outer);
  int rv = t->inner.init(&t->inner, id, address);
  if (rv != 0) CopyErrmsg(t->inner, outer);
  return rv;
}

void InnerAcceptCb(raft_uv_transport* inner, raft_id id, const char* address, uv_stream_t* stream) {
  auto* t = static_cast<NamedTransport*>(inner->data);
  t->accept_cb(t->outer, id, address, stream);
}

int Listen(raft_uv_transport* outer, raft_uv_accept_cb cb) {
  NamedTransport* t = From(outer);
  t->accept_cb = cb;
  int rv = t->inner.listen(&t->inner, InnerAcceptCb);
  if (rv != 0) CopyErrmsg(t->inner, outer);
  return rv;
}

int Connect(raft_uv_transport* outer, raft_uv_connect* req, raft_id id, const char* address,
            raft_uv_connect_cb cb) {
  NamedTransport* t = From(outer);
  std::string host, port;
  if (!SplitHostPort(address, &host, &port) || IsIpv4Literal(host)) {
    int rv = t->inner.connect(&t->inner, req, id, address, cb);
    if (rv != 0) CopyErrmsg(t->inner, outer);
    return rv;
  }
  req->cb = cb;
  auto* c = new NamedConnect;
  c->transport = t;
  c->req = req;
  c->id = id;
  c->address = address;
  c->host = std::move(host);
  c->port = std::move(port);
  c->resolve.data = c;
  struct addrinfo hints {};
  hints.ai_family = AF_INET;  // libraft's TCP transport speaks IPv4 only
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int rv =
      uv_getaddrinfo(t->loop, &c->resolve, ResolvedCb, c->host.c_str(), c->port.c_str(), &hints);
  if (rv != 0) {
    std::snprintf(outer->errmsg, sizeof(outer->errmsg), "resolving %s: %s", c->host.c_str(),
                  uv_strerror(rv));
    delete c;
    return RAFT_NOCONNECTION;
  }
  t->resolving.insert(c);
  return 0;
}

void InnerCloseCb(raft_uv_transport* inner) {
  auto* t = static_cast<NamedTransport*>(inner->data);
  t->inner_closed = true;
  t->MaybeFireCloseCb();
}

// Cancels the resolutions in flight (one already running in the thread pool
// cannot be: it answers RAFT_CANCELED once it returns) and closes libraft's
// transport, which cancels its own connects.
void Close(raft_uv_transport* outer, raft_uv_transport_close_cb cb) {
  NamedTransport* t = From(outer);
  t->closing = true;
  t->close_cb = cb;
  for (NamedConnect* c : t->resolving) uv_cancel(reinterpret_cast<uv_req_t*>(&c->resolve));
  t->inner.close(&t->inner, InnerCloseCb);
}

}  // namespace

bool IsIpv4Literal(absl::string_view host) {
  in_addr addr;
  return inet_pton(AF_INET, std::string(host).c_str(), &addr) == 1;
}

absl::Status ValidateRaftAddress(absl::string_view address) {
  FORMICA_RETURN_IF_ERROR(ValidateAddress(address));
  if (address.front() == '[') {
    return absl::InvalidArgumentError(
        "an IPv6 address: raft members speak IPv4 only; give an IPv4 address or a host name");
  }
  std::string host, port;
  SplitHostPort(address, &host, &port);
  if (host.find_first_not_of("0123456789.") == std::string::npos) {
    if (IsIpv4Literal(host)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IPv4 address"));
  }
  auto bad_name = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host, "' is not a host name (", why,
                     "; a name is labels of letters, digits and '-' joined by '.')"));
  };
  if (host.size() > 253) return bad_name("longer than 253 characters");
  // One trailing dot makes the name absolute (no search domains tried).
  absl::string_view labels = host;
  if (labels.size() > 1 && labels.back() == '.') labels.remove_suffix(1);
  for (absl::string_view label : absl::StrSplit(labels, '.')) {
    if (label.empty()) return bad_name("an empty label");
    if (label.size() > 63)
      return bad_name(absl::StrCat("label '", label, "' is over 63 characters"));
    if (label.front() == '-' || label.back() == '-') {
      return bad_name(absl::StrCat("label '", label, "' starts or ends with '-'"));
    }
    for (char ch : label) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '-') {
        return bad_name(absl::StrCat("label '", label, "' has '", std::string(1, ch), "'"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveIpv4Address(absl::string_view address) {
  std::string host, port;
  if (!SplitHostPort(address, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not HOST:PORT"));
  }
  if (IsIpv4Literal(host)) return std::string(address);
  struct addrinfo hints {};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* result = nullptr;
  int rv = getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (rv != 0 || result == nullptr) {
    if (result != nullptr) freeaddrinfo(result);
    return absl::UnavailableError(absl::StrCat("host '", host,
                                               "' does not resolve to an IPv4 address (",
                                               rv != 0 ? gai_strerror(rv) : "no address", ")"));
  }
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(result->ai_addr)->sin_addr, text,
            sizeof(text));
  freeaddrinfo(result);
  return absl::StrCat(text, ":", port);
}

int RaftNamedTransportInit(raft_uv_transport* outer, uv_loop_t* loop, uint64_t node_id,
                           absl::Duration dead_peer) {
  auto* t = new NamedTransport;
  int rv = raft_uv_tcp_init(&t->inner, loop);
  if (rv != 0) {
    CopyErrmsg(t->inner, outer);
    delete t;
    return rv;
  }
  t->inner.data = t;
  t->outer = outer;
  t->loop = loop;
  t->node_id = node_id;
  t->dead_peer_ms = static_cast<unsigned>(absl::ToInt64Milliseconds(dead_peer));
  void* data = outer->data;
  std::memset(static_cast<void*>(outer), 0, sizeof(*outer));
  outer->data = data;
  outer->impl = t;
  outer->init = Init;
  outer->listen = Listen;
  outer->connect = Connect;
  outer->close = Close;
  return 0;
}

int RaftNamedTransportSetBindAddress(raft_uv_transport* outer, const char* address) {
  NamedTransport* t = From(outer);
  int rv = raft_uv_tcp_set_bind_address(&t->inner, address);
  if (rv != 0) CopyErrmsg(t->inner, outer);
  return rv;
}

void RaftNamedTransportClose(raft_uv_transport* outer) {
  NamedTransport* t = From(outer);
  raft_uv_tcp_close(&t->inner);
  delete t;
  outer->impl = nullptr;
}

}  // namespace formica
