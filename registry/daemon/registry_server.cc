#include "registry_server.h"

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/clock.h"
#include "formica/common/config.h"
#include "formica/common/grpc_status.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "registry_store.h"

namespace formica::registry {
namespace {

using Msg = std::shared_ptr<const v1::ServerMessage>;

// Topic keys in a session's outbox: one pending message per service or key.
std::string ServiceTopic(absl::string_view service) { return absl::StrCat("s", service); }
std::string ConfigTopic(absl::string_view key) { return absl::StrCat("c", key); }

bool SameInstance(const v1::Instance& a, const v1::Instance& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

// The push a config entry's watchers get.
Msg ConfigMessage(const StoredConfig& stored) {
  auto message = std::make_shared<v1::ServerMessage>();
  v1::ConfigEntry* entry = message->mutable_config();
  entry->set_key(stored.key);
  entry->set_value(stored.value);
  entry->set_version(stored.version);
  entry->set_exists(stored.exists);
  return message;
}

}  // namespace

class SessionReactor;

// The registry's state and rules, independent of the transport. Every field
// is guarded by mu_; reactors call in on gRPC's callback threads.
class RegistryCore : public ClusterLink::Listener {
 public:
  RegistryCore(RegistryServerOptions options, std::unique_ptr<RegistryStore> store, uint64_t epoch)
      : options_(std::move(options)), store_(std::move(store)), epoch_(epoch) {
    clock_ = options_.clock != nullptr ? options_.clock : Clock::Real();
    absl::Duration warmup =
        options_.warmup < absl::ZeroDuration() ? options_.default_lease : options_.warmup;
    warmup_end_ = clock_->Now() + warmup;
    warming_up_ = warmup > absl::ZeroDuration();
    maintenance_ = std::thread([this] { MaintenanceLoop(); });
  }

  ~RegistryCore() { StopMaintenance(); }

  void StopMaintenance() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (maintenance_.joinable()) {
      maintenance_.join();
    }
  }

  RegistryStore* store() { return store_.get(); }
  // Cluster mode (set before serving).
  bool clustered() const { return cluster_ != nullptr; }
  // UNAVAILABLE, naming etcd, while this node cannot reach it.
  absl::Status EtcdReachable() const {
    if (cluster_ != nullptr && !cluster_->Reachable()) {
      return absl::UnavailableError(absl::StrCat("this registry node cannot reach etcd at ",
                                                 absl::StrJoin(cluster_->options().endpoints, ","),
                                                 "; ask another node"));
    }
    return absl::OkStatus();
  }
  const RegistryServerOptions& options() const { return options_; }

  // Cluster mode: set once, before serving.
  void AttachCluster(ClusterLink* cluster, std::unique_ptr<RegistryStore> store) {
    absl::MutexLock lock(&mu_);  // the maintenance thread runs already
    cluster_ = cluster;
    store_ = std::move(store);
  }

  // ---- ClusterLink::Listener ----
  void OnServiceUpdate(const std::string& service, uint64_t revision, bool reset,
                       std::vector<InstanceChange> changes) override;
  void OnConfigUpdate(const StoredConfig& entry) override;
  void OnLeaseLost(uint64_t session_id) override;

  // ---- called by SessionReactor ----
  void StreamStarted(SessionReactor* reactor);
  bool Handle(SessionReactor* reactor, const v1::ClientMessage& message);
  void StreamEnded(SessionReactor* reactor);
  void WriteDone(SessionReactor* reactor, bool ok);
  void ReactorDone(SessionReactor* reactor);

  // ---- called by unary handlers ----
  absl::Status ListServices(v1::ListServicesResponse* out);
  absl::Status Describe(v1::ClusterInfo* out);
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out);
  void ConfigChanged(const StoredConfig& entry);
  v1::PushSwitchState SetStopPush(std::optional<bool> stop);
  void ListSessions(v1::ListSessionsResponse* out);
  absl::Status KillSession(uint64_t id);
  // Ends every stream, opened or not, with UNAVAILABLE `why`, and refuses
  // new ones the same way (the registry is shutting down).
  void CloseAllStreams(absl::string_view why);

 private:
  struct Subscription {
    uint64_t acked = 0;
    uint64_t sent = 0;
    absl::Time sent_at = absl::InfinitePast();
  };
  struct Session {
    uint64_t id = 0;
    std::string client_name;
    std::string peer;
    absl::Duration lease;
    absl::Time last_seen;
    absl::Time last_keepalive = absl::InfinitePast();  // cluster mode: last etcd renewal
    uint64_t record_revision = 0;       // cluster mode: guards this node's writes (ClusterLink)
    SessionReactor* reactor = nullptr;  // null while detached
    std::set<std::pair<std::string, std::string>> publications;  // (service, address)
    std::map<std::string, Subscription> services;
    std::map<std::string, Subscription> configs;
    std::map<std::string, Msg> pending;  // newest snapshot per topic
  };
  struct InstanceRecord {
    v1::Instance instance;
    uint64_t owner = 0;
  };
  struct ServiceState {
    // Cluster mode: false until etcd's instance set has been read; no push
    // before. `seen` is the newest etcd revision applied.
    bool loaded = true;
    uint64_t seen = 0;
    uint64_t version = 0;
    Msg snapshot;
    std::map<std::string, InstanceRecord> instances;  // by address
    std::set<uint64_t> subscribers;
  };
  struct WatchedConfig {
    bool loaded = true;  // as ServiceState::loaded
    uint64_t version = 0;
    Msg message;
    std::set<uint64_t> watchers;
  };

  bool Held() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_push_ || warming_up_; }
  // Whether a subscriber that acknowledged `acked` needs the version `have`.
  // Cluster versions are etcd revisions, the same on every node: a client
  // that saw a newer one elsewhere is not behind. Embedded versions come
  // from one node: any difference means another node or a wiped store.
  bool Stale(uint64_t have, uint64_t acked) const {
    return cluster_ != nullptr ? acked < have : acked != have;
  }
  // (epoch << 32) + sequence. Before the sequence would overflow into the
  // epoch, a new epoch is taken from the store, so versions keep growing.
  uint64_t NextVersion() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (++seq_ >= (uint64_t{1} << 32)) {
      absl::StatusOr<uint64_t> next = store_->NextBootEpoch();
      epoch_ = next.ok() ? *next : epoch_ + 1;
      seq_ = 1;
    }
    return (epoch_ << 32) | seq_;
  }
  uint64_t NewSessionId() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t id = 0;
    while (id == 0 || sessions_.count(id) > 0) {
      id = session_ids_() >> 1;  // random, so ids from other nodes or boots never match
    }
    return id;
  }

  ServiceState& EnsureService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<WatchedConfig*> EnsureConfig(const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A change: a new version; the snapshot is built when first needed, so a
  // service nobody subscribes to costs no copies.
  void NewVersion(ServiceState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    state.version = NextVersion();
    state.snapshot.reset();
  }
  const Msg& CurrentSnapshot(const std::string& name, ServiceState& state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeForgetService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkDirty(const std::string& service) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Flush() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new version of one service, queued for its subscribers.
  void FlushService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueService(Session& session, const std::string& service)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueConfig(Session& session, const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pump(Session& session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reply(SessionReactor* reactor, Msg message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReplyResult(SessionReactor* reactor, uint64_t request_id, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RequestFinish(SessionReactor* reactor, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `revoke`: the session ends for good (closed, killed); otherwise, in
  // cluster mode, etcd decides (another node may have resumed it).
  void RemoveSession(uint64_t id, absl::string_view why, bool revoke = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HandleOpen(SessionReactor* reactor, const v1::OpenSession& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HandleOpenCluster(SessionReactor* reactor, const v1::OpenSession& open, absl::Duration lease)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishOpen(SessionReactor* reactor, Session& session, const v1::OpenSession& open,
                  absl::Duration lease, bool resumed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A session this node holds, taken over by a new stream.
  void ResumeLocal(SessionReactor* reactor, Session& session, const v1::OpenSession& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reactor waiting for `serial`'s open, if it still waits.
  SessionReactor* TakeOpening(uint64_t serial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClusterPublish(Session& session, const v1::Publish& publish)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClusterUnpublish(Session& session, const v1::Unpublish& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An etcd write for a session finished: answer it, or end the session's
  // stream if its lease is gone or etcd is out of reach.
  void ClusterResult(uint64_t session_id, uint64_t incarnation, uint64_t request_id,
                     const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetConfigIfUnwatched(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyConfig(const StoredConfig& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandlePublish(Session& session, const v1::Instance& instance)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandleUnpublish(Session& session, const v1::Unpublish& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandleSubscribe(Session& session, const std::string& service, uint64_t known)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandleWatch(Session& session, const std::string& key, uint64_t known)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaintenanceLoop();

  const RegistryServerOptions options_;
  std::unique_ptr<RegistryStore> store_;
  ClusterLink* cluster_ = nullptr;  // null in embedded mode
  uint64_t epoch_ ABSL_GUARDED_BY(mu_);
  Clock* clock_ = nullptr;
  std::thread maintenance_;

  absl::Mutex mu_;
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::mt19937_64 session_ids_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
  std::map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ServiceState> services_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WatchedConfig> configs_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dirty_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dirty_configs_ ABSL_GUARDED_BY(mu_);
  bool flush_scheduled_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time flush_at_ ABSL_GUARDED_BY(mu_);
  absl::Time last_flush_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stop_push_ ABSL_GUARDED_BY(mu_) = false;
  bool warming_up_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time warmup_end_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Every stream gRPC has not finished with, so that shutting down ends
  // each with its reason, opened or not.
  std::set<SessionReactor*> streams_ ABSL_GUARDED_BY(mu_);
  std::string closed_why_ ABSL_GUARDED_BY(mu_);  // set: new streams are refused with it
  // Cluster mode: streams whose open waits for etcd, by reactor serial.
  std::map<uint64_t, SessionReactor*> opening_ ABSL_GUARDED_BY(mu_);
  bool etcd_reachable_ ABSL_GUARDED_BY(mu_) = true;
};

// One session stream. Deletes itself when gRPC is done with it. The fields
// below the reactions are guarded by the core's mutex.
class SessionReactor : public grpc::ServerBidiReactor<v1::ClientMessage, v1::ServerMessage> {
 public:
  SessionReactor(RegistryCore* core, std::string peer)
      : peer(std::move(peer)), serial(NextSerial()), core_(core) {
    StartRead(&request_);
    core_->StreamStarted(this);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      core_->StreamEnded(this);
      return;
    }
    core_->Handle(this, request_);
  }
  // Called by the core, under its mutex, once the last message is handled.
  void ReadNext() { StartRead(&request_); }
  void OnWriteDone(bool ok) override { core_->WriteDone(this, ok); }
  void OnCancel() override { core_->StreamEnded(this); }
  void OnDone() override {
    core_->ReactorDone(this);
    delete this;
  }

  const std::string peer;
  const uint64_t serial;  // unique for the process's life
  uint64_t session_id = 0;
  std::deque<Msg> control;  // replies, in order, ahead of pushes
  Msg in_flight;
  std::string in_flight_topic;
  bool finishing = false;
  bool finished = false;
  grpc::Status finish_status;

 private:
  static uint64_t NextSerial() {
    static std::atomic<uint64_t> next{0};
    return ++next;
  }
  RegistryCore* const core_;
  v1::ClientMessage request_;
};

// ---------------------------------------------------------------------------
// Session stream handling

bool RegistryCore::Handle(SessionReactor* reactor, const v1::ClientMessage& message) {
  absl::MutexLock lock(&mu_);
  if (reactor->finishing) {
    return false;
  }
  if (reactor->session_id == 0) {
    if (!message.has_open()) {
      RequestFinish(reactor, absl::InvalidArgumentError(
                                 "the first message on a session stream must be 'open'"));
      return false;
    }
    return HandleOpen(reactor, message.open());
  }
  auto it = sessions_.find(reactor->session_id);
  if (it == sessions_.end() || it->second.reactor != reactor) {
    RequestFinish(reactor, absl::UnavailableError(absl::StrCat("session ", reactor->session_id,
                                                               " is no longer attached")));
    return false;
  }
  Session& session = it->second;
  session.last_seen = clock_->Now();
  if (cluster_ != nullptr && session.last_seen - session.last_keepalive >= session.lease / 4) {
    // Any message shows the client alive: renew its lease in etcd.
    cluster_->KeepAlive(session.id);
    session.last_keepalive = session.last_seen;
  }
  switch (message.body_case()) {
    case v1::ClientMessage::kHeartbeat: {
      auto reply = std::make_shared<v1::ServerMessage>();
      reply->mutable_heartbeat_ack()->set_seq(message.heartbeat().seq());
      Reply(reactor, std::move(reply));
      break;
    }
    case v1::ClientMessage::kPublish:
      if (cluster_ != nullptr) {
        ClusterPublish(session, message.publish());
        break;
      }
      ReplyResult(reactor, message.publish().request_id(),
                  HandlePublish(session, message.publish().instance()));
      break;
    case v1::ClientMessage::kUnpublish:
      if (cluster_ != nullptr) {
        ClusterUnpublish(session, message.unpublish());
        break;
      }
      ReplyResult(reactor, message.unpublish().request_id(),
                  HandleUnpublish(session, message.unpublish()));
      break;
    case v1::ClientMessage::kSubscribe:
      ReplyResult(reactor, message.subscribe().request_id(),
                  HandleSubscribe(session, message.subscribe().service(),
                                  message.subscribe().known_version()));
      break;
    case v1::ClientMessage::kUnsubscribe: {
      const std::string& name = message.unsubscribe().service();
      absl::Status st = absl::OkStatus();
      if (session.services.erase(name) == 0) {
        st = absl::NotFoundError(absl::StrCat("this session is not subscribed to '", name, "'"));
      } else {
        session.pending.erase(ServiceTopic(name));
        auto s = services_.find(name);
        if (s != services_.end()) {
          s->second.subscribers.erase(session.id);
          MaybeForgetService(name);
        }
      }
      ReplyResult(reactor, message.unsubscribe().request_id(), st);
      break;
    }
    case v1::ClientMessage::kWatchConfig:
      ReplyResult(reactor, message.watch_config().request_id(),
                  HandleWatch(session, message.watch_config().key(),
                              message.watch_config().known_version()));
      break;
    case v1::ClientMessage::kUnwatchConfig: {
      const std::string& key = message.unwatch_config().key();
      absl::Status st = absl::OkStatus();
      if (session.configs.erase(key) == 0) {
        st = absl::NotFoundError(absl::StrCat("this session does not watch '", key, "'"));
      } else {
        session.pending.erase(ConfigTopic(key));
        auto c = configs_.find(key);
        if (c != configs_.end()) {
          c->second.watchers.erase(session.id);
          ForgetConfigIfUnwatched(key);
        }
      }
      ReplyResult(reactor, message.unwatch_config().request_id(), st);
      break;
    }
    case v1::ClientMessage::kAck: {
      const v1::Ack& ack = message.ack();
      auto& table = ack.has_config_key() ? session.configs : session.services;
      auto sub = table.find(ack.has_config_key() ? ack.config_key() : ack.service());
      if (sub != table.end() && ack.version() > sub->second.acked) {
        sub->second.acked = ack.version();
      }
      break;
    }
    case v1::ClientMessage::kReconcile:
      for (const auto& [service, version] : message.reconcile().services()) {
        if (session.services.count(service) == 0) {
          // A subscription the registry lost: take it up again.
          (void)HandleSubscribe(session, service, version);
          continue;
        }
        Subscription& sub = session.services[service];
        sub.acked = std::max(sub.acked, version);
        auto s = services_.find(service);
        if (s != services_.end() && Stale(s->second.version, version) && !Held()) {
          EnqueueService(session, service);
        }
      }
      for (const auto& [key, version] : message.reconcile().configs()) {
        if (session.configs.count(key) == 0) {
          (void)HandleWatch(session, key, version);
          continue;
        }
        Subscription& sub = session.configs[key];
        sub.acked = std::max(sub.acked, version);
        auto c = configs_.find(key);
        if (c != configs_.end() && Stale(c->second.version, version) && !Held()) {
          EnqueueConfig(session, key);
        }
      }
      break;
    case v1::ClientMessage::kClose:
      RemoveSession(session.id, "closed by the client");
      RequestFinish(reactor, absl::OkStatus());
      return false;
    case v1::ClientMessage::kOpen:
      RequestFinish(reactor, absl::InvalidArgumentError("this stream already has a session"));
      return false;
    case v1::ClientMessage::BODY_NOT_SET:
      RequestFinish(reactor, absl::InvalidArgumentError("empty message on a session stream"));
      return false;
  }
  Pump(session);
  if (!reactor->finishing) {
    reactor->ReadNext();
  }
  return true;
}

bool RegistryCore::HandleOpen(SessionReactor* reactor, const v1::OpenSession& open) {
  absl::Duration lease =
      open.lease_ms() == 0 ? options_.default_lease : absl::Milliseconds(open.lease_ms());
  lease = std::clamp(lease, options_.min_lease, options_.max_lease);
  Session* session = nullptr;
  if (cluster_ != nullptr) {
    // Even a session held here is checked with etcd: its lease may be gone,
    // and a node that cannot reach etcd must send the client elsewhere.
    return HandleOpenCluster(reactor, open, lease);
  }
  if (open.resume_session_id() != 0) {
    auto it = sessions_.find(open.resume_session_id());
    if (it == sessions_.end()) {
      RequestFinish(reactor,
                    absl::NotFoundError(absl::StrCat(
                        "session ", open.resume_session_id(),
                        " not found: its lease lapsed or it never existed; open a new session")));
      return false;
    }
    session = &it->second;
    session->lease = lease;
    ResumeLocal(reactor, *session, open);
    return true;
  }
  uint64_t id = NewSessionId();
  session = &sessions_[id];
  session->id = id;
  FinishOpen(reactor, *session, open, lease, false);
  return true;
}

void RegistryCore::ResumeLocal(SessionReactor* reactor, Session& session,
                               const v1::OpenSession& open) {
  if (session.reactor != nullptr && session.reactor != reactor) {
    SessionReactor* old = session.reactor;
    session.reactor = nullptr;
    RequestFinish(old, absl::AbortedError("session taken over by a newer stream"));
  }
  // Whatever was sent on the old stream may be lost: resend what is unacked.
  for (auto& [name, sub] : session.services) {
    sub.sent = sub.acked;
    auto s = services_.find(name);
    if (s != services_.end() && s->second.loaded && Stale(s->second.version, sub.acked) &&
        !Held()) {
      EnqueueService(session, name);
    }
  }
  for (auto& [key, sub] : session.configs) {
    sub.sent = sub.acked;
    auto c = configs_.find(key);
    if (c != configs_.end() && c->second.loaded && Stale(c->second.version, sub.acked) && !Held()) {
      EnqueueConfig(session, key);
    }
  }
  FinishOpen(reactor, session, open, session.lease, true);
}

void RegistryCore::FinishOpen(SessionReactor* reactor, Session& session,
                              const v1::OpenSession& open, absl::Duration lease, bool resumed) {
  session.client_name = open.client_name();
  session.peer = reactor->peer;
  session.lease = lease;
  session.last_seen = clock_->Now();
  session.reactor = reactor;
  reactor->session_id = session.id;
  SPDLOG_DEBUG("session {} {} for '{}' at {}", session.id, resumed ? "resumed" : "opened",
               session.client_name, session.peer);
  auto reply = std::make_shared<v1::ServerMessage>();
  v1::SessionOpened* opened = reply->mutable_opened();
  opened->set_session_id(session.id);
  opened->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  opened->set_resumed(resumed);
  opened->set_registry_id(options_.registry_id);
  if (cluster_ != nullptr) {
    opened->set_cluster(cluster_->identity());
  }
  Reply(reactor, std::move(reply));
  Pump(session);
  if (!reactor->finishing) {
    reactor->ReadNext();
  }
}

// Cluster mode: a session is an etcd lease (whole seconds, at least etcd's
// minimum of 2 s). A new one is granted; a resumed one is taken over from
// whichever node held it, with the publications still under its lease. The
// stream reads nothing more until etcd has answered.
bool RegistryCore::HandleOpenCluster(SessionReactor* reactor, const v1::OpenSession& open,
                                     absl::Duration lease) {
  if (!cluster_->Reachable()) {
    RequestFinish(reactor,
                  absl::UnavailableError("this registry node cannot reach etcd; use another node"));
    return false;
  }
  int64_t ttl = std::max<int64_t>(2, absl::ToInt64Seconds(absl::Ceil(lease, absl::Seconds(1))));
  lease = absl::Seconds(ttl);
  v1::SessionRecord record;
  record.set_client_name(open.client_name());
  record.set_peer(reactor->peer);
  record.set_node(options_.registry_id);
  record.set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  uint64_t serial = reactor->serial;
  opening_[serial] = reactor;
  if (open.resume_session_id() != 0) {
    uint64_t id = open.resume_session_id();
    cluster_->ResumeSession(
        id, record, [this, serial, open, id](absl::StatusOr<ClusterLink::Resumed> resumed) {
          absl::MutexLock lock(&mu_);
          SessionReactor* reactor = TakeOpening(serial);
          if (reactor == nullptr) {
            return;  // the stream went away; the lease lives on for another try
          }
          if (!resumed.ok()) {
            if (absl::IsNotFound(resumed.status())) {
              RemoveSession(id, "its etcd lease is gone", false);
            }
            RequestFinish(reactor, resumed.status());
            return;
          }
          if (auto local = sessions_.find(id); local != sessions_.end()) {
            // A copy held here may be stale (the client may have been on
            // another node since): etcd's publications win, and the client's
            // replay brings its subscriptions back.
            if (local->second.reactor != nullptr && local->second.reactor != reactor) {
              SessionReactor* old = local->second.reactor;
              local->second.reactor = nullptr;
              RequestFinish(old, absl::AbortedError("session taken over by a newer stream"));
            }
            RemoveSession(id, "resumed by a new stream", false);
          }
          Session& session = sessions_[id];
          session.id = id;
          session.record_revision = resumed->record_revision;
          session.last_keepalive = clock_->Now();
          for (auto& publication : resumed->publications) {
            session.publications.insert(std::move(publication));
          }
          SPDLOG_INFO("session {} of '{}' taken over from etcd with {} publication(s)", id,
                      open.client_name(), session.publications.size());
          FinishOpen(reactor, session, open, absl::Seconds(resumed->ttl_seconds), true);
        });
    return true;
  }
  cluster_->OpenSession(
      ttl, record, [this, serial, open, lease](absl::StatusOr<ClusterLink::Opened> opened) {
        absl::MutexLock lock(&mu_);
        SessionReactor* reactor = TakeOpening(serial);
        if (reactor == nullptr) {
          if (opened.ok()) {
            cluster_->CloseSession(opened->session_id);  // nobody will use it
          }
          return;
        }
        if (!opened.ok()) {
          RequestFinish(reactor, absl::UnavailableError(absl::StrCat("cannot open a session: ",
                                                                     opened.status().message())));
          return;
        }
        Session& session = sessions_[opened->session_id];
        session.id = opened->session_id;
        session.record_revision = opened->record_revision;
        session.last_keepalive = clock_->Now();
        FinishOpen(reactor, session, open, lease, false);
      });
  return true;
}

SessionReactor* RegistryCore::TakeOpening(uint64_t serial) {
  auto it = opening_.find(serial);
  if (it == opening_.end()) {
    return nullptr;
  }
  SessionReactor* reactor = it->second;
  opening_.erase(it);
  return reactor->finishing ? nullptr : reactor;
}

void RegistryCore::ClusterPublish(Session& session, const v1::Publish& publish) {
  const v1::Instance& instance = publish.instance();
  if (absl::Status st = ValidateInstance(instance, options_.limits); !st.ok()) {
    ReplyResult(session.reactor, publish.request_id(), st);
    return;
  }
  session.publications.insert({instance.service(), instance.address()});
  uint64_t id = session.id;
  uint64_t request_id = publish.request_id();
  uint64_t incarnation = session.record_revision;
  cluster_->Publish(id, incarnation, instance,
                    [this, id, incarnation, request_id](absl::Status status) {
                      absl::MutexLock lock(&mu_);
                      ClusterResult(id, incarnation, request_id, status);
                    });
}

void RegistryCore::ClusterUnpublish(Session& session, const v1::Unpublish& request) {
  if (session.publications.erase({request.service(), request.address()}) == 0) {
    ReplyResult(
        session.reactor, request.request_id(),
        absl::NotFoundError(absl::StrCat("instance ", request.address(), " of service '",
                                         request.service(), "' is not published by this session")));
    return;
  }
  uint64_t id = session.id;
  uint64_t request_id = request.request_id();
  uint64_t incarnation = session.record_revision;
  cluster_->Unpublish(id, incarnation, request.service(), request.address(),
                      [this, id, incarnation, request_id](absl::Status status) {
                        absl::MutexLock lock(&mu_);
                        ClusterResult(id, incarnation, request_id, status);
                      });
}

void RegistryCore::ClusterResult(uint64_t session_id, uint64_t incarnation, uint64_t request_id,
                                 const absl::Status& status) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.record_revision != incarnation) {
    return;  // gone, or resumed since: the client replayed what it needs
  }
  Session& session = it->second;
  if (absl::IsFailedPrecondition(status)) {
    // Resumed by another node meanwhile: this copy is stale.
    if (session.reactor != nullptr) {
      RequestFinish(session.reactor, absl::AbortedError(status.message()));
    }
    RemoveSession(session_id, "it was resumed on another node", false);
    return;
  }
  if (absl::IsNotFound(status)) {
    // etcd no longer has the lease: the session is over everywhere.
    if (session.reactor != nullptr) {
      RequestFinish(session.reactor,
                    absl::NotFoundError(absl::StrCat(
                        "session ", session_id, " lapsed in the cluster; open a new session")));
    }
    RemoveSession(session_id, "its etcd lease is gone", false);
    return;
  }
  if (!status.ok()) {
    // This node cannot reach etcd: send the client to another node, where
    // it resumes the same session.
    if (session.reactor != nullptr) {
      SessionReactor* reactor = session.reactor;
      session.reactor = nullptr;
      RequestFinish(reactor, absl::UnavailableError(absl::StrCat(
                                 "this registry node cannot reach etcd: ", status.message())));
    }
    return;
  }
  if (session.reactor != nullptr) {
    ReplyResult(session.reactor, request_id, status);
    Pump(session);
  }
}

absl::Status RegistryCore::HandlePublish(Session& session, const v1::Instance& instance) {
  if (absl::Status st = ValidateInstance(instance, options_.limits); !st.ok()) {
    return st;
  }
  ServiceState& state = EnsureService(instance.service());
  auto it = state.instances.find(instance.address());
  if (it != state.instances.end()) {
    if (it->second.owner == session.id && SameInstance(it->second.instance, instance)) {
      return absl::OkStatus();  // a replay after reconnect: nothing changed
    }
    if (it->second.owner != session.id) {
      // A restarted provider took its address back before the old lease lapsed.
      auto old = sessions_.find(it->second.owner);
      if (old != sessions_.end()) {
        old->second.publications.erase({instance.service(), instance.address()});
      }
    }
  }
  state.instances[instance.address()] = InstanceRecord{instance, session.id};
  session.publications.insert({instance.service(), instance.address()});
  MarkDirty(instance.service());
  return absl::OkStatus();
}

absl::Status RegistryCore::HandleUnpublish(Session& session, const v1::Unpublish& request) {
  auto not_found =
      absl::NotFoundError(absl::StrCat("instance ", request.address(), " of service '",
                                       request.service(), "' is not published by this session"));
  if (session.publications.erase({request.service(), request.address()}) == 0) {
    return not_found;
  }
  auto s = services_.find(request.service());
  if (s == services_.end()) {
    return not_found;
  }
  auto it = s->second.instances.find(request.address());
  if (it != s->second.instances.end() && it->second.owner == session.id) {
    s->second.instances.erase(it);
    MarkDirty(request.service());
  }
  return absl::OkStatus();
}

absl::Status RegistryCore::HandleSubscribe(Session& session, const std::string& service,
                                           uint64_t known) {
  if (absl::Status st = ValidateServiceName(service, options_.limits); !st.ok()) {
    return st;
  }
  Subscription& sub = session.services[service];
  sub.acked = std::max(sub.acked, known);
  ServiceState& state = EnsureService(service);
  state.subscribers.insert(session.id);
  if (!Held() && state.loaded && Stale(state.version, sub.acked)) {
    EnqueueService(session, service);
  }
  return absl::OkStatus();
}

absl::Status RegistryCore::HandleWatch(Session& session, const std::string& key, uint64_t known) {
  if (absl::Status st = ValidateConfigKey(key, options_.limits); !st.ok()) {
    return st;
  }
  absl::StatusOr<WatchedConfig*> watched = EnsureConfig(key);
  if (!watched.ok()) {
    return watched.status();
  }
  Subscription& sub = session.configs[key];
  sub.acked = std::max(sub.acked, known);
  (*watched)->watchers.insert(session.id);
  if (!Held() && (*watched)->loaded && Stale((*watched)->version, sub.acked)) {
    EnqueueConfig(session, key);
  }
  return absl::OkStatus();
}

void RegistryCore::StreamEnded(SessionReactor* reactor) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(reactor->session_id);
  if (it != sessions_.end() && it->second.reactor == reactor) {
    // Not a clean close: keep the session for its lease so the client can
    // resume it without its providers flapping.
    it->second.reactor = nullptr;
    SPDLOG_DEBUG("session {} detached; lease keeps running", it->first);
  }
  RequestFinish(reactor, absl::OkStatus());
}

void RegistryCore::WriteDone(SessionReactor* reactor, bool ok) {
  absl::MutexLock lock(&mu_);
  reactor->in_flight.reset();
  if (!ok && !reactor->finishing) {
    reactor->finishing = true;
    reactor->finish_status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
  }
  if (reactor->finishing) {
    if (!reactor->finished) {
      reactor->finished = true;
      reactor->Finish(reactor->finish_status);
    }
    auto it = sessions_.find(reactor->session_id);
    if (it != sessions_.end() && it->second.reactor == reactor) {
      it->second.reactor = nullptr;
    }
    return;
  }
  auto it = sessions_.find(reactor->session_id);
  if (it != sessions_.end() && it->second.reactor == reactor) {
    Pump(it->second);
  } else if (!reactor->control.empty()) {
    // Replies for a stream whose session went away (e.g. a failed open).
    reactor->in_flight = reactor->control.front();
    reactor->control.pop_front();
    reactor->StartWrite(reactor->in_flight.get());
  }
}

void RegistryCore::StreamStarted(SessionReactor* reactor) {
  absl::MutexLock lock(&mu_);
  streams_.insert(reactor);
  if (!closed_why_.empty()) {
    RequestFinish(reactor, absl::UnavailableError(closed_why_));
  }
}

void RegistryCore::ReactorDone(SessionReactor* reactor) {
  absl::MutexLock lock(&mu_);
  streams_.erase(reactor);
  opening_.erase(reactor->serial);
  auto it = sessions_.find(reactor->session_id);
  if (it != sessions_.end() && it->second.reactor == reactor) {
    it->second.reactor = nullptr;
  }
}

void RegistryCore::Reply(SessionReactor* reactor, Msg message) {
  constexpr size_t kMaxUnreadReplies = 1024;
  if (reactor->control.size() >= kMaxUnreadReplies) {
    // A client that sends without reading would grow this without bound.
    RequestFinish(reactor, absl::ResourceExhaustedError(absl::StrCat(
                               "more than ", kMaxUnreadReplies,
                               " replies unread on this session stream; read your stream")));
    return;
  }
  reactor->control.push_back(std::move(message));
}

void RegistryCore::ReplyResult(SessionReactor* reactor, uint64_t request_id,
                               const absl::Status& status) {
  auto reply = std::make_shared<v1::ServerMessage>();
  v1::Result* result = reply->mutable_result();
  result->set_request_id(request_id);
  result->set_code(static_cast<int>(status.code()));
  result->set_message(std::string(status.message()));
  Reply(reactor, std::move(reply));
}

void RegistryCore::RequestFinish(SessionReactor* reactor, const absl::Status& status) {
  if (reactor->finishing) {
    return;
  }
  reactor->finishing = true;
  reactor->finish_status = ToGrpcStatus(status);
  if (absl::IsInvalidArgument(status) || absl::IsResourceExhausted(status)) {
    SPDLOG_WARN("session stream from {} refused: {}", reactor->peer, status.ToString());
  }
  if (reactor->in_flight == nullptr) {
    reactor->finished = true;
    reactor->Finish(reactor->finish_status);
  }
}

void RegistryCore::Pump(Session& session) {
  SessionReactor* reactor = session.reactor;
  if (reactor == nullptr || reactor->in_flight != nullptr || reactor->finishing) {
    return;
  }
  if (!reactor->control.empty()) {
    reactor->in_flight = reactor->control.front();
    reactor->control.pop_front();
  } else if (!session.pending.empty() && !Held()) {
    auto first = session.pending.begin();
    reactor->in_flight = first->second;
    const v1::ServerMessage& m = *first->second;
    absl::Time now = clock_->Now();
    if (m.has_service()) {
      auto sub = session.services.find(m.service().service());
      if (sub != session.services.end()) {
        sub->second.sent = m.service().version();
        sub->second.sent_at = now;
      }
    } else if (m.has_config()) {
      auto sub = session.configs.find(m.config().key());
      if (sub != session.configs.end()) {
        sub->second.sent = m.config().version();
        sub->second.sent_at = now;
      }
    }
    session.pending.erase(first);
  } else {
    return;
  }
  reactor->StartWrite(reactor->in_flight.get());
}

void RegistryCore::EnqueueService(Session& session, const std::string& service) {
  if (dirty_.erase(service) > 0) {
    // A change is waiting for the merge window: publish it now rather than
    // show this subscriber new content under the old version (and everyone
    // the same content again under a new one).
    FlushService(service);
    if (services_.count(service) > 0 && services_[service].subscribers.count(session.id) > 0) {
      return;  // FlushService queued it for this session too
    }
  }
  auto s = services_.find(service);
  if (s == services_.end() || !s->second.loaded) {
    return;
  }
  session.pending[ServiceTopic(service)] = CurrentSnapshot(service, s->second);
}

void RegistryCore::FlushService(const std::string& name) {
  auto it = services_.find(name);
  if (it == services_.end()) {
    return;
  }
  if (cluster_ == nullptr) {
    NewVersion(it->second);  // cluster versions are the etcd revisions of the changes
  }
  for (uint64_t id : it->second.subscribers) {
    auto s = sessions_.find(id);
    if (s != sessions_.end()) {
      EnqueueService(s->second, name);
    }
  }
  MaybeForgetService(name);
}

void RegistryCore::EnqueueConfig(Session& session, const std::string& key) {
  auto c = configs_.find(key);
  if (c == configs_.end() || !c->second.loaded) {
    return;
  }
  session.pending[ConfigTopic(key)] = c->second.message;
}

// ---------------------------------------------------------------------------
// Services, versions and pushes

RegistryCore::ServiceState& RegistryCore::EnsureService(const std::string& name) {
  auto [it, inserted] = services_.try_emplace(name);
  if (inserted) {
    if (cluster_ != nullptr) {
      it->second.loaded = false;
      cluster_->WatchService(name);
    } else {
      NewVersion(it->second);
    }
  }
  return it->second;
}

const Msg& RegistryCore::CurrentSnapshot(const std::string& name, ServiceState& state) {
  if (state.snapshot != nullptr) {
    return state.snapshot;
  }
  auto message = std::make_shared<v1::ServerMessage>();
  v1::ServiceSnapshot* snapshot = message->mutable_service();
  snapshot->set_service(name);
  snapshot->set_version(state.version);
  for (const auto& [address, record] : state.instances) {
    *snapshot->add_instances() = record.instance;
  }
  state.snapshot = std::move(message);
  return state.snapshot;
}

void RegistryCore::MaybeForgetService(const std::string& name) {
  auto it = services_.find(name);
  if (it == services_.end() || !it->second.subscribers.empty() || dirty_.count(name) > 0) {
    return;
  }
  if (cluster_ != nullptr) {
    // Instances here only mirror etcd for local subscribers.
    cluster_->UnwatchService(name);
    services_.erase(it);
  } else if (it->second.instances.empty()) {
    services_.erase(it);
  }
}

void RegistryCore::ForgetConfigIfUnwatched(const std::string& key) {
  auto it = configs_.find(key);
  if (it != configs_.end() && it->second.watchers.empty()) {
    configs_.erase(it);
    if (cluster_ != nullptr) {
      cluster_->UnwatchConfig(key);
    }
  }
}

absl::StatusOr<RegistryCore::WatchedConfig*> RegistryCore::EnsureConfig(const std::string& key) {
  auto it = configs_.find(key);
  if (it != configs_.end()) {
    return &it->second;
  }
  if (cluster_ != nullptr) {
    WatchedConfig& watched = configs_[key];
    watched.loaded = false;  // etcd's value arrives through OnConfigUpdate
    cluster_->WatchConfig(key);
    return &watched;
  }
  absl::StatusOr<StoredConfig> stored = store_->GetConfig(key);
  if (!stored.ok()) {
    return stored.status();
  }
  stored->key = key;
  WatchedConfig& watched = configs_[key];
  watched.version = stored->version;
  watched.message = ConfigMessage(*stored);
  return &watched;
}

void RegistryCore::ConfigChanged(const StoredConfig& entry) {
  absl::MutexLock lock(&mu_);
  ApplyConfig(entry);
}

void RegistryCore::ApplyConfig(const StoredConfig& entry) {
  auto it = configs_.find(entry.key);
  if (it == configs_.end() || !it->second.loaded || entry.version <= it->second.version) {
    return;  // nobody watches it, its first read is due, or a newer change already won
  }
  it->second.version = entry.version;
  it->second.message = ConfigMessage(entry);
  dirty_configs_.insert(entry.key);
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    flush_at_ = clock_->Now();
  }
}

void RegistryCore::MarkDirty(const std::string& service) {
  dirty_.insert(service);
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    flush_at_ = std::max(clock_->Now(), last_flush_ + options_.merge_window);
  }
}

void RegistryCore::Flush() {
  flush_scheduled_ = false;
  last_flush_ = clock_->Now();
  std::set<std::string> dirty;
  dirty.swap(dirty_);
  for (const std::string& name : dirty) {
    FlushService(name);
  }
  std::set<std::string> dirty_configs;
  dirty_configs.swap(dirty_configs_);
  for (const std::string& key : dirty_configs) {
    auto it = configs_.find(key);
    if (it == configs_.end()) {
      continue;
    }
    for (uint64_t id : it->second.watchers) {
      auto s = sessions_.find(id);
      if (s != sessions_.end()) {
        EnqueueConfig(s->second, key);
      }
    }
  }
  for (auto& [id, session] : sessions_) {
    Pump(session);
  }
}

// After warm-up or stop-push: push what changed meanwhile (newest only) and
// bring every subscriber to the current version.
void RegistryCore::Release() {
  Flush();
  for (auto& [id, session] : sessions_) {
    for (auto& [name, sub] : session.services) {
      auto s = services_.find(name);
      if (s != services_.end() && Stale(s->second.version, sub.acked)) {
        EnqueueService(session, name);
      }
    }
    for (auto& [key, sub] : session.configs) {
      auto c = configs_.find(key);
      if (c != configs_.end() && Stale(c->second.version, sub.acked)) {
        EnqueueConfig(session, key);
      }
    }
    Pump(session);
  }
}

void RegistryCore::RemoveSession(uint64_t id, absl::string_view why, bool revoke) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return;
  }
  Session& session = it->second;
  if (cluster_ != nullptr) {
    // etcd removes the publications with the lease; the watches bring it here.
    if (revoke) {
      cluster_->CloseSession(id);
    }
    SPDLOG_INFO("session {} of '{}' left this node: {}{}", id, session.client_name,
                std::string(why), revoke ? "; its lease is revoked" : "");
  } else {
    SPDLOG_INFO("session {} of '{}' ended: {}; {} publication(s) removed", id, session.client_name,
                std::string(why), session.publications.size());
  }
  for (const auto& [service, address] : session.publications) {
    if (cluster_ != nullptr) {
      break;
    }
    auto s = services_.find(service);
    if (s == services_.end()) {
      continue;
    }
    auto inst = s->second.instances.find(address);
    if (inst != s->second.instances.end() && inst->second.owner == id) {
      s->second.instances.erase(inst);
      MarkDirty(service);
    }
  }
  for (const auto& [service, sub] : session.services) {
    auto s = services_.find(service);
    if (s != services_.end()) {
      s->second.subscribers.erase(id);
      MaybeForgetService(service);
    }
  }
  for (const auto& [key, sub] : session.configs) {
    auto c = configs_.find(key);
    if (c != configs_.end()) {
      c->second.watchers.erase(id);
      ForgetConfigIfUnwatched(key);
    }
  }
  sessions_.erase(it);
}

void RegistryCore::Sweep() {
  absl::Time now = clock_->Now();
  if (cluster_ != nullptr) {
    // A node cut off from etcd cannot renew its clients' leases: send the
    // clients to other nodes before the leases lapse. They resume there.
    bool reachable = cluster_->Reachable();
    if (!reachable && etcd_reachable_) {
      SPDLOG_WARN(
          "etcd does not answer this node; ending every session stream so clients "
          "resume on other nodes");
      for (auto& [id, session] : sessions_) {
        if (session.reactor != nullptr) {
          SessionReactor* reactor = session.reactor;
          session.reactor = nullptr;
          RequestFinish(reactor, absl::UnavailableError(
                                     "this registry node lost etcd; resume on another node"));
        }
      }
    } else if (reachable && !etcd_reachable_) {
      SPDLOG_INFO("etcd answers this node again");
    }
    etcd_reachable_ = reachable;
  }
  if (warming_up_ && now >= warmup_end_) {
    warming_up_ = false;
    SPDLOG_INFO("warm-up over: pushes enabled");
    if (!stop_push_) {
      Release();
    }
  }
  std::vector<uint64_t> expired;
  for (auto& [id, session] : sessions_) {
    if (now - session.last_seen > session.lease) {
      expired.push_back(id);
    }
  }
  for (uint64_t id : expired) {
    Session& session = sessions_[id];
    if (session.reactor != nullptr) {
      RequestFinish(session.reactor,
                    absl::UnavailableError(absl::StrCat("session ", id, ": lease of ",
                                                        absl::FormatDuration(session.lease),
                                                        " lapsed without a heartbeat")));
    }
    // In cluster mode the client may have resumed on another node: etcd
    // ends the lease if nobody renews it.
    RemoveSession(id, "lease lapsed", false);
  }
  if (Held()) {
    return;
  }
  for (auto& [id, session] : sessions_) {
    if (session.reactor == nullptr) {
      continue;
    }
    bool queued = false;
    for (auto& [name, sub] : session.services) {
      auto s = services_.find(name);
      if (sub.sent > sub.acked && now - sub.sent_at >= options_.push_retry &&
          s != services_.end() && Stale(s->second.version, sub.acked) &&
          session.pending.count(ServiceTopic(name)) == 0) {
        EnqueueService(session, name);
        queued = true;
      }
    }
    for (auto& [key, sub] : session.configs) {
      auto c = configs_.find(key);
      if (sub.sent > sub.acked && now - sub.sent_at >= options_.push_retry && c != configs_.end() &&
          Stale(c->second.version, sub.acked) && session.pending.count(ConfigTopic(key)) == 0) {
        EnqueueConfig(session, key);
        queued = true;
      }
    }
    if (queued) {
      Pump(session);
    }
  }
  if (flush_scheduled_ && now >= flush_at_) {
    Flush();
  }
}

void RegistryCore::MaintenanceLoop() {
  absl::Time next_sweep = absl::Now();
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    absl::Time wake = next_sweep;
    if (flush_scheduled_ && !Held()) {
      // flush_at_ is on the injected clock; convert the remaining wait.
      wake = std::min(wake, absl::Now() + (flush_at_ - clock_->Now()));
    }
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || (flush_scheduled_ && !Held() && clock_->Now() >= flush_at_);
    };
    mu_.AwaitWithDeadline(absl::Condition(&ready), wake);
    if (stopping_) {
      break;
    }
    absl::Time real_now = absl::Now();
    if (real_now >= next_sweep) {
      Sweep();
      next_sweep = real_now + options_.sweep_interval;
    } else if (flush_scheduled_ && !Held() && clock_->Now() >= flush_at_) {
      Flush();
    }
  }
}

// ---------------------------------------------------------------------------
// Cluster mode: etcd's changes

void RegistryCore::OnServiceUpdate(const std::string& service, uint64_t revision, bool reset,
                                   std::vector<InstanceChange> changes) {
  absl::MutexLock lock(&mu_);
  auto it = services_.find(service);
  if (it == services_.end() || revision < it->second.seen) {
    return;  // nobody here subscribes any more, or an older read
  }
  ServiceState& state = it->second;
  if (!reset && !state.loaded) {
    return;  // a late event of an earlier watch; the fresh read is on its way
  }
  bool first = !state.loaded;
  bool changed = first;
  if (reset) {
    std::map<std::string, InstanceRecord> fresh;
    for (InstanceChange& change : changes) {
      fresh[change.address] = InstanceRecord{*change.instance, change.owner};
    }
    if (!changed) {
      changed = fresh.size() != state.instances.size();
      for (auto a = fresh.begin(), b = state.instances.begin(); !changed && a != fresh.end();
           ++a, ++b) {
        changed = a->first != b->first || !SameInstance(a->second.instance, b->second.instance);
      }
    }
    state.instances = std::move(fresh);
  } else {
    for (InstanceChange& change : changes) {
      auto inst = state.instances.find(change.address);
      if (change.instance == nullptr) {
        if (inst != state.instances.end()) {
          state.instances.erase(inst);
          changed = true;
        }
      } else if (inst == state.instances.end()) {
        state.instances[change.address] = InstanceRecord{*change.instance, change.owner};
        changed = true;
      } else {
        // A replay on reconnect or a move to another session writes the
        // same instance again: no new version for the subscribers.
        if (!SameInstance(inst->second.instance, *change.instance)) {
          inst->second.instance = *change.instance;
          changed = true;
        }
        inst->second.owner = change.owner;
      }
    }
  }
  state.loaded = true;
  state.seen = revision;
  if (!changed) {
    return;
  }
  state.version = revision;
  state.snapshot.reset();
  if (!first) {
    MarkDirty(service);
    return;
  }
  if (Held()) {
    return;
  }
  for (uint64_t id : state.subscribers) {
    auto s = sessions_.find(id);
    if (s == sessions_.end()) {
      continue;
    }
    auto sub = s->second.services.find(service);
    if (sub != s->second.services.end() && Stale(state.version, sub->second.acked)) {
      EnqueueService(s->second, service);
      Pump(s->second);
    }
  }
}

void RegistryCore::OnConfigUpdate(const StoredConfig& entry) {
  absl::MutexLock lock(&mu_);
  auto it = configs_.find(entry.key);
  if (it == configs_.end()) {
    return;
  }
  if (it->second.loaded) {
    ApplyConfig(entry);
    return;
  }
  WatchedConfig& watched = it->second;
  watched.loaded = true;
  watched.version = entry.version;
  watched.message = ConfigMessage(entry);
  if (Held()) {
    return;
  }
  for (uint64_t id : watched.watchers) {
    auto s = sessions_.find(id);
    if (s == sessions_.end()) {
      continue;
    }
    auto sub = s->second.configs.find(entry.key);
    if (sub != s->second.configs.end() && Stale(watched.version, sub->second.acked)) {
      EnqueueConfig(s->second, entry.key);
      Pump(s->second);
    }
  }
}

void RegistryCore::OnLeaseLost(uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return;
  }
  if (it->second.reactor != nullptr) {
    RequestFinish(it->second.reactor,
                  absl::NotFoundError(absl::StrCat("session ", session_id,
                                                   " lapsed in the cluster; open a new session")));
  }
  RemoveSession(session_id, "its etcd lease lapsed", false);
}

absl::Status RegistryCore::Describe(v1::ClusterInfo* out) {
  if (cluster_ != nullptr) {
    return cluster_->Describe(out);
  }
  out->set_mode("embedded");
  v1::ClusterNode* node = out->add_nodes();
  node->set_id(options_.registry_id);
  node->set_address(options_.listen);
  node->set_self(true);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Unary views and operator controls

absl::Status RegistryCore::ListServices(v1::ListServicesResponse* out) {
  if (cluster_ != nullptr) {
    // The cluster's services from etcd; subscribers are this node's.
    if (absl::Status st = cluster_->ListServices(out); !st.ok()) {
      return st;
    }
    absl::MutexLock lock(&mu_);
    for (v1::ServiceSummary& summary : *out->mutable_services()) {
      auto it = services_.find(summary.service());
      if (it != services_.end()) {
        summary.set_subscribers(static_cast<uint32_t>(it->second.subscribers.size()));
      }
    }
    return absl::OkStatus();
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [name, state] : services_) {
    v1::ServiceSummary* s = out->add_services();
    s->set_service(name);
    s->set_version(state.version);
    s->set_instances(static_cast<uint32_t>(state.instances.size()));
    s->set_subscribers(static_cast<uint32_t>(state.subscribers.size()));
  }
  return absl::OkStatus();
}

absl::Status RegistryCore::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  if (absl::Status st = ValidateServiceName(service, options_.limits); !st.ok()) {
    return st;
  }
  if (cluster_ != nullptr) {
    {
      absl::MutexLock lock(&mu_);
      auto it = services_.find(service);
      if (it != services_.end() && it->second.loaded) {
        out->set_service(service);
        out->set_version(it->second.version);
        for (const auto& [address, record] : it->second.instances) {
          *out->add_instances() = record.instance;
        }
        return absl::OkStatus();
      }
    }
    return cluster_->GetService(service, out);
  }
  absl::MutexLock lock(&mu_);
  auto it = services_.find(service);
  if (it == services_.end()) {
    return absl::NotFoundError(
        absl::StrCat("service '", service, "' is not known to the registry"));
  }
  out->set_service(service);
  out->set_version(it->second.version);
  for (const auto& [address, record] : it->second.instances) {
    *out->add_instances() = record.instance;
  }
  return absl::OkStatus();
}

v1::PushSwitchState RegistryCore::SetStopPush(std::optional<bool> stop) {
  absl::MutexLock lock(&mu_);
  if (stop.has_value() && *stop != stop_push_) {
    stop_push_ = *stop;
    SPDLOG_WARN("stop-push switch turned {}", stop_push_ ? "on: pushes are held" : "off");
    if (!Held()) {
      Release();
    }
  }
  v1::PushSwitchState state;
  state.set_stop_push(stop_push_);
  state.set_warming_up(warming_up_);
  return state;
}

void RegistryCore::ListSessions(v1::ListSessionsResponse* out) {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, session] : sessions_) {
    v1::SessionInfo* info = out->add_sessions();
    info->set_session_id(id);
    info->set_client_name(session.client_name);
    info->set_peer(session.peer);
    info->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(session.lease)));
    info->set_attached(session.reactor != nullptr);
    info->set_publications(static_cast<uint32_t>(session.publications.size()));
    info->set_subscriptions(
        static_cast<uint32_t>(session.services.size() + session.configs.size()));
  }
}

absl::Status RegistryCore::KillSession(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() && cluster_ != nullptr) {
    // Held by another node, or detached: revoking the lease ends it there.
    cluster_->CloseSession(id);
    return absl::OkStatus();
  }
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
  }
  if (it->second.reactor != nullptr) {
    RequestFinish(it->second.reactor,
                  absl::UnavailableError(absl::StrCat("session ", id, " ended by an operator")));
  }
  RemoveSession(id, "ended by an operator");
  return absl::OkStatus();
}

void RegistryCore::CloseAllStreams(absl::string_view why) {
  absl::MutexLock lock(&mu_);
  closed_why_ = std::string(why);
  for (auto& [id, session] : sessions_) {
    session.reactor = nullptr;
  }
  for (SessionReactor* reactor : streams_) {
    RequestFinish(reactor, absl::UnavailableError(why));
  }
}

// ---------------------------------------------------------------------------
// gRPC service

namespace {

// Runs jobs that may block (durable store writes, each an fsync; reads of
// etcd) off gRPC's callback threads, which must not block: `threads` jobs
// at a time, taken in order.
class Worker {
 public:
  explicit Worker(int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this] { Loop(); });
    }
  }
  ~Worker() { Stop(); }

  void Run(std::function<void()> job) {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(job));
  }

  // Finishes the queued jobs, then stops. Idempotent.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& thread : threads_) {
      if (thread.joinable()) {
        thread.join();
      }
    }
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> job;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (jobs_.empty()) {
          return;
        }
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

class RegistryService final : public v1::Registry::CallbackService {
 public:
  explicit RegistryService(RegistryCore* core) : core_(core) {}

  // Lets queued store writes and views finish; call once the server has
  // stopped.
  void StopWorker() {
    writer_.Stop();
    views_.Stop();
  }

  grpc::ServerBidiReactor<v1::ClientMessage, v1::ServerMessage>* Session(
      grpc::CallbackServerContext* context) override {
    return new SessionReactor(core_, context->peer());
  }

  grpc::ServerUnaryReactor* ListServices(grpc::CallbackServerContext* context,
                                         const v1::ListServicesRequest*,
                                         v1::ListServicesResponse* response) override {
    return View(context, [this, response] { return core_->ListServices(response); });
  }

  grpc::ServerUnaryReactor* GetCluster(grpc::CallbackServerContext* context,
                                       const v1::GetClusterRequest*,
                                       v1::ClusterInfo* response) override {
    return View(context, [this, response] { return core_->Describe(response); });
  }

  grpc::ServerUnaryReactor* GetService(grpc::CallbackServerContext* context,
                                       const v1::GetServiceRequest* request,
                                       v1::ServiceSnapshot* response) override {
    return View(context, [this, request, response] {
      return core_->GetService(request->service(), response);
    });
  }

  grpc::ServerUnaryReactor* GetConfig(grpc::CallbackServerContext* context,
                                      const v1::GetConfigRequest* request,
                                      v1::ConfigEntry* response) override {
    if (absl::Status st = ValidateConfigKey(request->key(), core_->options().limits); !st.ok()) {
      return Done(context, st);
    }
    return View(context, [this, request, response] {
      absl::StatusOr<StoredConfig> entry = core_->store()->GetConfig(request->key());
      if (!entry.ok()) {
        return entry.status();
      }
      if (!entry->exists) {
        return absl::NotFoundError(
            absl::StrCat("config key '", request->key(), "' does not exist"));
      }
      Fill(*entry, response);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListConfig(grpc::CallbackServerContext* context,
                                       const v1::ListConfigRequest* request,
                                       v1::ListConfigResponse* response) override {
    return View(context, [this, request, response] {
      absl::StatusOr<std::vector<StoredConfig>> entries =
          core_->store()->ListConfig(request->prefix());
      if (!entries.ok()) {
        return entries.status();
      }
      for (const StoredConfig& e : *entries) {
        Fill(e, response->add_entries());
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* PutConfig(grpc::CallbackServerContext* context,
                                      const v1::PutConfigRequest* request,
                                      v1::PutConfigResponse* response) override {
    const Limits& limits = core_->options().limits;
    if (absl::Status st = ValidateConfigKey(request->key(), limits); !st.ok()) {
      return Done(context, st);
    }
    if (static_cast<int64_t>(request->value().size()) > limits.max_config_value_bytes) {
      return Done(context, absl::InvalidArgumentError(absl::StrCat(
                               "config value is ", request->value().size(), " bytes; the limit is ",
                               limits.max_config_value_bytes)));
    }
    std::optional<uint64_t> expected;
    if (request->has_expected_version()) {
      expected = request->expected_version();
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    writer_.Run([this, reactor, request, response, expected] {
      absl::StatusOr<StoredConfig> entry =
          core_->store()->PutConfig(request->key(), request->value(), expected);
      if (entry.ok()) {
        core_->ConfigChanged(*entry);
        Fill(*entry, response->mutable_entry());
      }
      reactor->Finish(ToGrpcStatus(entry.status()));
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* DeleteConfig(grpc::CallbackServerContext* context,
                                         const v1::DeleteConfigRequest* request,
                                         v1::DeleteConfigResponse* response) override {
    if (absl::Status st = ValidateConfigKey(request->key(), core_->options().limits); !st.ok()) {
      return Done(context, st);
    }
    std::optional<uint64_t> expected;
    if (request->has_expected_version()) {
      expected = request->expected_version();
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    writer_.Run([this, reactor, request, response, expected] {
      absl::StatusOr<StoredConfig> entry = core_->store()->DeleteConfig(request->key(), expected);
      if (entry.ok()) {
        core_->ConfigChanged(*entry);
        Fill(*entry, response->mutable_entry());
      }
      reactor->Finish(ToGrpcStatus(entry.status()));
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* SetPushSwitch(grpc::CallbackServerContext* context,
                                          const v1::SetPushSwitchRequest* request,
                                          v1::PushSwitchState* response) override {
    *response = core_->SetStopPush(request->stop_push());
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* GetPushSwitch(grpc::CallbackServerContext* context,
                                          const v1::GetPushSwitchRequest*,
                                          v1::PushSwitchState* response) override {
    *response = core_->SetStopPush(std::nullopt);
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest*,
                                         v1::ListSessionsResponse* response) override {
    core_->ListSessions(response);
    return Done(context, absl::OkStatus());
  }

  grpc::ServerUnaryReactor* KillSession(grpc::CallbackServerContext* context,
                                        const v1::KillSessionRequest* request,
                                        v1::KillSessionResponse*) override {
    return Done(context, core_->KillSession(request->session_id()));
  }

 private:
  // An operator view. Embedded, it reads memory and the local store and
  // answers at once. In cluster mode it may read etcd, for up to
  // storage.etcd.request_timeout: it runs on the view threads, never on a
  // callback thread, and fails at once while this node cannot reach etcd
  // (checked again when it leaves the queue).
  grpc::ServerUnaryReactor* View(grpc::CallbackServerContext* context,
                                 std::function<absl::Status()> view) {
    if (!core_->clustered()) {
      return Done(context, view());
    }
    if (absl::Status st = core_->EtcdReachable(); !st.ok()) {
      return Done(context, st);
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    views_.Run([this, reactor, view = std::move(view)] {
      absl::Status st = core_->EtcdReachable();  // it may have gone while this view queued
      if (st.ok()) {
        st = view();
      }
      if (absl::IsDeadlineExceeded(st)) {
        // etcd did not answer in time: as unavailable as a refused call.
        st = absl::UnavailableError(st.message());
      }
      reactor->Finish(ToGrpcStatus(st));
    });
    return reactor;
  }

  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context,
                                        const absl::Status& status) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }

  static void Fill(const StoredConfig& e, v1::ConfigEntry* out) {
    out->set_key(e.key);
    out->set_value(e.value);
    out->set_version(e.version);
    out->set_exists(e.exists);
  }

  // Views wait for etcd at most request_timeout each; a few run at once.
  static constexpr int kViewThreads = 4;

  RegistryCore* const core_;
  Worker writer_{1};
  Worker views_{kViewThreads};
};

}  // namespace

class RegistryServer::Impl {
 public:
  std::unique_ptr<RegistryCore> core;
  std::unique_ptr<ClusterLink> cluster;  // cluster mode only
  std::unique_ptr<RegistryService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<RegistryServer>> RegistryServer::Start(
    RegistryServerOptions options) {
  if (options.registry_id.empty()) {
    options.registry_id = options.listen;
  }
  const bool cluster = options.engine == "etcd";
  auto impl = std::make_unique<Impl>();
  uint64_t epoch = 0;
  if (cluster) {
    if (options.warmup < absl::ZeroDuration()) {
      options.warmup = absl::ZeroDuration();  // etcd kept the publications
    }
    impl->core = std::make_unique<RegistryCore>(options, nullptr, 0);
    ClusterOptions cluster_options = options.cluster;
    cluster_options.node_id = options.registry_id;
    if (cluster_options.node_address.empty()) {
      cluster_options.node_address = options.listen;
    }
    absl::StatusOr<std::unique_ptr<ClusterLink>> link =
        ClusterLink::Start(cluster_options, impl->core.get());
    if (!link.ok()) {
      impl->core->StopMaintenance();
      return link.status();
    }
    impl->cluster = std::move(*link);
    impl->core->AttachCluster(impl->cluster.get(), impl->cluster->NewConfigStore());
  } else {
    absl::StatusOr<std::unique_ptr<RegistryStore>> store =
        OpenRocksDbRegistryStore(options.data_dir);
    if (!store.ok()) {
      return store.status();
    }
    absl::StatusOr<uint64_t> next = (*store)->NextBootEpoch();
    if (!next.ok()) {
      return next.status();
    }
    epoch = *next;
    impl->core = std::make_unique<RegistryCore>(options, std::move(*store), epoch);
  }
  impl->service = std::make_unique<RegistryService>(impl->core.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.RegisterService(impl->service.get());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second dsrd on the same port would
  // then silently share its traffic. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    if (impl->cluster != nullptr) {
      impl->cluster->Shutdown();
    }
    impl->core->StopMaintenance();
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "': the address is malformed or in use"));
  }
  impl->server->GetHealthCheckService()->SetServingStatus(v1::Registry::service_full_name(), true);
  if (cluster) {
    SPDLOG_INFO(
        "dsrd listening on {} (port {}), node '{}' of cluster '{}', data in etcd at {} "
        "under {}",
        options.listen, impl->port, options.registry_id, options.cluster.cluster_name,
        absl::StrJoin(options.cluster.endpoints, ","), options.cluster.prefix);
  } else {
    SPDLOG_INFO("dsrd listening on {} (port {}), boot epoch {}, data in {}", options.listen,
                impl->port, epoch, options.data_dir);
  }
  return std::unique_ptr<RegistryServer>(new RegistryServer(std::move(impl)));
}

RegistryServer::RegistryServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RegistryServer::~RegistryServer() { Shutdown(); }

int RegistryServer::port() const { return impl_->port; }

void RegistryServer::Shutdown() {
  if (impl_->shut_down) {
    return;
  }
  impl_->shut_down = true;
  SPDLOG_INFO("dsrd shutting down");
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  impl_->core->CloseAllStreams("the registry is shutting down");
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + impl_->core->options().shutdown_grace));
  impl_->server->Wait();
  impl_->service->StopWorker();
  if (impl_->cluster != nullptr) {
    impl_->cluster->Shutdown();  // its threads call into the core
  }
  impl_->core->StopMaintenance();
  impl_->core.reset();
  SPDLOG_INFO("dsrd stopped");
}

// ---------------------------------------------------------------------------
// Options from YAML

absl::StatusOr<RegistryServerOptions> LoadRegistryServerOptions(const Config& config) {
  RegistryServerOptions o;
  ConfigReader r(config);
  o.listen = r.String("server.listen", o.listen);
  o.registry_id = r.String("server.id", o.registry_id);
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  o.engine = r.String("storage.engine", o.engine);
  ClusterOptions& c = o.cluster;
  c.endpoints = r.StringList("storage.etcd.endpoints", c.endpoints);
  c.prefix = r.String("storage.etcd.prefix", c.prefix);
  c.request_timeout = r.Duration("storage.etcd.request_timeout", c.request_timeout,
                                 absl::Milliseconds(100), absl::Minutes(5));
  c.dial_timeout = r.Duration("storage.etcd.dial_timeout", c.dial_timeout, absl::Milliseconds(100),
                              absl::Minutes(10));
  c.cluster_name = r.String("cluster.name", c.cluster_name);
  c.node_address = r.String("cluster.advertise", c.node_address);
  c.node_lease =
      r.Duration("cluster.node_lease", c.node_lease, absl::Seconds(2), absl::Minutes(10));
  o.default_lease =
      r.Duration("session.lease", o.default_lease, absl::Milliseconds(200), absl::Hours(1));
  o.min_lease =
      r.Duration("session.min_lease", o.min_lease, absl::Milliseconds(100), absl::Hours(1));
  o.max_lease =
      r.Duration("session.max_lease", o.max_lease, absl::Milliseconds(200), absl::Hours(24));
  o.merge_window =
      r.Duration("push.merge_window", o.merge_window, absl::ZeroDuration(), absl::Seconds(10));
  o.push_retry =
      r.Duration("push.retry_interval", o.push_retry, absl::Milliseconds(10), absl::Minutes(10));
  if (r.Has("push.warmup")) {
    o.warmup = r.Duration("push.warmup", o.warmup, absl::ZeroDuration(), absl::Hours(1));
  }
  o.sweep_interval = r.Duration("session.sweep_interval", o.sweep_interval, absl::Milliseconds(5),
                                absl::Seconds(10));
  o.keepalive_time =
      r.Duration("server.keepalive_time", o.keepalive_time, absl::Seconds(1), absl::Hours(2));
  o.keepalive_timeout = r.Duration("server.keepalive_timeout", o.keepalive_timeout,
                                   absl::Milliseconds(100), absl::Minutes(10));
  o.shutdown_grace = r.Duration("server.shutdown_grace", o.shutdown_grace, absl::ZeroDuration(),
                                absl::Minutes(10));
  Limits& l = o.limits;
  l.max_name_length = static_cast<int>(r.Int("limits.max_name_length", l.max_name_length, 1, 4096));
  l.max_weight = static_cast<int>(r.Int("limits.max_weight", l.max_weight, 1, 1000000));
  l.max_tags = static_cast<int>(r.Int("limits.max_tags", l.max_tags, 0, 1024));
  l.max_metadata_bytes =
      r.Bytes("limits.max_metadata_bytes", l.max_metadata_bytes, 0, int64_t{1} << 24);
  l.max_config_value_bytes =
      r.Bytes("limits.max_config_value_bytes", l.max_config_value_bytes, 0, int64_t{64} << 20);
  if (o.listen.empty()) {
    r.Fail("server.listen", "must be host:port");
  }
  if (o.engine != "rocksdb" && o.engine != "etcd") {
    r.Fail("storage.engine", "must be 'rocksdb' (one node) or 'etcd' (cluster mode)");
  }
  if (o.engine == "rocksdb" && o.data_dir.empty()) {
    r.Fail("storage.data_dir", "must name a directory");
  }
  if (o.engine == "etcd") {
    if (c.endpoints.empty()) {
      r.Fail("storage.etcd.endpoints", "must list the etcd members (host:port) in cluster mode");
    }
    if (c.prefix.empty() || c.prefix.back() != '/') {
      r.Fail("storage.etcd.prefix", "must end with '/'");
    }
    if (c.cluster_name.empty()) {
      r.Fail("cluster.name", "must not be empty");
    }
  }
  if (o.min_lease > o.max_lease) {
    r.Fail("session.min_lease", "must not exceed session.max_lease");
  }
  if (o.default_lease < o.min_lease || o.default_lease > o.max_lease) {
    r.Fail("session.lease", "must lie between session.min_lease and session.max_lease");
  }
  if (absl::Status st = r.Finish(); !st.ok()) {
    return st;
  }
  return o;
}

}  // namespace formica::registry
