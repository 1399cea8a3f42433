// RaftNode: one libraft instance on its own libuv loop and thread
// (raft_node.h). Everything that touches libraft runs on that thread;
// other threads hand it requests through a queue and a uv_async wake-up.
#include "formica/internal/raft_node.h"

#include <signal.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "raft_named_transport.h"
#include "spdlog/spdlog.h"

namespace formica {

const char* RaftRoleName(RaftRole role) {
  switch (role) {
    case RaftRole::kFollower:
      return "follower";
    case RaftRole::kCandidate:
      return "candidate";
    case RaftRole::kLeader:
      return "leader";
    case RaftRole::kStopped:
      return "stopped";
  }
  return "unknown";
}

namespace {

enum class RequestKind { kPropose, kBarrier, kTransfer };

struct Request {
  RequestKind kind;
  std::string entry;
  ProposeCallback done;
  uint64_t expected_term = 0;  // not 0: refused unless the node leads in this term
};

// libraft's TCP transport pads each entry it receives to 8 bytes but sends
// entries as they are, so an entry must be a multiple of 8 bytes long to
// arrive intact. Each proposal travels framed: its length (8 bytes, little
// endian), the bytes, zeros up to the next multiple of 8.
constexpr size_t kFrameHeader = 8;

size_t FramedSize(size_t payload) { return kFrameHeader + (payload + 7) / 8 * 8; }

void FrameEntry(absl::string_view payload, void* out) {
  auto* bytes = static_cast<unsigned char*>(out);
  std::memset(bytes, 0, FramedSize(payload.size()));
  uint64_t len = payload.size();
  for (size_t i = 0; i < kFrameHeader; ++i) bytes[i] = static_cast<unsigned char>(len >> (8 * i));
  std::memcpy(bytes + kFrameHeader, payload.data(), payload.size());
}

bool UnframeEntry(const raft_buffer& buf, absl::string_view* payload) {
  if (buf.len < kFrameHeader || buf.len % 8 != 0) return false;
  const auto* bytes = static_cast<const unsigned char*>(buf.base);
  uint64_t len = 0;
  for (size_t i = 0; i < kFrameHeader; ++i) len |= uint64_t{bytes[i]} << (8 * i);
  if (len > buf.len - kFrameHeader || FramedSize(len) != buf.len) return false;
  *payload = absl::string_view(reinterpret_cast<const char*>(bytes + kFrameHeader), len);
  return true;
}

ProposeResult Unavailable(std::string message) {
  ProposeResult r;
  r.status = absl::UnavailableError(std::move(message));
  return r;
}

}  // namespace

struct RaftNode::Impl {
  RaftNodeOptions options;
  RaftStateMachine* machine = nullptr;
  RaftRoleCallback on_role;

  uv_loop_t loop{};
  uv_async_t wake{};
  uv_check_t check{};
  raft_uv_transport transport{};
  raft_io io{};
  raft_fsm fsm{};
  struct raft raft {};
  std::thread thread;

  mutable absl::Mutex mu;
  std::deque<Request> queue ABSL_GUARDED_BY(mu);
  bool stop_requested ABSL_GUARDED_BY(mu) = false;
  bool loop_done ABSL_GUARDED_BY(mu) = false;
  RaftNodeStatus shared_status ABSL_GUARDED_BY(mu);

  // The loop thread's own state.
  std::string apply_output;  // what the last FsmApply returned, for its ApplyCb
  RaftNodeStatus reported;   // what on_role last heard
  bool reported_once = false;
  uint64_t ready_term = 0;          // term whose first barrier is applied
  uint64_t ready_barrier_term = 0;  // term whose first barrier is in flight
  bool closing = false;

  // Every disk append of libraft goes through AppendHook, so that a failed
  // one stops the member (IoFailed) before libraft goes on with a log in
  // memory that its disk does not hold.
  int (*uv_append)(raft_io*, raft_io_append*, const raft_entry*, unsigned,
                   raft_io_append_cb) = nullptr;
  std::map<raft_io_append*, raft_io_append_cb> appending;

  struct PendingApply {
    struct raft_apply req;
    Impl* impl;
    uint64_t term;
    ProposeCallback done;
  };
  struct PendingTransfer {
    struct raft_transfer req;
    Impl* impl;
    ProposeCallback done;
  };
  struct PendingBarrier {
    struct raft_barrier req;
    Impl* impl;
    uint64_t term;
    ProposeCallback done;  // empty: the term's first barrier
  };

  // ---- start and stop (loop thread) ----

  absl::Status Init();
  absl::Status CheckStoredGroup();
  void CloseAll(bool raft_inited, bool io_inited, bool transport_inited);
  void Run(std::promise<absl::Status>* started);

  // ---- requests (loop thread) ----

  void OnWake();
  void Submit(Request request);
  ProposeResult NotLeader();
  void Refresh();

  static Impl* From(uv_handle_t* h) { return static_cast<Impl*>(h->data); }

  // ---- libraft's and libuv's callbacks (loop thread) ----

  static int FsmApply(raft_fsm* fsm, const raft_buffer* buf, void** result);
  static int FsmSnapshot(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs);
  static int FsmRestore(raft_fsm* fsm, raft_buffer* buf);
  static void ApplyCb(struct raft_apply* req, int status, void* result);
  static void BarrierCb(struct raft_barrier* req, int status);
  static void TransferCb(struct raft_transfer* req);
  static void WakeCb(uv_async_t* handle);
  static void CheckCb(uv_check_t* handle);
  static void RaftCloseCb(struct raft* r);
  static int AppendHook(raft_io* io, raft_io_append* req, const raft_entry* entries, unsigned n,
                        raft_io_append_cb cb);
  static void AppendDone(raft_io_append* req, int status);
  [[noreturn]] void IoFailed(absl::string_view what);
  // The node whose loop runs on this thread (AppendDone's way back to it).
  static thread_local Impl* loop_node;
};

thread_local RaftNode::Impl* RaftNode::Impl::loop_node = nullptr;

// ---- the state machine adapter ----

int RaftNode::Impl::FsmApply(raft_fsm* fsm, const raft_buffer* buf, void** result) {
  auto* impl = static_cast<RaftNode::Impl*>(fsm->data);
  const uint64_t index = impl->raft.last_applied + 1;  // libraft advances it after this call
  absl::string_view entry;
  if (!UnframeEntry(*buf, &entry)) {
    spdlog::error("raft node {}: entry {} is not framed ({} bytes); not applying it",
                  impl->options.node_id, index, buf->len);
    return RAFT_MALFORMED;  // libraft stops applying: this member must not diverge
  }
  impl->apply_output = impl->machine->Apply(index, entry);
  *result = nullptr;
  return 0;
}

int RaftNode::Impl::FsmSnapshot(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs) {
  auto* impl = static_cast<RaftNode::Impl*>(fsm->data);
  absl::StatusOr<std::string> state = impl->machine->Snapshot();
  if (!state.ok()) {
    spdlog::warn("raft node {}: snapshot skipped: {}", impl->options.node_id,
                 state.status().ToString());
    return RAFT_BUSY;  // libraft tries again at the next threshold
  }
  auto* array = static_cast<raft_buffer*>(raft_malloc(sizeof(raft_buffer)));
  if (array == nullptr) return RAFT_NOMEM;
  array[0].len = state->size();
  array[0].base = raft_malloc(state->empty() ? 1 : state->size());
  if (array[0].base == nullptr) {
    raft_free(array);
    return RAFT_NOMEM;
  }
  if (!state->empty()) std::memcpy(array[0].base, state->data(), state->size());
  *bufs = array;  // version 1: libraft frees both
  *n_bufs = 1;
  return 0;
}

int RaftNode::Impl::FsmRestore(raft_fsm* fsm, raft_buffer* buf) {
  auto* impl = static_cast<RaftNode::Impl*>(fsm->data);
  absl::Status st =
      impl->machine->Restore(absl::string_view(static_cast<const char*>(buf->base), buf->len));
  if (!st.ok()) {
    // libraft keeps the buffer (and frees it) when restore fails.
    spdlog::error("raft node {}: restoring a snapshot failed: {}", impl->options.node_id,
                  st.ToString());
    return RAFT_MALFORMED;
  }
  raft_free(buf->base);  // a successful restore owns the buffer
  return 0;
}

void RaftNode::Impl::ApplyCb(struct raft_apply* req, int status, void* /*result*/) {
  auto* p = static_cast<RaftNode::Impl::PendingApply*>(req->data);
  ProposeResult r;
  if (status == 0) {
    r.index = req->index;
    r.term = p->term;
    r.output = std::move(p->impl->apply_output);
  } else if (status == RAFT_LEADERSHIPLOST) {
    r.status = absl::UnavailableError(absl::StrCat(
        "leadership lost before entry ", req->index,
        " committed; it may still commit under the next leader (retry with a dedup key)"));
  } else {
    r.status = absl::UnavailableError(
        absl::StrCat("entry ", req->index, " not committed: ", raft_strerror(status)));
  }
  ProposeCallback done = std::move(p->done);
  delete p;
  done(std::move(r));
}

void RaftNode::Impl::BarrierCb(struct raft_barrier* req, int status) {
  auto* p = static_cast<RaftNode::Impl::PendingBarrier*>(req->data);
  RaftNode::Impl* impl = p->impl;
  ProposeResult r;
  if (status == 0) {
    r.index = req->index;
    r.term = p->term;
  } else {
    r.status =
        absl::UnavailableError(absl::StrCat("barrier not committed: ", raft_strerror(status)));
  }
  ProposeCallback done = std::move(p->done);
  const uint64_t term = p->term;
  delete p;
  if (!done) {  // the term's first barrier: this leader now holds every committed entry
    // Refresh runs after this loop iteration (CheckCb), outside libraft's apply loop.
    if (status == 0 && impl->raft.current_term == term) impl->ready_term = term;
    impl->ready_barrier_term = 0;
    return;
  }
  done(std::move(r));
}

void RaftNode::Impl::TransferCb(struct raft_transfer* req) {
  auto* p = static_cast<RaftNode::Impl::PendingTransfer*>(req->data);
  ProposeResult r;
  if (raft_state(&p->impl->raft) == RAFT_LEADER) {
    r.status = absl::UnavailableError(
        "leadership was not transferred within an election timeout; this member still leads");
  }
  ProposeCallback done = std::move(p->done);
  delete p;
  done(std::move(r));
}

void RaftNode::Impl::WakeCb(uv_async_t* handle) {
  RaftNode::Impl::From(reinterpret_cast<uv_handle_t*>(handle))->OnWake();
}

void RaftNode::Impl::CheckCb(uv_check_t* handle) {
  RaftNode::Impl::From(reinterpret_cast<uv_handle_t*>(handle))->Refresh();
}

void RaftNode::Impl::RaftCloseCb(struct raft* r) {
  auto* impl = static_cast<RaftNode::Impl*>(r->data);
  raft_uv_close(&impl->io);
  RaftNamedTransportClose(&impl->transport);
}

// ---- disk failures ----

int RaftNode::Impl::AppendHook(raft_io* io, raft_io_append* req, const raft_entry* entries,
                               unsigned n, raft_io_append_cb cb) {
  Impl* impl = loop_node;
  // Recorded first: libuv's append may queue the request (and answer it
  // later) even when it reports an error.
  impl->appending[req] = cb;
  int rv = impl->uv_append(io, req, entries, n, AppendDone);
  if (rv == RAFT_IOERR || rv == RAFT_NOSPACE) {
    impl->IoFailed(absl::StrCat("writing its log failed at once: ", raft_strerror(rv), " (",
                                impl->io.errmsg, ")"));
  }
  if (rv != 0) impl->appending.erase(req);
  return rv;
}

void RaftNode::Impl::AppendDone(raft_io_append* req, int status) {
  Impl* impl = loop_node;
  auto it = impl->appending.find(req);
  if (it == impl->appending.end()) {
    impl->IoFailed(
        absl::StrCat("its log write answered a request it does not know (status ", status, ")"));
  }
  raft_io_append_cb cb = it->second;
  impl->appending.erase(it);
  if (status != 0 && status != RAFT_CANCELED) {
    // libraft 0.15's raft_strerror does not know its own RAFT_NOSPACE.
    impl->IoFailed(
        absl::StrCat("writing its log failed: ",
                     status == RAFT_NOSPACE ? std::strerror(ENOSPC) : raft_strerror(status), " (",
                     impl->io.errmsg, ")"));
  }
  cb(req, status);
}

// libraft 0.15 keeps in memory the entries of a write that failed and goes
// on: later entries would be written after a gap, and a member whose term
// or vote could not be written stops answering for good. Neither can be
// undone in this process, so the member stops; restarted (by its
// supervisor), it reloads what its disk holds and catches up from the
// leader.
void RaftNode::Impl::IoFailed(absl::string_view what) {
  spdlog::critical(
      "raft node {}: {}; its raft.data_dir is {}. This member stops (exit 1) so that it does not "
      "go on with a log its disk does not hold; the group goes on without it. Fix the cause (most "
      "often a full disk: make room on it) and start it again: it catches up from the leader",
      options.node_id, std::string(what), options.data_dir);
  spdlog::shutdown();
  std::_Exit(1);
}

// ---- start ----

absl::Status RaftNode::Impl::Init() {
  bool transport_inited = false, io_inited = false, raft_inited = false;
  auto fail = [&](absl::Status st) {
    CloseAll(raft_inited, io_inited, transport_inited);
    return st;
  };
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("raft.data_dir: cannot create ", options.data_dir, ": ", ec.message())));
  }
  // A named member whose connection takes 5 election timeouts (at least
  // 10 s) without an acknowledgement is dialled again by name.
  int rv = RaftNamedTransportInit(&transport, &loop, options.node_id,
                                  std::max(absl::Seconds(10), 5 * options.election_timeout));
  if (rv != 0)
    return fail(absl::InternalError(absl::StrCat("raft transport: ", raft_strerror(rv))));
  transport_inited = true;
  const std::string self = options.SelfAddress();
  const std::string bind = options.listen.empty() ? self : options.listen;
  // libraft binds an IPv4 address: a member named by host binds what its
  // name resolves to now (peers resolve it again at every connect).
  absl::StatusOr<std::string> bind_ip = ResolveIpv4Address(bind);
  if (!bind_ip.ok()) {
    return fail(absl::FailedPreconditionError(
        options.listen.empty()
            ? absl::StrCat("raft.peers: this member's address ", self, ": ",
                           bind_ip.status().message(),
                           "; set raft.listen to the address to bind (e.g. 0.0.0.0:PORT)")
            : absl::StrCat("raft.listen: ", bind_ip.status().message())));
  }
  if (*bind_ip != self) {
    rv = RaftNamedTransportSetBindAddress(&transport, bind_ip->c_str());
    if (rv != 0) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("raft.listen: cannot bind ", bind, ": ", transport.errmsg)));
    }
  }
  rv = raft_uv_init(&io, &loop, options.data_dir.c_str(), &transport);
  if (rv != 0) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("raft.data_dir: cannot open ", options.data_dir, ": ", io.errmsg)));
  }
  io_inited = true;
  uv_append = io.append;
  io.append = AppendHook;
  fsm.version = 1;
  fsm.data = this;
  fsm.apply = FsmApply;
  fsm.snapshot = FsmSnapshot;
  fsm.restore = FsmRestore;
  rv = raft_init(&raft, &io, &fsm, options.node_id, self.c_str());
  if (rv != 0) {
    return fail(absl::InternalError(absl::StrCat("raft init: ", raft_errmsg(&raft))));
  }
  raft_inited = true;
  raft.data = this;
  raft_set_election_timeout(
      &raft, static_cast<unsigned>(absl::ToInt64Milliseconds(options.election_timeout)));
  raft_set_heartbeat_timeout(&raft,
                             static_cast<unsigned>(absl::ToInt64Milliseconds(options.heartbeat)));
  raft_set_snapshot_threshold(&raft, options.snapshot_threshold);
  raft_set_snapshot_trailing(&raft, options.snapshot_trailing);
  // libraft drops a snapshot that reaches a member busy taking its own
  // (recv_install_snapshot.c: "the leader will eventually retry") and the
  // leader sends it again only after this timeout. Each resend loads
  // another copy of the snapshot, so it must exceed the time a snapshot
  // takes to send and install (docs/ha.md).
  raft_set_install_snapshot_timeout(
      &raft, static_cast<unsigned>(absl::ToInt64Milliseconds(options.snapshot_timeout)));
  // A member cut off for a while asks before it disrupts a healthy leader.
  raft_set_pre_vote(&raft, true);
  raft_uv_set_connect_retry_delay(&io, static_cast<unsigned>(std::max<int64_t>(
                                           50, absl::ToInt64Milliseconds(options.heartbeat))));

  raft_configuration group;
  raft_configuration_init(&group);
  for (const RaftPeer& p : options.peers) {
    rv = raft_configuration_add(&group, p.id, p.address.c_str(), RAFT_VOTER);
    if (rv != 0) {
      raft_configuration_close(&group);
      return fail(absl::InvalidArgumentError(
          absl::StrCat("raft.peers: ", p.id, "@", p.address, ": ", raft_strerror(rv))));
    }
  }
  rv = raft_bootstrap(&raft, &group);
  raft_configuration_close(&group);
  const bool restarted = rv == RAFT_CANTBOOTSTRAP;
  if (rv != 0 && !restarted) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "raft.data_dir: cannot bootstrap in ", options.data_dir, ": ", raft_errmsg(&raft))));
  }
  rv = raft_start(&raft);
  if (rv != 0) {
    // Most often the address is taken (libraft leaves errmsg empty then).
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "raft: member ", options.node_id, " cannot start listening on ", bind, " with data in ",
        options.data_dir, ": ", raft_strerror(rv), raft_errmsg(&raft)[0] ? " (" : "",
        raft_errmsg(&raft), raft_errmsg(&raft)[0] ? ")" : "")));
  }
  if (restarted) {
    if (absl::Status st = CheckStoredGroup(); !st.ok()) return fail(st);
  }
  spdlog::info("raft node {} at {}: {} a group of {} in {}", options.node_id, self,
               restarted ? "restarted in" : "bootstrapped", options.peers.size(), options.data_dir);
  Refresh();
  return absl::OkStatus();
}

// The group a used data dir holds is the group: raft.peers may not name a
// member it does not know, nor leave one out, nor move one.
absl::Status RaftNode::Impl::CheckStoredGroup() {
  std::map<uint64_t, std::string> stored;
  for (unsigned i = 0; i < raft.configuration.n; ++i) {
    stored[raft.configuration.servers[i].id] = raft.configuration.servers[i].address;
  }
  std::vector<std::string> listed;
  for (const auto& [id, address] : stored) listed.push_back(absl::StrCat(id, "@", address));
  const std::string group = absl::StrJoin(listed, ", ");
  for (const RaftPeer& p : options.peers) {
    auto it = stored.find(p.id);
    if (it == stored.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("raft.peers: peer ", p.id, "@", p.address,
                       " is unknown to the group stored in ", options.data_dir, " (", group,
                       "); list the stored members, a group's membership is not changed by "
                       "editing raft.peers"));
    }
    if (it->second != p.address) {
      return absl::InvalidArgumentError(absl::StrCat("raft.peers: peer ", p.id, " is at ",
                                                     it->second, " in the group stored in ",
                                                     options.data_dir, ", not at ", p.address));
    }
  }
  if (stored.size() != options.peers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raft.peers: lists ", options.peers.size(), " members but the group stored in ",
        options.data_dir, " has ", stored.size(), " (", group, ")"));
  }
  return absl::OkStatus();
}

void RaftNode::Impl::CloseAll(bool raft_inited, bool io_inited, bool transport_inited) {
  if (raft_inited) {
    raft_close(&raft, RaftCloseCb);  // closes io and transport once raft is done
  } else {
    if (io_inited) raft_uv_close(&io);
    if (transport_inited) RaftNamedTransportClose(&transport);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&wake), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&check), nullptr);
}

void RaftNode::Impl::Run(std::promise<absl::Status>* started) {
  int rv = uv_loop_init(&loop);
  if (rv != 0) {
    started->set_value(absl::InternalError(absl::StrCat("uv_loop_init: ", uv_strerror(rv))));
    return;
  }
  wake.data = this;
  check.data = this;
  uv_async_init(&loop, &wake, WakeCb);
  uv_check_init(&loop, &check);
  uv_check_start(&check, CheckCb);
  loop_node = this;
  absl::Status st = Init();
  started->set_value(st);  // `started` is gone after this
  uv_run(&loop, UV_RUN_DEFAULT);
  while (uv_loop_close(&loop) == UV_EBUSY) uv_run(&loop, UV_RUN_DEFAULT);
  std::deque<Request> left;
  {
    absl::MutexLock l(&mu);
    loop_done = true;
    shared_status.role = RaftRole::kStopped;
    shared_status.leader_ready = false;
    left.swap(queue);
  }
  for (Request& r : left) r.done(Unavailable("the raft node stopped"));
}

// ---- requests ----

void RaftNode::Impl::OnWake() {
  std::deque<Request> batch;
  bool stop;
  {
    absl::MutexLock l(&mu);
    batch.swap(queue);
    stop = stop_requested;
  }
  if (closing) {
    for (Request& r : batch) r.done(Unavailable("the raft node is stopping"));
    return;
  }
  for (Request& r : batch) {
    if (stop) {
      r.done(Unavailable("the raft node is stopping"));
    } else {
      Submit(std::move(r));
    }
  }
  if (stop) {
    closing = true;
    uv_check_stop(&check);
    CloseAll(true, true, true);
  }
}

ProposeResult RaftNode::Impl::NotLeader() {
  ProposeResult r;
  raft_id id = 0;
  const char* address = nullptr;
  raft_leader(&raft, &id, &address);
  r.not_leader = true;
  if (id != 0 && id != options.node_id && address != nullptr) {
    r.leader.id = id;
    r.leader.address = address;
    r.status = absl::FailedPreconditionError(
        absl::StrCat("not the leader; the leader is node ", id, " at ", address));
  } else {
    r.status = absl::FailedPreconditionError("not the leader; no leader is known yet");
  }
  return r;
}

void RaftNode::Impl::Submit(Request request) {
  if (raft_state(&raft) != RAFT_LEADER) {
    request.done(NotLeader());
    return;
  }
  const uint64_t term = raft.current_term;
  if (request.expected_term != 0 && request.expected_term != term) {
    ProposeResult r = NotLeader();
    r.not_leader = false;
    r.status = absl::FailedPreconditionError(
        absl::StrCat("proposed for term ", request.expected_term, " but this member leads term ",
                     term, "; nothing was appended"));
    request.done(std::move(r));
    return;
  }
  if (request.kind == RequestKind::kTransfer) {
    auto* p = new PendingTransfer{{}, this, std::move(request.done)};
    p->req.data = p;
    int rv = raft_transfer(&raft, &p->req, 0, TransferCb);
    if (rv != 0) {
      ProposeCallback done = std::move(p->done);
      delete p;
      done(Unavailable(absl::StrCat("leadership transfer: ", raft_strerror(rv))));
    }
    return;
  }
  if (request.kind == RequestKind::kBarrier) {
    auto* p = new PendingBarrier{{}, this, term, std::move(request.done)};
    p->req.data = p;
    int rv = raft_barrier(&raft, &p->req, BarrierCb);
    if (rv != 0) {
      ProposeCallback done = std::move(p->done);
      delete p;
      done(rv == RAFT_NOTLEADER ? NotLeader()
                                : Unavailable(absl::StrCat("barrier: ", raft_errmsg(&raft))));
    }
    return;
  }
  raft_buffer buf;
  buf.len = FramedSize(request.entry.size());
  buf.base = raft_malloc(buf.len);
  if (buf.base == nullptr) {
    request.done(Unavailable("out of memory for the entry"));
    return;
  }
  FrameEntry(request.entry, buf.base);
  auto* p = new PendingApply{{}, this, term, std::move(request.done)};
  p->req.data = p;
  int rv = raft_apply(&raft, &p->req, &buf, 1, ApplyCb);
  if (rv != 0) {
    raft_free(buf.base);
    ProposeCallback done = std::move(p->done);
    delete p;
    done(rv == RAFT_NOTLEADER ? NotLeader()
                              : Unavailable(absl::StrCat("propose: ", raft_errmsg(&raft))));
  }
}

// After every loop iteration: publish the role, term and leader; start the
// first barrier of a new leader's term; tell on_role what changed.
void RaftNode::Impl::Refresh() {
  if (closing) return;
  if (raft_state(&raft) == RAFT_UNAVAILABLE) {
    IoFailed(absl::StrCat("libraft stopped serving: ", raft_errmsg(&raft)));
  }
  RaftNodeStatus s;
  switch (raft_state(&raft)) {
    case RAFT_LEADER:
      s.role = RaftRole::kLeader;
      break;
    case RAFT_CANDIDATE:
      s.role = RaftRole::kCandidate;
      break;
    default:
      s.role = RaftRole::kFollower;
      break;
  }
  s.term = raft.current_term;
  raft_id id = 0;
  const char* address = nullptr;
  raft_leader(&raft, &id, &address);
  if (id != 0 && address != nullptr) {
    s.leader.id = id;
    s.leader.address = address;
  }
  s.last_applied = raft_last_applied(&raft);
  if (s.role == RaftRole::kLeader && ready_term != s.term && ready_barrier_term != s.term) {
    auto* p = new PendingBarrier{{}, this, s.term, nullptr};
    p->req.data = p;
    if (raft_barrier(&raft, &p->req, BarrierCb) == 0) {
      ready_barrier_term = s.term;
    } else {
      delete p;
    }
  }
  s.leader_ready = s.role == RaftRole::kLeader && ready_term == s.term;
  {
    absl::MutexLock l(&mu);
    shared_status = s;
  }
  const bool changed = !reported_once || s.role != reported.role || s.term != reported.term ||
                       s.leader.id != reported.leader.id || s.leader_ready != reported.leader_ready;
  if (!changed) return;
  reported = s;
  reported_once = true;
  // A leader is reported once ready; its first moments are not a role of their own.
  if (s.role == RaftRole::kLeader && !s.leader_ready) return;
  spdlog::info("raft node {}: {} in term {}, leader {}", options.node_id, RaftRoleName(s.role),
               s.term, s.leader.id == 0 ? std::string("unknown") : absl::StrCat(s.leader.id));
  if (on_role) on_role(s);
}

// ---- the handle ----

RaftNode::RaftNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RaftNode::~RaftNode() { Stop(); }

absl::StatusOr<std::unique_ptr<RaftNode>> RaftNode::Start(const RaftNodeOptions& options,
                                                          RaftStateMachine* machine,
                                                          RaftRoleCallback on_role) {
  if (machine == nullptr) return absl::InvalidArgumentError("RaftNode needs a state machine");
  if (options.SelfAddress().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("raft.node_id: node ", options.node_id, " is not in raft.peers"));
  }
  // A peer that goes away mid-write must not kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->machine = machine;
  impl->on_role = std::move(on_role);
  std::promise<absl::Status> started;
  std::future<absl::Status> result = started.get_future();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw, &started] { raw->Run(&started); });
  absl::Status st = result.get();
  if (!st.ok()) {
    impl->thread.join();
    return st;
  }
  return std::unique_ptr<RaftNode>(new RaftNode(std::move(impl)));
}

void RaftNode::Propose(std::string entry, ProposeCallback done) {
  Propose(std::move(entry), 0, std::move(done));
}

void RaftNode::Propose(std::string entry, uint64_t expected_term, ProposeCallback done) {
  {
    absl::MutexLock l(&impl_->mu);
    if (!impl_->loop_done && !impl_->stop_requested) {
      impl_->queue.push_back(
          {RequestKind::kPropose, std::move(entry), std::move(done), expected_term});
      uv_async_send(&impl_->wake);
      return;
    }
  }
  done(Unavailable("the raft node is stopped"));
}

std::future<ProposeResult> RaftNode::Propose(std::string entry, uint64_t expected_term) {
  auto promise = std::make_shared<std::promise<ProposeResult>>();
  std::future<ProposeResult> f = promise->get_future();
  Propose(std::move(entry), expected_term,
          [promise](ProposeResult r) { promise->set_value(std::move(r)); });
  return f;
}

void RaftNode::Barrier(ProposeCallback done) {
  {
    absl::MutexLock l(&impl_->mu);
    if (!impl_->loop_done && !impl_->stop_requested) {
      impl_->queue.push_back({RequestKind::kBarrier, std::string(), std::move(done), 0});
      uv_async_send(&impl_->wake);
      return;
    }
  }
  done(Unavailable("the raft node is stopped"));
}

void RaftNode::TransferLeadership(ProposeCallback done) {
  {
    absl::MutexLock l(&impl_->mu);
    if (!impl_->loop_done && !impl_->stop_requested) {
      impl_->queue.push_back({RequestKind::kTransfer, std::string(), std::move(done), 0});
      uv_async_send(&impl_->wake);
      return;
    }
  }
  done(Unavailable("the raft node is stopped"));
}

std::future<ProposeResult> RaftNode::Barrier() {
  auto promise = std::make_shared<std::promise<ProposeResult>>();
  std::future<ProposeResult> f = promise->get_future();
  Barrier([promise](ProposeResult r) { promise->set_value(std::move(r)); });
  return f;
}

RaftNodeStatus RaftNode::status() const {
  absl::MutexLock l(&impl_->mu);
  return impl_->shared_status;
}

uint64_t RaftNode::id() const { return impl_->options.node_id; }

void RaftNode::Stop() {
  if (!impl_->thread.joinable()) return;
  {
    absl::MutexLock l(&impl_->mu);
    impl_->stop_requested = true;
    if (!impl_->loop_done) uv_async_send(&impl_->wake);
  }
  impl_->thread.join();
}

}  // namespace formica
