#include "cluster_link.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <type_traits>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "formica/common/grpc_status.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_store.h"

namespace formica::registry {
namespace {

namespace pb = etcdserverpb;

// etcd's default --max-txn-ops.
constexpr int kMaxTxnOps = 128;

absl::Status EtcdError(absl::string_view what, const grpc::Status& st) {
  return FromGrpcStatus(
      grpc::Status(st.error_code(), absl::StrCat("etcd ", what, ": ", st.error_message())));
}

std::string StripScheme(absl::string_view endpoint) {
  for (absl::string_view scheme : {"http://", "https://"}) {
    if (absl::StartsWith(endpoint, scheme)) {
      endpoint.remove_prefix(scheme.size());
    }
  }
  while (!endpoint.empty() && endpoint.back() == '/') {
    endpoint.remove_suffix(1);
  }
  return std::string(endpoint);
}

bool IsIpEndpoint(absl::string_view endpoint, bool* v6) {
  if (!endpoint.empty() && endpoint.front() == '[') {
    *v6 = true;
    return true;
  }
  size_t colon = endpoint.rfind(':');
  absl::string_view host = endpoint.substr(0, colon);
  for (char c : host) {
    if (!(c == '.' || (c >= '0' && c <= '9'))) {
      return false;
    }
  }
  *v6 = false;
  return !host.empty();
}

// One gRPC target for all endpoints: several IP addresses become an ipv4:
// (or ipv6:) address list, served round robin; gRPC skips a dead member.
absl::StatusOr<std::string> ChannelTarget(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("storage.etcd.endpoints is empty: list the etcd members");
  }
  std::vector<std::string> stripped;
  for (const std::string& e : endpoints) {
    stripped.push_back(StripScheme(e));
    if (stripped.back().empty() || stripped.back().find(':') == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("etcd endpoint '", e, "' is not host:port"));
    }
  }
  if (stripped.size() == 1) {
    return stripped[0];
  }
  bool any_v6 = false;
  bool any_v4 = false;
  for (const std::string& e : stripped) {
    bool v6 = false;
    if (!IsIpEndpoint(e, &v6)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "etcd endpoint '", e,
          "' is a host name; several endpoints must be IP addresses (or give one DNS name that "
          "resolves to every member)"));
    }
    (v6 ? any_v6 : any_v4) = true;
  }
  if (any_v6 && any_v4) {
    return absl::InvalidArgumentError("etcd endpoints mix IPv4 and IPv6 addresses");
  }
  return absl::StrCat(any_v6 ? "ipv6:" : "ipv4:", absl::StrJoin(stripped, ","));
}

}  // namespace

class ClusterLink::Impl {
 public:
  Impl(ClusterOptions options, Listener* listener)
      : options_(std::move(options)), listener_(listener) {}

  ~Impl() { Shutdown(); }

  absl::Status Connect() {
    absl::StatusOr<std::string> target = ChannelTarget(options_.endpoints);
    if (!target.ok()) {
      return target.status();
    }
    grpc::ChannelArguments args;
    args.SetLoadBalancingPolicyName("round_robin");
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // etcd values and ranges can exceed gRPC's 4 MiB default.
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), args);
    kv_ = pb::KV::NewStub(channel_);
    lease_ = pb::Lease::NewStub(channel_);
    watch_ = pb::Watch::NewStub(channel_);
    cluster_ = pb::Cluster::NewStub(channel_);
    maintenance_ = pb::Maintenance::NewStub(channel_);

    // Wait for etcd to answer a read.
    absl::Time give_up = absl::Now() + options_.dial_timeout;
    absl::Status last;
    while (true) {
      pb::RangeRequest request;
      request.set_key(options_.prefix);
      request.set_count_only(true);
      pb::RangeResponse response;
      grpc::ClientContext context;
      context.set_wait_for_ready(true);
      context.set_deadline(absl::ToChronoTime(std::min(give_up, absl::Now() + absl::Seconds(1))));
      grpc::Status st = kv_->Range(&context, request, &response);
      if (st.ok()) {
        // Sessions and versions belong to one etcd cluster and prefix.
        identity_ = absl::StrCat(options_.cluster_name, "@",
                                 absl::Hex(response.header().cluster_id()), options_.prefix);
        break;
      }
      last = EtcdError("range", st);
      if (absl::Now() >= give_up) {
        return absl::UnavailableError(absl::StrCat(
            "etcd at ", absl::StrJoin(options_.endpoints, ","), " did not answer within ",
            absl::FormatDuration(options_.dial_timeout), ": ", last.message()));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    if (absl::Status st = RegisterNode(); !st.ok()) {
      return st;
    }
    writer_ = std::thread([this] { WriterLoop(); });
    watcher_ = std::thread([this] { WatchLoop(); });
    keeper_ = std::thread([this] { KeepAliveLoop(); });
    keep_sender_ = std::thread([this] { KeepAliveSender(); });
    return absl::OkStatus();
  }

  void Shutdown() {
    {
      absl::MutexLock lock(&queue_mu_);
      if (stopping_) {
        return;
      }
      stopping_ = true;
    }
    if (writer_.joinable()) {
      writer_.join();
    }
    {
      absl::MutexLock lock(&watch_mu_);
      watch_stopping_ = true;
      if (watch_context_ != nullptr) {
        watch_context_->TryCancel();
      }
    }
    if (watcher_.joinable()) {
      watcher_.join();
    }
    {
      absl::MutexLock lock(&keep_mu_);
      keep_stopping_ = true;
      if (keep_context_ != nullptr) {
        keep_context_->TryCancel();
      }
    }
    if (keeper_.joinable()) {
      keeper_.join();
    }
    if (keep_sender_.joinable()) {
      keep_sender_.join();
    }
    // Withdraw the node at once rather than after its lease.
    if (node_lease_ != 0 && channel_ != nullptr) {
      pb::LeaseRevokeRequest request;
      request.set_id(node_lease_);
      pb::LeaseRevokeResponse response;
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      (void)lease_->LeaseRevoke(&context, request, &response);
    }
  }

  const ClusterOptions& options() const { return options_; }
  const std::string& identity() const { return identity_; }

  // ---- keys ----
  std::string ServicePrefix(absl::string_view service) const {
    return absl::StrCat(options_.prefix, "svc/", service, "#");
  }
  std::string InstanceKey(absl::string_view service, absl::string_view address) const {
    return absl::StrCat(ServicePrefix(service), address);
  }
  std::string ConfigKey(absl::string_view key) const {
    return absl::StrCat(options_.prefix, "cfg/", key);
  }
  std::string SessionKey(uint64_t id) const {
    return absl::StrCat(options_.prefix, "session/", id);
  }
  std::string MemberKey() const {
    return absl::StrCat(options_.prefix, "member/", options_.node_id);
  }
  // (service, address) from an instance key, if it is one.
  bool ParseInstanceKey(absl::string_view key, std::string* service, std::string* address) const {
    std::string svc = absl::StrCat(options_.prefix, "svc/");
    if (!absl::StartsWith(key, svc)) {
      return false;
    }
    key.remove_prefix(svc.size());
    size_t hash = key.find('#');
    if (hash == absl::string_view::npos) {
      return false;
    }
    *service = std::string(key.substr(0, hash));
    *address = std::string(key.substr(hash + 1));
    return true;
  }

  // ---- unary calls, retried through member failures and elections ----
  // `repeated`, if given, is set when an attempt failed after it may have
  // reached etcd and the call was sent again: etcd may have applied it
  // twice, or applied the first and answered the second.
  template <typename Stub, typename Req, typename Resp>
  absl::Status Call(absl::string_view what,
                    grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    Stub* stub, const Req& request, Resp* response, bool* repeated = nullptr) {
    absl::Time give_up = absl::Now() + options_.request_timeout;
    absl::Duration backoff = absl::Milliseconds(20);
    while (true) {
      grpc::ClientContext context;
      context.set_wait_for_ready(true);
      context.set_deadline(absl::ToChronoTime(give_up));
      grpc::Status st = (stub->*method)(&context, request, response);
      if (st.ok() && std::is_same_v<Req, pb::TxnRequest> && DropReply()) {
        st = grpc::Status(grpc::StatusCode::UNAVAILABLE, "reply dropped (a fault made by a test)");
      }
      if (st.ok()) {
        Heard();
        return absl::OkStatus();
      }
      // UNAVAILABLE: no connection, no leader, leader changed, or the member
      // timed out. Each of our writes is safe to repeat; a compare-and-set
      // repeated after it applied is recognised by its caller.
      if (st.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() + backoff >= give_up) {
        return EtcdError(what, st);
      }
      if (repeated != nullptr) {
        *repeated = true;
      }
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Milliseconds(500));
    }
  }

  absl::Status Range(const std::string& key, const std::string& range_end, bool keys_only,
                     pb::RangeResponse* response) {
    pb::RangeRequest request;
    request.set_key(key);
    request.set_range_end(range_end);
    request.set_keys_only(keys_only);
    return Call("range", &pb::KV::Stub::Range, kv_.get(), request, response);
  }

  absl::Status Txn(const pb::TxnRequest& request, pb::TxnResponse* response,
                   bool* repeated = nullptr) {
    return Call("txn", &pb::KV::Stub::Txn, kv_.get(), request, response, repeated);
  }

  // Tests only: the next `n` transaction replies are lost after etcd
  // applied them, as when a connection breaks at the wrong moment.
  void DropTxnReplies(int n) { dropped_replies_ = n; }

  // Tests only: ends the watch stream; its successor runs `hold` before it
  // creates the watches again.
  void BreakWatchStream(std::function<void()> hold) {
    absl::MutexLock lock(&watch_mu_);
    hold_creates_ = std::move(hold);
    if (watch_context_ != nullptr) {
      watch_context_->TryCancel();
    }
  }
  bool DropReply() {
    int left = dropped_replies_.load();
    while (left > 0 && !dropped_replies_.compare_exchange_weak(left, left - 1)) {
    }
    return left > 0;
  }

  // The first change to `key` at or after `revision`: a one-shot watch.
  // FAILED_PRECONDITION if etcd compacted that history away.
  absl::StatusOr<mvccpb::Event> FirstChange(const std::string& key, int64_t revision) {
    grpc::ClientContext context;
    context.AddMetadata("hasleader", "true");
    context.set_wait_for_ready(true);
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.request_timeout));
    auto stream = watch_->Watch(&context);
    pb::WatchRequest request;
    request.mutable_create_request()->set_key(key);
    request.mutable_create_request()->set_start_revision(revision);
    pb::WatchResponse response;
    if (stream->Write(request)) {
      while (stream->Read(&response)) {
        if (response.canceled()) {
          context.TryCancel();
          (void)stream->Finish();
          return absl::FailedPreconditionError(
              absl::StrCat("etcd no longer has the history of '", key, "' from revision ", revision,
                           " (compacted at ", response.compact_revision(), ")"));
        }
        if (response.events_size() > 0) {
          context.TryCancel();
          (void)stream->Finish();
          return response.events(0);
        }
      }
    }
    return EtcdError("watch", stream->Finish());
  }

  // ---- node membership ----
  absl::Status RegisterNode() {
    pb::LeaseGrantRequest grant;
    grant.set_ttl(std::max<int64_t>(2, absl::ToInt64Seconds(options_.node_lease)));
    pb::LeaseGrantResponse granted;
    if (absl::Status st =
            Call("lease grant", &pb::Lease::Stub::LeaseGrant, lease_.get(), grant, &granted);
        !st.ok()) {
      return st;
    }
    v1::ClusterNode node;
    node.set_id(options_.node_id);
    node.set_address(options_.node_address);
    node.set_started_unix_ms(absl::ToUnixMillis(started_));
    pb::PutRequest put;
    put.set_key(MemberKey());
    put.set_value(node.SerializeAsString());
    put.set_lease(granted.id());
    pb::PutResponse put_response;
    if (absl::Status st = Call("put", &pb::KV::Stub::Put, kv_.get(), put, &put_response);
        !st.ok()) {
      return st;
    }
    node_lease_ = granted.id();
    node_lost_ = false;
    return absl::OkStatus();
  }

  // ---- the writer ----
  struct Op {
    enum Kind {
      kOpen,
      kResume,
      kPublish,
      kUnpublish,
      kRevoke,
      kLoadService,
      kLoadConfig,
      kCancelWatch
    } kind;
    uint64_t lease = 0;
    uint64_t record_revision = 0;  // publish, unpublish: see GuardSession
    int64_t ttl = 0;
    std::string service;
    std::string address;
    std::string key;
    std::string value;
    uint64_t serial = 0;
    std::function<void(absl::Status)> done;
    SessionDone session_done;
    std::function<void(absl::StatusOr<Resumed>)> resume_done;
  };

  void Enqueue(Op op) {
    absl::MutexLock lock(&queue_mu_);
    queue_.push_back(std::move(op));
  }

  void WriterLoop() {
    absl::Time next_node_tick = absl::Now();
    absl::Duration node_tick = std::max(absl::Milliseconds(200), options_.node_lease / 3);
    while (true) {
      std::deque<Op> ops;
      {
        absl::MutexLock lock(&queue_mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
          return stopping_ || !queue_.empty();
        };
        queue_mu_.AwaitWithDeadline(absl::Condition(&ready), next_node_tick);
        ops.swap(queue_);
      }
      bool stopping = Stopping();
      while (!ops.empty()) {
        if (stopping) {
          Fail(ops.front(), absl::UnavailableError("dsrd is shutting down"));
          ops.pop_front();
          continue;
        }
        if (ops.front().kind == Op::kPublish) {
          RunPublishes(ops);
        } else {
          Run(ops.front());
          ops.pop_front();
        }
      }
      if (stopping) {
        return;
      }
      if (absl::Now() >= next_node_tick) {
        next_node_tick = absl::Now() + node_tick;
        if (node_lost_) {
          if (absl::Status st = RegisterNode(); !st.ok()) {
            SPDLOG_WARN("cannot re-register this node in etcd: {}", st.ToString());
          } else {
            SPDLOG_INFO("node {} registered again in etcd", options_.node_id);
          }
        }
      }
    }
  }

  bool Stopping() {
    absl::MutexLock lock(&queue_mu_);
    return stopping_;
  }

  static void Fail(Op& op, const absl::Status& status) {
    if (op.done) op.done(status);
    if (op.session_done) op.session_done(status);
    if (op.resume_done) op.resume_done(status);
  }

  // Consecutive publishes with distinct keys ride in one transaction.
  // Guards a session's write: its record still has the revision this node
  // wrote when it opened or resumed the session. Once another node resumes
  // it, this node's queued writes for it change nothing.
  void GuardSession(pb::TxnRequest* txn, const Op& op) const {
    pb::Compare* cmp = txn->add_compare();
    cmp->set_key(SessionKey(op.lease));
    cmp->set_target(pb::Compare::MOD);
    cmp->set_result(pb::Compare::EQUAL);
    cmp->set_mod_revision(static_cast<int64_t>(op.record_revision));
  }

  static absl::Status Moved(const Op& op) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", op.lease, " moved to another node"));
  }

  // Consecutive publishes with distinct keys ride in one transaction.
  void RunPublishes(std::deque<Op>& ops) {
    std::vector<Op> batch;
    std::set<std::string> keys;
    std::set<std::pair<uint64_t, uint64_t>> sessions;
    while (!ops.empty() && ops.front().kind == Op::kPublish &&
           static_cast<int>(batch.size() + sessions.size()) < kMaxTxnOps - 1 &&
           keys.count(ops.front().key) == 0) {
      keys.insert(ops.front().key);
      sessions.insert({ops.front().lease, ops.front().record_revision});
      batch.push_back(std::move(ops.front()));
      ops.pop_front();
    }
    if (batch.size() > 1) {
      pb::TxnRequest txn;
      std::set<uint64_t> guarded;
      for (const Op& op : batch) {
        if (guarded.insert(op.lease).second) {
          GuardSession(&txn, op);
        }
        pb::PutRequest* put = txn.add_success()->mutable_request_put();
        put->set_key(op.key);
        put->set_value(op.value);
        put->set_lease(static_cast<int64_t>(op.lease));
      }
      pb::TxnResponse response;
      absl::Status st = Txn(txn, &response);
      if (st.ok() && response.succeeded()) {
        for (Op& op : batch) op.done(absl::OkStatus());
        return;
      }
      if (!st.ok() && !absl::IsNotFound(st)) {
        for (Op& op : batch) op.done(st);  // etcd is out of reach: no use trying each
        return;
      }
      // A moved session or a lapsed lease fails the whole transaction: go
      // one by one.
    }
    for (Op& op : batch) {
      pb::TxnRequest txn;
      GuardSession(&txn, op);
      pb::PutRequest* put = txn.add_success()->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(static_cast<int64_t>(op.lease));
      pb::TxnResponse response;
      absl::Status st = Txn(txn, &response);
      op.done(st.ok() && !response.succeeded() ? Moved(op) : st);
    }
  }

  void Run(Op& op) {
    switch (op.kind) {
      case Op::kOpen: {
        pb::LeaseGrantRequest grant;
        grant.set_ttl(op.ttl);
        pb::LeaseGrantResponse granted;
        absl::Status st =
            Call("lease grant", &pb::Lease::Stub::LeaseGrant, lease_.get(), grant, &granted);
        if (st.ok() && !granted.error().empty()) {
          st = absl::UnavailableError(absl::StrCat("etcd lease grant: ", granted.error()));
        }
        if (!st.ok()) {
          op.session_done(st);
          return;
        }
        pb::PutRequest put;
        put.set_key(SessionKey(static_cast<uint64_t>(granted.id())));
        put.set_value(op.value);
        put.set_lease(granted.id());
        pb::PutResponse put_response;
        st = Call("put", &pb::KV::Stub::Put, kv_.get(), put, &put_response);
        if (!st.ok()) {
          op.session_done(st);
          return;
        }
        op.session_done(Opened{static_cast<uint64_t>(granted.id()),
                               static_cast<uint64_t>(put_response.header().revision())});
        return;
      }
      case Op::kResume: {
        pb::LeaseTimeToLiveRequest request;
        request.set_id(static_cast<int64_t>(op.lease));
        request.set_keys(true);
        pb::LeaseTimeToLiveResponse response;
        absl::Status st = Call("lease time-to-live", &pb::Lease::Stub::LeaseTimeToLive,
                               lease_.get(), request, &response);
        if (!st.ok()) {
          op.resume_done(st);
          return;
        }
        // etcd answers TTL -1 for a lease it does not have.
        if (response.ttl() <= 0) {
          op.resume_done(absl::NotFoundError(absl::StrCat(
              "session ", op.lease,
              " not found: its lease lapsed or it never existed; open a new session")));
          return;
        }
        // Renew at once, so the lease does not lapse while the client replays.
        KeepAlive(op.lease);
        Resumed resumed;
        resumed.ttl_seconds = response.grantedttl();
        for (const std::string& key : response.keys()) {
          std::string service;
          std::string address;
          if (ParseInstanceKey(key, &service, &address)) {
            resumed.publications.emplace_back(std::move(service), std::move(address));
          }
        }
        pb::PutRequest put;
        put.set_key(SessionKey(op.lease));
        put.set_value(op.value);
        put.set_lease(static_cast<int64_t>(op.lease));
        pb::PutResponse put_response;
        st = Call("put", &pb::KV::Stub::Put, kv_.get(), put, &put_response);
        resumed.record_revision = static_cast<uint64_t>(put_response.header().revision());
        if (!st.ok()) {
          op.resume_done(absl::IsNotFound(st) ? absl::NotFoundError(absl::StrCat(
                                                    "session ", op.lease, " lapsed while resuming"))
                                              : st);
          return;
        }
        op.resume_done(std::move(resumed));
        return;
      }
      case Op::kUnpublish: {
        // Only if this session still holds it: a provider that restarted
        // may have taken the address over.
        pb::TxnRequest txn;
        GuardSession(&txn, op);
        pb::Compare* cmp = txn.add_compare();
        cmp->set_key(op.key);
        cmp->set_target(pb::Compare::LEASE);
        cmp->set_result(pb::Compare::EQUAL);
        cmp->set_lease(static_cast<int64_t>(op.lease));
        txn.add_success()->mutable_request_delete_range()->set_key(op.key);
        pb::TxnResponse response;
        op.done(Txn(txn, &response));
        return;
      }
      case Op::kRevoke: {
        pb::LeaseRevokeRequest request;
        request.set_id(static_cast<int64_t>(op.lease));
        pb::LeaseRevokeResponse response;
        absl::Status st =
            Call("lease revoke", &pb::Lease::Stub::LeaseRevoke, lease_.get(), request, &response);
        if (!st.ok() && !absl::IsNotFound(st)) {
          SPDLOG_WARN("revoking session {}: {}", op.lease, st.ToString());
        }
        return;
      }
      case Op::kLoadService:
      case Op::kLoadConfig:
        Load(op);
        return;
      case Op::kCancelWatch: {
        pb::WatchRequest cancel;
        cancel.mutable_cancel_request()->set_watch_id(static_cast<int64_t>(op.serial));
        WriteWatch(cancel);
        return;
      }
      case Op::kPublish:
        break;
    }
  }

  // ---- watches ----
  struct WatchEntry {
    bool config = false;
    std::string name;  // service or config key
    std::string key;
    std::string range_end;
    bool loaded = false;
    int64_t next_revision = 0;
    bool created = false;       // a create request went out on the current stream
    bool acknowledged = false;  // and etcd answered it
    // Unwatched while its create was unanswered: etcd learns of the cancel
    // once it has answered the create (a cancel that overtook the create
    // would leave etcd a watcher nobody cancels).
    bool cancelled = false;
  };

  void AddWatch(bool config, const std::string& name) {
    Op op;
    op.kind = config ? Op::kLoadConfig : Op::kLoadService;
    {
      absl::MutexLock lock(&watch_mu_);
      auto& by_name = config ? config_watches_ : service_watches_;
      if (by_name.count(name) > 0) {
        return;
      }
      uint64_t serial = ++next_watch_serial_;
      WatchEntry& entry = watches_[serial];
      entry.config = config;
      entry.name = name;
      if (config) {
        entry.key = ConfigKey(name);
      } else {
        entry.key = ServicePrefix(name);
        entry.range_end = EtcdPrefixEnd(entry.key);
      }
      by_name[name] = serial;
      op.serial = serial;
      op.key = entry.key;
      op.address = entry.range_end;
      op.service = name;
    }
    Enqueue(std::move(op));
  }

  // Events for a removed watch are dropped at once; the writer tells etcd,
  // after etcd has answered the watch's create.
  void RemoveWatch(bool config, const std::string& name) {
    absl::MutexLock lock(&watch_mu_);
    auto& by_name = config ? config_watches_ : service_watches_;
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return;
    }
    uint64_t serial = it->second;
    by_name.erase(it);
    auto w = watches_.find(serial);
    if (w == watches_.end()) {
      return;
    }
    if (w->second.created && !w->second.acknowledged) {
      w->second.cancelled = true;  // HandleWatchResponse cancels it
      return;
    }
    bool created = w->second.created;
    watches_.erase(w);
    if (created) {
      CancelWatch(serial);
    }
  }

  void CancelWatch(uint64_t serial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_) {
    Op op;
    op.kind = Op::kCancelWatch;
    op.serial = serial;
    Enqueue(std::move(op));
  }

  // On the writer thread: read the whole range, hand it over, then watch
  // from the next revision.
  void Load(const Op& op) {
    {
      absl::MutexLock lock(&watch_mu_);
      auto it = watches_.find(op.serial);
      if (it == watches_.end() || it->second.cancelled) {
        return;  // unwatched meanwhile
      }
    }
    pb::RangeResponse response;
    absl::Status st = Range(op.key, op.address, false, &response);
    if (!st.ok()) {
      SPDLOG_WARN("loading '{}' from etcd failed ({}); retrying", op.service, st.ToString());
      absl::SleepFor(absl::Milliseconds(200));
      Enqueue(op);
      return;
    }
    uint64_t revision = static_cast<uint64_t>(response.header().revision());
    if (op.kind == Op::kLoadService) {
      std::vector<InstanceChange> changes;
      for (const auto& kv : response.kvs()) {
        InstanceChange change;
        std::string service;
        if (!ParseInstanceKey(kv.key(), &service, &change.address)) {
          continue;
        }
        auto instance = std::make_shared<v1::Instance>();
        if (!instance->ParseFromString(kv.value())) {
          SPDLOG_WARN("etcd key {} does not hold an instance; ignored", kv.key());
          continue;
        }
        change.instance = std::move(instance);
        change.owner = static_cast<uint64_t>(kv.lease());
        changes.push_back(std::move(change));
      }
      listener_->OnServiceUpdate(op.service, revision, true, std::move(changes));
    } else {
      StoredConfig entry;
      entry.key = op.service;
      // Absent: as of this read's revision, so a deletion missed while the
      // watch was behind compaction still reaches the watchers.
      entry.version = revision;
      if (response.kvs_size() > 0) {
        entry.value = response.kvs(0).value();
        entry.version = static_cast<uint64_t>(response.kvs(0).mod_revision());
        entry.exists = true;
      }
      listener_->OnConfigUpdate(entry);
    }
    std::optional<pb::WatchRequest> create;
    {
      absl::MutexLock lock(&watch_mu_);
      auto it = watches_.find(op.serial);
      if (it == watches_.end() || it->second.cancelled) {
        return;
      }
      it->second.loaded = true;
      it->second.next_revision = response.header().revision() + 1;
      create = CreateRequest(op.serial, it->second);
    }
    if (create.has_value()) {
      WriteWatch(*create);
    }
  }

  // The create request for `entry` if the stream is up and it has none
  // yet; the caller writes it after letting go of watch_mu_. A write that
  // fails means a broken stream, whose successor creates every watch again.
  std::optional<pb::WatchRequest> CreateRequest(uint64_t serial, WatchEntry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_) {
    if (watch_stream_ == nullptr || entry.created) {
      return std::nullopt;
    }
    pb::WatchRequest request;
    pb::WatchCreateRequest* create = request.mutable_create_request();
    create->set_key(entry.key);
    create->set_range_end(entry.range_end);
    create->set_start_revision(entry.next_revision);
    create->set_watch_id(static_cast<int64_t>(serial));
    // Progress reports move next_revision on a quiet range, so a reconnect
    // does not start below etcd's compaction.
    create->set_progress_notify(true);
    entry.created = true;
    entry.acknowledged = false;
    return request;
  }

  // Writes on the watch stream, never under watch_mu_ (the registry's
  // threads take that one and must not wait for the network).
  void WriteWatch(const pb::WatchRequest& request) {
    absl::MutexLock write_lock(&watch_write_mu_);
    if (watch_writer_ != nullptr) {
      watch_writer_->Write(request);
    }
  }

  void WatchLoop() {
    absl::Duration backoff = absl::Milliseconds(100);
    while (true) {
      auto context = std::make_unique<grpc::ClientContext>();
      // End the stream if its member loses the leader, rather than go quiet.
      context->AddMetadata("hasleader", "true");
      context->set_wait_for_ready(true);
      std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream;
      {
        absl::MutexLock lock(&watch_mu_);
        if (watch_stopping_) {
          return;
        }
        watch_context_ = context.get();  // so Shutdown can cancel the start below
      }
      // Starting a stream waits for a connection: never under a lock.
      stream = watch_->Watch(context.get());
      {
        absl::MutexLock write_lock(&watch_write_mu_);
        watch_writer_ = stream.get();
      }
      std::vector<pb::WatchRequest> creates;
      std::function<void()> hold;
      {
        absl::MutexLock lock(&watch_mu_);
        hold = std::move(hold_creates_);
        hold_creates_ = nullptr;
        watch_stream_ = stream.get();
        for (auto it = watches_.begin(); it != watches_.end();) {
          WatchEntry& entry = it->second;
          if (entry.cancelled) {
            it = watches_.erase(it);  // gone with the old stream
            continue;
          }
          entry.created = false;
          if (entry.loaded) {
            if (auto create = CreateRequest(it->first, entry)) {
              creates.push_back(std::move(*create));
            }
          }
          ++it;
        }
      }
      if (hold) {
        hold();
      }
      for (const pb::WatchRequest& create : creates) {
        WriteWatch(create);
      }
      pb::WatchResponse response;
      bool heard = false;
      while (stream->Read(&response)) {
        heard = true;
        Heard();
        HandleWatchResponse(response);
      }
      {
        absl::MutexLock lock(&watch_mu_);
        watch_stream_ = nullptr;
      }
      {
        // Waits for a write in progress; later ones find no stream.
        absl::MutexLock write_lock(&watch_write_mu_);
        watch_writer_ = nullptr;
      }
      grpc::Status st = stream->Finish();
      absl::MutexLock lock(&watch_mu_);
      watch_context_ = nullptr;
      if (watch_stopping_) {
        return;
      }
      SPDLOG_WARN("etcd watch stream ended ({}); reconnecting", st.error_message());
      backoff = heard ? absl::Milliseconds(100) : std::min(backoff * 2, absl::Seconds(2));
      watch_mu_.AwaitWithTimeout(absl::Condition(&watch_stopping_), backoff);
    }
  }

  void HandleWatchResponse(const pb::WatchResponse& response) {
    uint64_t serial = static_cast<uint64_t>(response.watch_id());
    bool config = false;
    std::string name;
    {
      absl::MutexLock lock(&watch_mu_);
      auto it = watches_.find(serial);
      if (it == watches_.end()) {
        return;  // canceled by us
      }
      WatchEntry& entry = it->second;
      if (entry.cancelled) {
        // Unwatched before etcd answered its create: now etcd knows it.
        if (response.created() || response.canceled()) {
          watches_.erase(it);
          if (!response.canceled()) {
            CancelWatch(serial);
          }
        }
        return;
      }
      if (response.created()) {
        entry.acknowledged = true;
      }
      if (response.canceled()) {
        // Fell behind compaction (or the member refused): load again under
        // a new watch id (etcd may still hold the old one on this stream).
        SPDLOG_WARN("etcd canceled the watch on '{}' ({}; compacted at {}); reloading", entry.name,
                    response.cancel_reason(), response.compact_revision());
        WatchEntry fresh = entry;
        fresh.loaded = false;
        fresh.created = false;
        watches_.erase(it);
        uint64_t renewed = ++next_watch_serial_;
        (fresh.config ? config_watches_ : service_watches_)[fresh.name] = renewed;
        Op op;
        op.kind = fresh.config ? Op::kLoadConfig : Op::kLoadService;
        op.serial = renewed;
        op.key = fresh.key;
        op.address = fresh.range_end;
        op.service = fresh.name;
        watches_[renewed] = std::move(fresh);
        Enqueue(std::move(op));
        return;
      }
      if (response.events_size() == 0) {
        // A progress report: nothing changed in the range up to here.
        if (!response.created()) {
          entry.next_revision = std::max(entry.next_revision, response.header().revision() + 1);
        }
        return;
      }
      config = entry.config;
      name = entry.name;
      for (const auto& event : response.events()) {
        entry.next_revision = std::max(entry.next_revision, event.kv().mod_revision() + 1);
      }
    }
    if (config) {
      for (const auto& event : response.events()) {
        StoredConfig entry;
        entry.key = name;
        entry.version = static_cast<uint64_t>(event.kv().mod_revision());
        entry.exists = event.type() == mvccpb::Event::PUT;
        if (entry.exists) {
          entry.value = event.kv().value();
        }
        listener_->OnConfigUpdate(entry);
      }
      return;
    }
    // One update per revision, so a version is always a whole revision.
    std::vector<InstanceChange> changes;
    int64_t revision = 0;
    auto flush = [&] {
      if (!changes.empty()) {
        listener_->OnServiceUpdate(name, static_cast<uint64_t>(revision), false,
                                   std::move(changes));
        changes.clear();
      }
    };
    for (const auto& event : response.events()) {
      if (event.kv().mod_revision() != revision) {
        flush();
        revision = event.kv().mod_revision();
      }
      InstanceChange change;
      std::string service;
      if (!ParseInstanceKey(event.kv().key(), &service, &change.address)) {
        continue;
      }
      if (event.type() == mvccpb::Event::PUT) {
        auto instance = std::make_shared<v1::Instance>();
        if (!instance->ParseFromString(event.kv().value())) {
          continue;
        }
        change.instance = std::move(instance);
        change.owner = static_cast<uint64_t>(event.kv().lease());
      }
      changes.push_back(std::move(change));
    }
    flush();
  }

  // ---- keep-alives ----
  // Queued, never blocking the caller; the sender thread writes them. A
  // keep-alive lost with a broken stream is made up by the next heartbeat.
  void KeepAlive(uint64_t lease) {
    if (lease == 0) {
      return;
    }
    absl::MutexLock lock(&keep_mu_);
    keep_pending_.insert(lease);
  }

  void KeepAliveSender() {
    absl::Time next_probe = absl::Now();
    while (true) {
      std::set<uint64_t> leases;
      {
        absl::MutexLock lock(&keep_mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keep_mu_) {
          return keep_stopping_ || (!keep_pending_.empty() && keep_stream_ != nullptr);
        };
        // The node's own lease goes every kReachabilityProbe, whatever else
        // is busy: its replies tell Reachable() that etcd still answers.
        if (!keep_mu_.AwaitWithDeadline(absl::Condition(&ready), next_probe)) {
          next_probe = absl::Now() + kReachabilityProbe;
          keep_pending_.insert(static_cast<uint64_t>(node_lease_.load()));
          if (keep_stream_ == nullptr) {
            continue;
          }
        }
        if (keep_stopping_) {
          return;
        }
        leases.swap(keep_pending_);
        // The reader thread keeps the stream alive until keep_writing_ drops.
        ++keep_writers_;
      }
      for (uint64_t lease : leases) {
        pb::LeaseKeepAliveRequest request;
        request.set_id(static_cast<int64_t>(lease));
        if (!keep_writer_stream_->Write(request)) {
          break;
        }
      }
      absl::MutexLock lock(&keep_mu_);
      --keep_writers_;
    }
  }

  void KeepAliveLoop() {
    absl::Duration backoff = absl::Milliseconds(100);
    while (true) {
      auto context = std::make_unique<grpc::ClientContext>();
      context->AddMetadata("hasleader", "true");
      context->set_wait_for_ready(true);
      std::unique_ptr<
          grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>>
          stream;
      {
        absl::MutexLock lock(&keep_mu_);
        if (keep_stopping_) {
          return;
        }
        keep_context_ = context.get();  // so Shutdown can cancel the start below
      }
      // Starting a stream waits for a connection: never under a lock.
      stream = lease_->LeaseKeepAlive(context.get());
      {
        absl::MutexLock lock(&keep_mu_);
        keep_stream_ = stream.get();
        keep_writer_stream_ = stream.get();
      }
      pb::LeaseKeepAliveResponse response;
      bool heard = false;
      while (stream->Read(&response)) {
        heard = true;
        Heard();
        if (response.ttl() > 0) {
          continue;
        }
        uint64_t id = static_cast<uint64_t>(response.id());
        if (response.id() == node_lease_) {
          node_lost_ = true;
          SPDLOG_WARN("this node's etcd lease lapsed; registering again");
        } else {
          listener_->OnLeaseLost(id);
        }
      }
      {
        absl::MutexLock lock(&keep_mu_);
        keep_stream_ = nullptr;
        auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keep_mu_) { return keep_writers_ == 0; };
        keep_mu_.Await(absl::Condition(&idle));
        keep_writer_stream_ = nullptr;
      }
      grpc::Status st = stream->Finish();
      absl::MutexLock lock(&keep_mu_);
      keep_context_ = nullptr;
      if (keep_stopping_) {
        return;
      }
      SPDLOG_WARN("etcd keep-alive stream ended ({}); reconnecting", st.error_message());
      backoff = heard ? absl::Milliseconds(100) : std::min(backoff * 2, absl::Seconds(2));
      keep_mu_.AwaitWithTimeout(absl::Condition(&keep_stopping_), backoff);
    }
  }

  bool Reachable() const {
    return absl::Now() - absl::FromUnixMillis(last_heard_ms_) < kUnreachableAfter;
  }
  void Heard() { last_heard_ms_ = absl::ToUnixMillis(absl::Now()); }

  // ---- views ----
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out) {
    pb::RangeResponse response;
    std::string prefix = ServicePrefix(service);
    if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), false, &response); !st.ok()) {
      return st;
    }
    if (response.kvs_size() == 0) {
      return absl::NotFoundError(
          absl::StrCat("service '", service, "' has no instances in the cluster"));
    }
    out->set_service(service);
    out->set_version(static_cast<uint64_t>(response.header().revision()));
    for (const auto& kv : response.kvs()) {
      (void)out->add_instances()->ParseFromString(kv.value());
    }
    return absl::OkStatus();
  }

  absl::Status ListServices(v1::ListServicesResponse* out) {
    pb::RangeResponse response;
    std::string prefix = absl::StrCat(options_.prefix, "svc/");
    if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), true, &response); !st.ok()) {
      return st;
    }
    std::map<std::string, std::pair<uint64_t, uint32_t>> services;  // version, instances
    for (const auto& kv : response.kvs()) {
      std::string service;
      std::string address;
      if (ParseInstanceKey(kv.key(), &service, &address)) {
        auto& s = services[service];
        s.first = std::max(s.first, static_cast<uint64_t>(kv.mod_revision()));
        ++s.second;
      }
    }
    for (const auto& [name, s] : services) {
      v1::ServiceSummary* summary = out->add_services();
      summary->set_service(name);
      summary->set_version(s.first);
      summary->set_instances(s.second);
    }
    return absl::OkStatus();
  }

  absl::Status Describe(v1::ClusterInfo* out) {
    out->set_mode("cluster");
    out->set_cluster(options_.cluster_name);
    pb::RangeResponse members;
    std::string prefix = absl::StrCat(options_.prefix, "member/");
    if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), false, &members); !st.ok()) {
      return st;
    }
    out->set_etcd_revision(members.header().revision());
    for (const auto& kv : members.kvs()) {
      v1::ClusterNode* node = out->add_nodes();
      if (node->ParseFromString(kv.value())) {
        node->set_self(node->id() == options_.node_id);
      }
    }
    pb::MemberListRequest list_request;
    pb::MemberListResponse list;
    if (absl::Status st = Call("member list", &pb::Cluster::Stub::MemberList, cluster_.get(),
                               list_request, &list);
        !st.ok()) {
      return st;
    }
    pb::StatusRequest status_request;
    pb::StatusResponse status;
    uint64_t leader = 0;
    if (Call("status", &pb::Maintenance::Stub::Status, maintenance_.get(), status_request, &status)
            .ok()) {
      leader = status.leader();
    }
    for (const pb::Member& m : list.members()) {
      v1::EtcdMember* member = out->add_etcd_members();
      member->set_id(m.id());
      member->set_name(m.name());
      for (const std::string& url : m.clienturls()) {
        member->add_client_urls(url);
      }
      member->set_leader(m.id() == leader);
    }
    return absl::OkStatus();
  }

  // ---- config entries ----
  class ConfigStore;

  static constexpr absl::Duration kReachabilityProbe = absl::Milliseconds(400);
  static constexpr absl::Duration kUnreachableAfter = absl::Seconds(2);

  const ClusterOptions options_;
  Listener* const listener_;
  // When etcd last answered a keep-alive (Unix ms).
  std::atomic<int64_t> last_heard_ms_{absl::ToUnixMillis(absl::Now())};
  std::atomic<int> dropped_replies_{0};  // DropTxnReplies
  std::string identity_;                 // set by Connect
  const absl::Time started_ = absl::Now();
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::KV::Stub> kv_;
  std::unique_ptr<pb::Lease::Stub> lease_;
  std::unique_ptr<pb::Watch::Stub> watch_;
  std::unique_ptr<pb::Cluster::Stub> cluster_;
  std::unique_ptr<pb::Maintenance::Stub> maintenance_;

  // The node's lease: written by the writer thread (and Connect before it);
  // node_lost_ is set by the keep-alive reader.
  std::atomic<int64_t> node_lease_{0};
  std::atomic<bool> node_lost_{false};

  absl::Mutex queue_mu_;
  std::deque<Op> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread writer_;

  absl::Mutex watch_mu_;
  std::map<uint64_t, WatchEntry> watches_ ABSL_GUARDED_BY(watch_mu_);
  std::map<std::string, uint64_t> service_watches_ ABSL_GUARDED_BY(watch_mu_);
  std::map<std::string, uint64_t> config_watches_ ABSL_GUARDED_BY(watch_mu_);
  uint64_t next_watch_serial_ ABSL_GUARDED_BY(watch_mu_) = 0;
  grpc::ClientContext* watch_context_ ABSL_GUARDED_BY(watch_mu_) = nullptr;
  absl::Mutex watch_write_mu_;  // never held with watch_mu_
  grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>* watch_writer_
      ABSL_GUARDED_BY(watch_write_mu_) = nullptr;
  grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>* watch_stream_
      ABSL_GUARDED_BY(watch_mu_) = nullptr;
  bool watch_stopping_ ABSL_GUARDED_BY(watch_mu_) = false;
  std::function<void()> hold_creates_ ABSL_GUARDED_BY(watch_mu_);  // BreakWatchStream
  std::thread watcher_;

  absl::Mutex keep_mu_;
  grpc::ClientContext* keep_context_ ABSL_GUARDED_BY(keep_mu_) = nullptr;
  grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>* keep_stream_
      ABSL_GUARDED_BY(keep_mu_) = nullptr;
  bool keep_stopping_ ABSL_GUARDED_BY(keep_mu_) = false;
  std::set<uint64_t> keep_pending_ ABSL_GUARDED_BY(keep_mu_);
  int keep_writers_ ABSL_GUARDED_BY(keep_mu_) = 0;
  // Set and cleared by the reader under keep_mu_ with no writer active; the
  // sender uses it outside the lock while it counts as a writer.
  grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>*
      keep_writer_stream_ = nullptr;
  std::thread keeper_;
  std::thread keep_sender_;
};

// Config entries as etcd keys: the version is the key's mod revision;
// compare-and-set is an etcd transaction comparing it.
class ClusterLink::Impl::ConfigStore final : public RegistryStore {
 public:
  explicit ConfigStore(Impl* link) : link_(link) {}

  absl::StatusOr<uint64_t> NextBootEpoch() override {
    return static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
  }

  absl::StatusOr<StoredConfig> GetConfig(absl::string_view key) override {
    pb::RangeResponse response;
    if (absl::Status st = link_->Range(link_->ConfigKey(key), "", false, &response); !st.ok()) {
      return st;
    }
    StoredConfig entry;
    entry.key = std::string(key);
    if (response.kvs_size() > 0) {
      entry.value = response.kvs(0).value();
      entry.version = static_cast<uint64_t>(response.kvs(0).mod_revision());
      entry.exists = true;
    }
    return entry;
  }

  absl::StatusOr<std::vector<StoredConfig>> ListConfig(absl::string_view prefix) override {
    std::string from = link_->ConfigKey(prefix);
    pb::RangeResponse response;
    if (absl::Status st = link_->Range(from, EtcdPrefixEnd(from), false, &response); !st.ok()) {
      return st;
    }
    size_t strip = link_->ConfigKey("").size();
    std::vector<StoredConfig> out;
    for (const auto& kv : response.kvs()) {
      StoredConfig entry;
      entry.key = kv.key().substr(strip);
      entry.value = kv.value();
      entry.version = static_cast<uint64_t>(kv.mod_revision());
      entry.exists = true;
      out.push_back(std::move(entry));
    }
    return out;
  }

  absl::StatusOr<StoredConfig> PutConfig(absl::string_view key, absl::string_view value,
                                         std::optional<uint64_t> expected_version) override {
    pb::TxnRequest txn;
    std::string etcd_key = link_->ConfigKey(key);
    Guard(&txn, etcd_key, expected_version);
    pb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(etcd_key);
    put->set_value(std::string(value));
    pb::TxnResponse response;
    bool repeated = false;
    if (absl::Status st = link_->Txn(txn, &response, &repeated); !st.ok()) {
      return st;
    }
    StoredConfig entry;
    entry.key = std::string(key);
    entry.value = std::string(value);
    entry.exists = true;
    if (!response.succeeded()) {
      return RefusedOrOwn(key, etcd_key, std::move(entry), *expected_version, repeated, response);
    }
    entry.version = static_cast<uint64_t>(response.header().revision());
    return entry;
  }

  absl::StatusOr<StoredConfig> DeleteConfig(absl::string_view key,
                                            std::optional<uint64_t> expected_version) override {
    pb::TxnRequest txn;
    std::string etcd_key = link_->ConfigKey(key);
    Guard(&txn, etcd_key, expected_version);
    txn.add_success()->mutable_request_delete_range()->set_key(etcd_key);
    pb::TxnResponse response;
    bool repeated = false;
    if (absl::Status st = link_->Txn(txn, &response, &repeated); !st.ok()) {
      return st;
    }
    if (!response.succeeded()) {
      StoredConfig entry;
      entry.key = std::string(key);
      entry.exists = false;
      return RefusedOrOwn(key, etcd_key, std::move(entry), *expected_version, repeated, response);
    }
    if (response.responses_size() == 0 ||
        response.responses(0).response_delete_range().deleted() == 0) {
      return absl::NotFoundError(absl::StrCat("config key '", key, "' does not exist"));
    }
    StoredConfig entry;
    entry.key = std::string(key);
    entry.version = static_cast<uint64_t>(response.header().revision());
    entry.exists = false;
    return entry;
  }

 private:
  // A compare-and-set refused by its guard: `wanted` with the version of
  // the change that applied it, when that change was this very write
  // (AppliedBefore); otherwise the conflict.
  absl::StatusOr<StoredConfig> RefusedOrOwn(absl::string_view key, const std::string& etcd_key,
                                            StoredConfig wanted, uint64_t expected, bool repeated,
                                            const pb::TxnResponse& response) {
    absl::StatusOr<uint64_t> own = AppliedBefore(etcd_key, wanted, expected, repeated, response);
    if (!own.ok()) {
      return Conflict(key, expected, response);
    }
    wanted.version = *own;
    return wanted;
  }

  // A compare-and-set whose transaction was sent again after an attempt
  // that may have reached etcd, and whose last attempt found the key moved
  // on: if the first change to the key after the expected version is
  // exactly this write (`wanted`: its value, or its deletion), an earlier
  // attempt applied it and lost its reply. Returns that change's version;
  // NOT_FOUND if the key was changed by someone else.
  absl::StatusOr<uint64_t> AppliedBefore(const std::string& etcd_key, const StoredConfig& wanted,
                                         uint64_t expected, bool repeated,
                                         const pb::TxnResponse& conflict) {
    if (!repeated) {
      return absl::NotFoundError("sent once: the conflict is real");
    }
    if (expected != 0 && expected >= static_cast<uint64_t>(conflict.header().revision())) {
      // No change after it exists yet: waiting for one would stall the write.
      return absl::NotFoundError("the expected version is not one the store has reached");
    }
    int64_t from = static_cast<int64_t>(expected) + 1;
    if (expected == 0) {
      // Created by this write? Then the key's current life began with it.
      if (conflict.responses_size() == 0 ||
          conflict.responses(0).response_range().kvs_size() == 0) {
        return absl::NotFoundError("the key does not exist");
      }
      from = conflict.responses(0).response_range().kvs(0).create_revision();
    }
    absl::StatusOr<mvccpb::Event> change = link_->FirstChange(etcd_key, from);
    if (!change.ok()) {
      SPDLOG_WARN("config key '{}': cannot tell whether a repeated write had applied: {}",
                  wanted.key, change.status().ToString());
      return change.status();
    }
    bool same = wanted.exists
                    ? change->type() == mvccpb::Event::PUT && change->kv().value() == wanted.value
                    : change->type() == mvccpb::Event::DELETE;
    if (!same) {
      return absl::NotFoundError("changed by someone else");
    }
    return static_cast<uint64_t>(change->kv().mod_revision());
  }

  // With an expected version, the write happens only if the key is still at
  // it; otherwise the transaction reads the key to name its version.
  static void Guard(pb::TxnRequest* txn, const std::string& etcd_key,
                    std::optional<uint64_t> expected) {
    if (!expected.has_value()) {
      return;
    }
    pb::Compare* cmp = txn->add_compare();
    cmp->set_key(etcd_key);
    cmp->set_result(pb::Compare::EQUAL);
    if (*expected == 0) {
      cmp->set_target(pb::Compare::VERSION);  // a key that does not exist has version 0
      cmp->set_version(0);
    } else {
      cmp->set_target(pb::Compare::MOD);
      cmp->set_mod_revision(static_cast<int64_t>(*expected));
    }
    txn->add_failure()->mutable_request_range()->set_key(etcd_key);
  }

  static absl::Status Conflict(absl::string_view key, uint64_t expected,
                               const pb::TxnResponse& response) {
    uint64_t current = 0;
    if (response.responses_size() > 0 && response.responses(0).response_range().kvs_size() > 0) {
      current = static_cast<uint64_t>(response.responses(0).response_range().kvs(0).mod_revision());
    }
    return absl::FailedPreconditionError(
        absl::StrCat("config key '", key, "' is at version ", current,
                     current == 0 ? " (it does not exist)" : "", ", not the expected ", expected));
  }

  Impl* const link_;
};

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ClusterLink>> ClusterLink::Start(ClusterOptions options,
                                                                Listener* listener) {
  if (options.node_id.empty()) {
    return absl::InvalidArgumentError("cluster mode needs a node id (server.id)");
  }
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("storage.etcd.prefix '", options.prefix, "' must end with '/'"));
  }
  auto impl = std::make_unique<Impl>(std::move(options), listener);
  if (absl::Status st = impl->Connect(); !st.ok()) {
    return st;
  }
  return std::unique_ptr<ClusterLink>(new ClusterLink(std::move(impl)));
}

ClusterLink::ClusterLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterLink::~ClusterLink() { impl_->Shutdown(); }

void ClusterLink::Shutdown() { impl_->Shutdown(); }
const ClusterOptions& ClusterLink::options() const { return impl_->options(); }
const std::string& ClusterLink::identity() const { return impl_->identity(); }

std::unique_ptr<RegistryStore> ClusterLink::NewConfigStore() {
  return std::make_unique<Impl::ConfigStore>(impl_.get());
}

void ClusterLink::OpenSession(int64_t ttl_seconds, const v1::SessionRecord& record,
                              SessionDone done) {
  Impl::Op op;
  op.kind = Impl::Op::kOpen;
  op.ttl = ttl_seconds;
  op.value = record.SerializeAsString();
  op.session_done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::ResumeSession(uint64_t session_id, const v1::SessionRecord& record,
                                std::function<void(absl::StatusOr<Resumed>)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kResume;
  op.lease = session_id;
  op.value = record.SerializeAsString();
  op.resume_done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::Publish(uint64_t session_id, uint64_t record_revision,
                          const v1::Instance& instance, std::function<void(absl::Status)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kPublish;
  op.lease = session_id;
  op.record_revision = record_revision;
  op.key = impl_->InstanceKey(instance.service(), instance.address());
  op.value = instance.SerializeAsString();
  op.done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::Unpublish(uint64_t session_id, uint64_t record_revision,
                            const std::string& service, const std::string& address,
                            std::function<void(absl::Status)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kUnpublish;
  op.lease = session_id;
  op.record_revision = record_revision;
  op.key = impl_->InstanceKey(service, address);
  op.done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::CloseSession(uint64_t session_id) {
  Impl::Op op;
  op.kind = Impl::Op::kRevoke;
  op.lease = session_id;
  impl_->Enqueue(std::move(op));
}

void ClusterLink::KeepAlive(uint64_t session_id) { impl_->KeepAlive(session_id); }
bool ClusterLink::Reachable() const { return impl_->Reachable(); }
void ClusterLink::WatchService(const std::string& service) { impl_->AddWatch(false, service); }
void ClusterLink::UnwatchService(const std::string& service) { impl_->RemoveWatch(false, service); }
void ClusterLink::WatchConfig(const std::string& key) { impl_->AddWatch(true, key); }
void ClusterLink::UnwatchConfig(const std::string& key) { impl_->RemoveWatch(true, key); }

absl::Status ClusterLink::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  return impl_->GetService(service, out);
}
absl::Status ClusterLink::ListServices(v1::ListServicesResponse* out) {
  return impl_->ListServices(out);
}
absl::Status ClusterLink::Describe(v1::ClusterInfo* out) { return impl_->Describe(out); }
void ClusterLink::DropTxnRepliesForTesting(int n) { impl_->DropTxnReplies(n); }
void ClusterLink::BreakWatchStreamForTesting(std::function<void()> hold) {
  impl_->BreakWatchStream(std::move(hold));
}

}  // namespace formica::registry
