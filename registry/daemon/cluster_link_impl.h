// ClusterLink's insides, shared by the files that implement it:
//   cluster_link.cc          connecting, the node's membership, the public calls
//   cluster_link_writer.cc   the writer thread: sessions, publications, transactions
//   cluster_link_watches.cc  the shared watch stream and the loads behind it
//   cluster_link_leases.cc   the shared keep-alive stream, reachability
//   cluster_link_views.cc    operator views read from etcd
//   cluster_link_config.cc   config entries as etcd keys (a RegistryStore)
// Private to dsrd's etcd backend; nothing else includes it.
#pragma once

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

namespace pb = etcdserverpb;

// etcd's default --max-txn-ops.
inline constexpr int kMaxTxnOps = 128;

// An etcd call's failure as a Status naming the call.
absl::Status EtcdError(absl::string_view what, const grpc::Status& st);

class ClusterLink::Impl {
 public:
  Impl(ClusterOptions options, Listener* listener)
      : options_(std::move(options)), listener_(listener) {}

  ~Impl() { Shutdown(); }

  absl::Status Connect();

  void Shutdown();
  absl::Status RegisterNode();

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
  absl::StatusOr<mvccpb::Event> FirstChange(const std::string& key, int64_t revision);

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

  void Enqueue(Op op);

  void WriterLoop();

  bool Stopping();

  static void Fail(Op& op, const absl::Status& status);

  // Consecutive publishes with distinct keys ride in one transaction.
  // Guards a session's write: its record still has the revision this node
  // wrote when it opened or resumed the session. Once another node resumes
  // it, this node's queued writes for it change nothing.
  void GuardSession(pb::TxnRequest* txn, const Op& op) const;

  static absl::Status Moved(const Op& op);

  // Consecutive publishes with distinct keys ride in one transaction.
  void RunPublishes(std::deque<Op>& ops);

  void Run(Op& op);

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

  void AddWatch(bool config, const std::string& name);

  // Events for a removed watch are dropped at once; the writer tells etcd,
  // after etcd has answered the watch's create.
  void RemoveWatch(bool config, const std::string& name);

  void CancelWatch(uint64_t serial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_);

  // On the writer thread: read the whole range, hand it over, then watch
  // from the next revision.
  void Load(const Op& op);

  // The create request for `entry` if the stream is up and it has none
  // yet; the caller writes it after letting go of watch_mu_. A write that
  // fails means a broken stream, whose successor creates every watch again.
  std::optional<pb::WatchRequest> CreateRequest(uint64_t serial, WatchEntry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_);

  // Writes on the watch stream, never under watch_mu_ (the registry's
  // threads take that one and must not wait for the network).
  void WriteWatch(const pb::WatchRequest& request);

  void WatchLoop();

  void HandleWatchResponse(const pb::WatchResponse& response);

  // ---- keep-alives ----
  // Queued, never blocking the caller; the sender thread writes them. A
  // keep-alive lost with a broken stream is made up by the next heartbeat.
  void KeepAlive(uint64_t lease, std::function<void()> renewed = nullptr);

  void KeepAliveSender();

  void KeepAliveLoop();

  bool Reachable() const {
    return absl::Now() - absl::FromUnixMillis(last_heard_ms_) < kUnreachableAfter;
  }
  void Heard() { last_heard_ms_ = absl::ToUnixMillis(absl::Now()); }

  // ---- views ----
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out);

  absl::Status ListServices(v1::ListServicesResponse* out);

  absl::Status Describe(v1::ClusterInfo* out);

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
  // Who waits for a lease's next renewal to be sent, and, per lease, for
  // each renewal sent and not answered yet, in order (etcd answers a
  // stream's keep-alives in the order they were sent).
  using Renewed = std::vector<std::function<void()>>;
  std::map<uint64_t, Renewed> keep_waiting_ ABSL_GUARDED_BY(keep_mu_);
  std::map<uint64_t, std::deque<Renewed>> keep_in_flight_ ABSL_GUARDED_BY(keep_mu_);
  int keep_writers_ ABSL_GUARDED_BY(keep_mu_) = 0;
  // Set and cleared by the reader under keep_mu_ with no writer active; the
  // sender uses it outside the lock while it counts as a writer.
  grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>*
      keep_writer_stream_ = nullptr;
  std::thread keeper_;
  std::thread keep_sender_;
};

}  // namespace formica::registry
