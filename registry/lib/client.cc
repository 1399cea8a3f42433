#include "formica/registry/client.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/grpc_status.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formica/internal/address.h"
#include "validation.h"

namespace formica::registry {

bool Instance::operator==(const Instance& o) const {
  return service == o.service && address == o.address && zone == o.zone && weight == o.weight &&
         tags == o.tags && metadata == o.metadata;
}

namespace {

using Stream = grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>;

v1::Instance ToProto(const Instance& in) {
  v1::Instance out;
  out.set_service(in.service);
  out.set_address(in.address);
  out.set_zone(in.zone);
  out.set_weight(in.weight);
  out.mutable_tags()->insert(in.tags.begin(), in.tags.end());
  out.mutable_metadata()->insert(in.metadata.begin(), in.metadata.end());
  return out;
}

Instance FromProto(const v1::Instance& in) {
  Instance out;
  out.service = in.service();
  out.address = in.address();
  out.zone = in.zone();
  out.weight = in.weight();
  out.tags.insert(in.tags().begin(), in.tags().end());
  out.metadata.insert(in.metadata().begin(), in.metadata().end());
  return out;
}

ServiceSnapshot FromProto(const v1::ServiceSnapshot& in) {
  ServiceSnapshot out;
  out.service = in.service();
  out.version = in.version();
  for (const auto& i : in.instances()) {
    out.instances.push_back(FromProto(i));
  }
  return out;
}

ConfigValue FromProto(const v1::ConfigEntry& in) {
  return ConfigValue{in.key(), in.value(), in.version(), in.exists()};
}

// Client-side checks: the shape of what is sent. Size limits are the
// registry's to enforce, since an operator may raise them.
Limits ShapeOnlyLimits() {
  Limits l;
  l.max_weight = std::numeric_limits<int32_t>::max();
  l.max_tags = std::numeric_limits<int>::max();
  l.max_tag_length = std::numeric_limits<int>::max();
  l.max_metadata_bytes = std::numeric_limits<int64_t>::max();
  l.max_name_length = 4096;
  l.max_config_key_length = 4096;
  return l;
}

std::string CacheFileName(absl::string_view service) {
  std::string out;
  for (char c : service) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') {
      out.push_back(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  return out + ".snapshot";
}

}  // namespace

class Client::Impl {
 public:
  explicit Impl(ClientOptions options) : options_(std::move(options)) {
    limits_ = ShapeOnlyLimits();
    session_thread_ = std::thread([this] { SessionLoop(); });
    timer_thread_ = std::thread([this] { TimerLoop(); });
    dispatch_thread_ = std::thread([this] { DispatchLoop(); });
  }

  ~Impl() { Stop(); }

  void Stop();
  absl::Status Publish(const Instance& instance);
  absl::Status Unpublish(absl::string_view service, absl::string_view address);
  absl::StatusOr<uint64_t> Subscribe(absl::string_view service, SnapshotCallback callback);
  void Unsubscribe(uint64_t id);
  std::optional<ServiceSnapshot> GetSnapshot(absl::string_view service) const;
  absl::StatusOr<ServiceSnapshot> AwaitSnapshot(absl::string_view service, absl::Duration timeout,
                                                bool allow_empty) const;
  absl::StatusOr<uint64_t> WatchConfig(absl::string_view key, ConfigCallback callback);
  void Unwatch(uint64_t id);
  template <typename Call>
  absl::Status Unary(bool is_read, Call call);
  absl::StatusOr<ConfigValue> GetConfig(absl::string_view key);
  absl::StatusOr<ConfigValue> PutConfig(absl::string_view key, absl::string_view value,
                                        std::optional<uint64_t> expected);
  absl::Status DeleteConfig(absl::string_view key, std::optional<uint64_t> expected);

  bool connected() const {
    absl::MutexLock lock(&mu_);
    return connected_;
  }
  uint64_t session_id() const {
    absl::MutexLock lock(&mu_);
    return session_id_;
  }
  std::string connected_registry() const {
    absl::MutexLock lock(&mu_);
    return connected_ ? options_.registries[address_index_ % options_.registries.size()] : "";
  }
  // Returns once callback `id` is not running, unless called from a callback.
  void AwaitCallbackDone(uint64_t id) {
    if (std::this_thread::get_id() == dispatch_thread_.get_id()) {
      return;
    }
    absl::MutexLock lock(&mu_);
    auto done = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_callback_ != id; };
    mu_.Await(absl::Condition(&done));
  }

  void DropConnection() {
    absl::MutexLock lock(&mu_);
    if (context_ != nullptr) {
      context_->TryCancel();
    }
  }

 private:
  struct Publication {
    v1::Instance instance;
    uint64_t waiting_request = 0;  // a Publish() call waits for this result
  };
  struct ServiceSub {
    std::optional<ServiceSnapshot> snapshot;  // what callbacks see
    uint64_t version = 0;                     // newest version accepted
    // The next push is the registry's current state whatever its version:
    // set for a new subscription (a cached version must not block live
    // data) and on every new session (another node or a wiped store may
    // number differently). Within a session, only newer versions apply.
    bool accept_next = true;
    std::map<uint64_t, SnapshotCallback> callbacks;
  };
  struct ConfigWatch {
    std::optional<ConfigValue> value;
    bool accept_next = true;  // as ServiceSub::accept_next
    std::map<uint64_t, ConfigCallback> callbacks;
  };
  struct PendingRequest {
    bool done = false;
    absl::Status status;
    std::optional<std::pair<std::string, std::string>> unpublish;  // (service, address)
  };
  // One queued callback run; merged per callback id to the newest.
  struct Delivery {
    std::function<void()> run;
  };

  void SessionLoop();
  enum class SessionEnd { kNeverOpened, kClosed, kRetryNow };
  SessionEnd RunSession(const std::string& address);
  void TimerLoop();
  void DispatchLoop();
  bool Send(const v1::ClientMessage& message);
  bool WriteLocked(const v1::ClientMessage& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void HandleService(const v1::ServiceSnapshot& snapshot);
  void HandleConfig(const v1::ConfigEntry& entry);
  void CompleteRequest(uint64_t id, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WaitForRequest(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QueueDelivery(uint64_t callback_id, std::function<void()> run)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteCache(const v1::ServiceSnapshot& snapshot);
  std::optional<ServiceSnapshot> ReadCache(absl::string_view service);
  std::unique_ptr<v1::Registry::Stub> StubFor(const std::string& address);

  const ClientOptions options_;
  Limits limits_;

  // Serializes writes on the stream; taken before mu_ when both are needed.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  Stream* stream_ ABSL_GUARDED_BY(write_mu_) = nullptr;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t session_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::string session_address_ ABSL_GUARDED_BY(mu_);  // where session_id_ lives
  // The cluster session_id_ belongs to (empty: an embedded node). Any node
  // of that cluster can resume the session, and its versions compare.
  std::string session_cluster_ ABSL_GUARDED_BY(mu_);
  absl::Duration granted_lease_ ABSL_GUARDED_BY(mu_);
  absl::Time stream_started_ ABSL_GUARDED_BY(mu_);
  // Withdrawn while the stream was down; sent again if the session resumes.
  std::set<std::pair<std::string, std::string>> withdrawn_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dropped_services_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dropped_configs_ ABSL_GUARDED_BY(mu_);
  size_t address_index_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Time last_heard_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t heartbeat_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<std::string, std::string>, Publication> publications_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ServiceSub, std::less<>> services_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::string> callback_owner_ ABSL_GUARDED_BY(mu_);  // id -> service/key
  std::map<std::string, ConfigWatch, std::less<>> configs_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, PendingRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> delivery_order_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Delivery> deliveries_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  uint64_t running_callback_ ABSL_GUARDED_BY(mu_) = 0;  // id of the callback running now

  std::thread session_thread_;
  std::thread timer_thread_;
  std::thread dispatch_thread_;
};

// ---------------------------------------------------------------------------
// Session

void Client::Impl::SessionLoop() {
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.backoff_initial;
  while (true) {
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        return;
      }
      address = options_.registries[address_index_ % options_.registries.size()];
    }
    SessionEnd end = RunSession(address);
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return;
    }
    if (end == SessionEnd::kRetryNow) {
      continue;  // the registry forgot our session: open a new one at once
    }
    if (end == SessionEnd::kClosed) {
      backoff = options_.backoff_initial;  // it worked for a while: retry soon
    } else {
      ++address_index_;  // this node failed us: try the next
    }
    // Full jitter: sleep a random time up to the current backoff.
    std::uniform_int_distribution<int64_t> dist(absl::ToInt64Microseconds(backoff) / 2,
                                                absl::ToInt64Microseconds(backoff));
    absl::Duration sleep = absl::Microseconds(dist(rng));
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), sleep);
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
}

// Runs one stream to its end.
Client::Impl::SessionEnd Client::Impl::RunSession(const std::string& address) {
  grpc::ChannelArguments args;
  int64_t lease_ms = absl::ToInt64Milliseconds(options_.lease);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(std::max<int64_t>(1000, lease_ms / 2)));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              static_cast<int>(std::max<int64_t>(500, lease_ms / 3)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // One connection per client, as a separate process would have.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  absl::Time give_up = absl::Now() + options_.request_timeout;
  bool tried = false;
  while (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)))) {
    // With other nodes to go to, a node that refuses the connection (a dead
    // process) is left at once rather than after request_timeout.
    // An embedded node's session lives only there: give it request_timeout
    // to come back before the session is given up elsewhere.
    bool refused = tried && options_.registries.size() > 1 &&
                   channel->GetState(false) == GRPC_CHANNEL_TRANSIENT_FAILURE;
    tried = true;
    absl::MutexLock lock(&mu_);
    refused = refused && (!session_cluster_.empty() || session_id_ == 0);
    if (stopping_ || refused || absl::Now() >= give_up) {
      SPDLOG_DEBUG("registry {} unreachable", address);
      return SessionEnd::kNeverOpened;
    }
  }
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext context;
  uint64_t resume = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return SessionEnd::kNeverOpened;
    }
    context_ = &context;
    stream_started_ = absl::Now();
    // An embedded node's session lives on that node only; a cluster's
    // session can be resumed on any node (another cluster answers NOT_FOUND).
    resume = (session_address_ == address || !session_cluster_.empty()) ? session_id_ : 0;
  }
  std::unique_ptr<Stream> stream = stub->Session(&context);
  v1::ClientMessage open;
  open.mutable_open()->set_client_name(options_.client_name);
  open.mutable_open()->set_lease_ms(static_cast<uint32_t>(lease_ms));
  open.mutable_open()->set_resume_session_id(resume);
  v1::ServerMessage reply;
  bool opened = stream->Write(open) && stream->Read(&reply) && reply.has_opened();
  if (opened) {
    // Publish the stream and replay everything under the write lock, so no
    // request can slip in between (an Unpublish overtaken by a replay).
    absl::MutexLock write_lock(&write_mu_);
    std::vector<v1::ClientMessage> replay;
    {
      absl::MutexLock lock(&mu_);
      session_id_ = reply.opened().session_id();
      session_address_ = address;
      // Versions of one cluster compare across its nodes: keep refusing
      // older ones even on a new session there.
      bool same_cluster =
          !reply.opened().cluster().empty() && reply.opened().cluster() == session_cluster_;
      session_cluster_ = reply.opened().cluster();
      granted_lease_ = reply.opened().lease_ms() > 0 ? absl::Milliseconds(reply.opened().lease_ms())
                                                     : options_.lease;
      connected_ = true;
      channel_ = channel;
      last_heard_ = absl::Now();
      if (reply.opened().resumed()) {
        // The registry still holds what this session had: take back what
        // was withdrawn while the stream was down.
        for (const auto& [service, addr] : withdrawn_) {
          v1::ClientMessage m;
          m.mutable_unpublish()->set_service(service);
          m.mutable_unpublish()->set_address(addr);
          replay.push_back(std::move(m));
        }
        for (const std::string& service : dropped_services_) {
          v1::ClientMessage m;
          m.mutable_unsubscribe()->set_service(service);
          replay.push_back(std::move(m));
        }
        for (const std::string& key : dropped_configs_) {
          v1::ClientMessage m;
          m.mutable_unwatch_config()->set_key(key);
          replay.push_back(std::move(m));
        }
      } else if (!same_cluster) {
        for (auto& [name, sub] : services_) sub.accept_next = true;
        for (auto& [key, watch] : configs_) watch.accept_next = true;
      }
      // A cluster compares versions: tell it only versions it issued (not
      // ones from the disk cache, an embedded node or another cluster).
      bool comparable =
          reply.opened().cluster().empty() || reply.opened().resumed() || same_cluster;
      withdrawn_.clear();
      dropped_services_.clear();
      dropped_configs_.clear();
      for (const auto& [key, pub] : publications_) {
        v1::ClientMessage m;
        m.mutable_publish()->set_request_id(pub.waiting_request);
        *m.mutable_publish()->mutable_instance() = pub.instance;
        replay.push_back(std::move(m));
      }
      for (const auto& [name, sub] : services_) {
        v1::ClientMessage m;
        m.mutable_subscribe()->set_service(name);
        m.mutable_subscribe()->set_known_version(comparable ? sub.version : 0);
        replay.push_back(std::move(m));
      }
      for (const auto& [key, watch] : configs_) {
        v1::ClientMessage m;
        m.mutable_watch_config()->set_key(key);
        m.mutable_watch_config()->set_known_version(comparable && watch.value ? watch.value->version
                                                                              : 0);
        replay.push_back(std::move(m));
      }
    }
    stream_ = stream.get();
    for (const auto& m : replay) {
      if (!stream->Write(m)) {
        break;
      }
    }
    SPDLOG_INFO("registry session {} {} on {}", reply.opened().session_id(),
                reply.opened().resumed() ? "resumed" : "opened", address);
  }
  v1::ServerMessage message;
  while (opened && stream->Read(&message)) {
    {
      absl::MutexLock lock(&mu_);
      last_heard_ = absl::Now();
    }
    switch (message.body_case()) {
      case v1::ServerMessage::kResult: {
        absl::MutexLock lock(&mu_);
        CompleteRequest(message.result().request_id(),
                        StatusFromCode(message.result().code(), message.result().message()));
        break;
      }
      case v1::ServerMessage::kService:
        HandleService(message.service());
        break;
      case v1::ServerMessage::kConfig:
        HandleConfig(message.config());
        break;
      default:
        break;
    }
  }
  {
    absl::MutexLock write_lock(&write_mu_);
    stream_ = nullptr;
  }
  grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
  connected_ = false;
  SessionEnd end = opened ? SessionEnd::kClosed : SessionEnd::kNeverOpened;
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    session_id_ = 0;  // the registry forgot our session: open a new one next time
    end = SessionEnd::kRetryNow;
  } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
             status.error_message().find("lapsed") != std::string::npos) {
    session_id_ = 0;
  }
  // A pending Publish is replayed with its request id on reconnect and
  // completes then. A pending Unpublish is already out of the replay, so the
  // next session will not have the instance: it is done.
  for (auto& [id, request] : requests_) {
    if (!request.done && request.unpublish) {
      withdrawn_.insert(*request.unpublish);
      request.done = true;
      request.status = absl::OkStatus();
    }
  }
  if (!stopping_) {
    SPDLOG_WARN("registry stream to {} ended: {} {}", address,
                static_cast<int>(status.error_code()), status.error_message());
  }
  return end;
}

bool Client::Impl::Send(const v1::ClientMessage& message) {
  absl::MutexLock write_lock(&write_mu_);
  return WriteLocked(message);
}

bool Client::Impl::WriteLocked(const v1::ClientMessage& message) {
  return stream_ != nullptr && stream_->Write(message);
}

void Client::Impl::TimerLoop() {
  absl::Time next_reconcile = absl::Now() + options_.reconcile_interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      // Heartbeats follow the lease the registry granted, which may be
      // shorter than the one asked for.
      absl::Duration lease = connected_ ? std::min(granted_lease_, options_.lease) : options_.lease;
      absl::Duration heartbeat = std::max(lease / 3, absl::Milliseconds(50));
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), heartbeat);
      if (stopping_) {
        return;
      }
      absl::Time now = absl::Now();
      if (!connected_) {
        // A registry that accepts the connection but never answers the
        // open must not hold the client: give up and try the next one.
        if (context_ != nullptr && now - stream_started_ > options_.request_timeout) {
          SPDLOG_WARN("registry did not open a session within {}: trying again",
                      absl::FormatDuration(options_.request_timeout));
          context_->TryCancel();
        }
        continue;
      }
      if (now - last_heard_ > granted_lease_ && context_ != nullptr) {
        SPDLOG_WARN("registry silent for longer than the lease: reconnecting");
        context_->TryCancel();
        continue;
      }
    }
    // Built and sent under the write lock, so no Unsubscribe can slip in
    // between and be undone by a stale view.
    absl::MutexLock write_lock(&write_mu_);
    v1::ClientMessage beat;
    std::optional<v1::ClientMessage> reconcile;
    {
      absl::MutexLock lock(&mu_);
      beat.mutable_heartbeat()->set_seq(++heartbeat_seq_);
      if (absl::Now() >= next_reconcile) {
        next_reconcile = absl::Now() + options_.reconcile_interval;
        reconcile.emplace();
        reconcile->mutable_reconcile();  // an empty view is still a reconcile
        for (const auto& [name, sub] : services_) {
          (*reconcile->mutable_reconcile()->mutable_services())[name] = sub.version;
        }
        for (const auto& [key, watch] : configs_) {
          (*reconcile->mutable_reconcile()->mutable_configs())[key] =
              watch.value ? watch.value->version : 0;
        }
      }
    }
    WriteLocked(beat);
    if (reconcile) {
      WriteLocked(*reconcile);
    }
  }
}

void Client::Impl::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return;
    }
    stopping_ = true;
  }
  v1::ClientMessage close;
  close.mutable_close();
  bool sent = false;
  {
    absl::MutexLock write_lock(&write_mu_);
    if (stream_ != nullptr) {
      sent = stream_->Write(close);
      stream_->WritesDone();
      stream_ = nullptr;  // nothing may be written after WritesDone
    }
  }
  {
    // The registry ends the stream after a close; do not wait forever.
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return context_ == nullptr; };
    if (sent) {
      mu_.AwaitWithTimeout(absl::Condition(&ended), options_.request_timeout);
    }
    if (context_ != nullptr) {
      context_->TryCancel();
    }
  }
  session_thread_.join();
  timer_thread_.join();
  dispatch_thread_.join();
}

// ---------------------------------------------------------------------------
// Requests

void Client::Impl::CompleteRequest(uint64_t id, absl::Status status) {
  auto it = requests_.find(id);
  if (it != requests_.end()) {
    it->second.done = true;
    it->second.status = std::move(status);
  }
}

absl::Status Client::Impl::WaitForRequest(uint64_t id) {
  auto done = [this, id]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return requests_[id].done || stopping_; };
  mu_.AwaitWithTimeout(absl::Condition(&done), options_.request_timeout);
  absl::Status status = requests_[id].done
                            ? requests_[id].status
                            : absl::DeadlineExceededError(absl::StrCat(
                                  "the registry did not answer within ",
                                  absl::FormatDuration(options_.request_timeout),
                                  "; the request stays queued and is sent on reconnect"));
  if (!requests_[id].done && stopping_) {
    status = absl::CancelledError("the client is shutting down");
  }
  requests_.erase(id);
  return status;
}

absl::Status Client::Impl::Publish(const Instance& instance) {
  v1::Instance proto = ToProto(instance);
  if (absl::Status st = ValidateInstance(proto, limits_); !st.ok()) {
    return st;
  }
  auto key = std::make_pair(instance.service, instance.address);
  uint64_t id = 0;
  v1::ClientMessage message;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      id = next_id_++;
      requests_[id];
      publications_[key] = Publication{proto, id};
      withdrawn_.erase(key);
    }
    message.mutable_publish()->set_request_id(id);
    *message.mutable_publish()->mutable_instance() = proto;
    WriteLocked(message);
  }
  absl::MutexLock lock(&mu_);
  absl::Status status = WaitForRequest(id);
  auto it = publications_.find(key);
  if (it != publications_.end() && it->second.waiting_request == id) {
    it->second.waiting_request = 0;
    if (absl::IsInvalidArgument(status)) {
      publications_.erase(it);  // refused by the registry: nothing to replay
    }
  }
  return status;
}

absl::Status Client::Impl::Unpublish(absl::string_view service, absl::string_view address) {
  uint64_t id = 0;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (publications_.erase({std::string(service), std::string(address)}) == 0) {
        return absl::NotFoundError(absl::StrCat("instance ", address, " of service '", service,
                                                "' was not published by this client"));
      }
      if (stream_ == nullptr) {
        // Not connected: a new session will not have it; a resumed one is
        // told on reconnect.
        withdrawn_.insert({std::string(service), std::string(address)});
        return absl::OkStatus();
      }
      id = next_id_++;
      requests_[id].unpublish = std::make_pair(std::string(service), std::string(address));
    }
    v1::ClientMessage message;
    message.mutable_unpublish()->set_request_id(id);
    message.mutable_unpublish()->set_service(std::string(service));
    message.mutable_unpublish()->set_address(std::string(address));
    WriteLocked(message);
  }
  absl::MutexLock lock(&mu_);
  return WaitForRequest(id);
}

// ---------------------------------------------------------------------------
// Subscriptions and watches

absl::StatusOr<uint64_t> Client::Impl::Subscribe(absl::string_view service,
                                                 SnapshotCallback callback) {
  if (absl::Status st = ValidateServiceName(service, limits_); !st.ok()) {
    return st;
  }
  if (!callback) {
    callback = [](const ServiceSnapshot&) {};
  }
  std::optional<ServiceSnapshot> cached;
  {
    absl::MutexLock lock(&mu_);
    if (services_.find(service) == services_.end()) {
      cached = ReadCache(service);
    }
  }
  absl::MutexLock write_lock(&write_mu_);
  uint64_t id = 0;
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = services_.try_emplace(std::string(service));
    ServiceSub& sub = it->second;
    dropped_services_.erase(std::string(service));
    if (inserted && cached && cached->version > sub.version) {
      sub.version = cached->version;
      sub.snapshot = std::move(cached);
    }
    id = next_id_++;
    sub.callbacks[id] = std::move(callback);
    callback_owner_[id] = std::string(service);
    if (sub.snapshot) {
      ServiceSnapshot copy = *sub.snapshot;
      SnapshotCallback cb = sub.callbacks[id];
      QueueDelivery(id, [cb, copy] { cb(copy); });
    }
    if (!inserted) {
      return id;
    }
    message.mutable_subscribe()->set_service(std::string(service));
    message.mutable_subscribe()->set_known_version(sub.version);
  }
  WriteLocked(message);
  return id;
}

void Client::Impl::Unsubscribe(uint64_t id) {
  absl::MutexLock write_lock(&write_mu_);
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto owner = callback_owner_.find(id);
    if (owner == callback_owner_.end()) {
      return;
    }
    std::string service = owner->second;
    callback_owner_.erase(owner);
    deliveries_.erase(id);
    auto it = services_.find(service);
    if (it == services_.end()) {
      return;
    }
    it->second.callbacks.erase(id);
    if (!it->second.callbacks.empty()) {
      return;
    }
    services_.erase(it);
    if (stream_ == nullptr) {
      dropped_services_.insert(service);
    }
    message.mutable_unsubscribe()->set_service(service);
  }
  WriteLocked(message);
}

void Client::Impl::HandleService(const v1::ServiceSnapshot& snapshot) {
  v1::ClientMessage ack;
  ack.mutable_ack()->set_service(snapshot.service());
  ack.mutable_ack()->set_version(snapshot.version());
  bool cache = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = services_.find(snapshot.service());
    if (it != services_.end() &&
        (snapshot.version() > it->second.version || it->second.accept_next)) {
      ServiceSub& sub = it->second;
      sub.version = snapshot.version();
      sub.accept_next = false;
      bool had_instances = sub.snapshot && !sub.snapshot->instances.empty();
      if (snapshot.instances_size() == 0 && had_instances && !options_.accept_empty_push) {
        SPDLOG_WARN("ignoring an empty push for '{}' (version {}); keeping {} instance(s)",
                    snapshot.service(), snapshot.version(), sub.snapshot->instances.size());
      } else {
        sub.snapshot = FromProto(snapshot);
        cache = true;
        for (auto& [id, cb] : sub.callbacks) {
          ServiceSnapshot copy = *sub.snapshot;
          SnapshotCallback callback = cb;
          QueueDelivery(id, [callback, copy] { callback(copy); });
        }
      }
    }
  }
  if (cache) {
    WriteCache(snapshot);
  }
  Send(ack);
}

absl::StatusOr<uint64_t> Client::Impl::WatchConfig(absl::string_view key, ConfigCallback callback) {
  if (absl::Status st = ValidateConfigKey(key, limits_); !st.ok()) {
    return st;
  }
  if (!callback) {
    callback = [](const ConfigValue&) {};
  }
  absl::MutexLock write_lock(&write_mu_);
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = configs_.try_emplace(std::string(key));
    dropped_configs_.erase(std::string(key));
    id = next_id_++;
    it->second.callbacks[id] = std::move(callback);
    callback_owner_[id] = absl::StrCat("\x01", key);
    if (it->second.value) {
      ConfigValue copy = *it->second.value;
      ConfigCallback cb = it->second.callbacks[id];
      QueueDelivery(id, [cb, copy] { cb(copy); });
    }
    if (!inserted) {
      return id;
    }
  }
  v1::ClientMessage message;
  message.mutable_watch_config()->set_key(std::string(key));
  WriteLocked(message);
  return id;
}

void Client::Impl::Unwatch(uint64_t id) {
  absl::MutexLock write_lock(&write_mu_);
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto owner = callback_owner_.find(id);
    if (owner == callback_owner_.end() || owner->second.empty() || owner->second[0] != '\x01') {
      return;
    }
    std::string key = owner->second.substr(1);
    callback_owner_.erase(owner);
    deliveries_.erase(id);
    auto it = configs_.find(key);
    if (it == configs_.end()) {
      return;
    }
    it->second.callbacks.erase(id);
    if (!it->second.callbacks.empty()) {
      return;
    }
    configs_.erase(it);
    if (stream_ == nullptr) {
      dropped_configs_.insert(key);
    }
    message.mutable_unwatch_config()->set_key(key);
  }
  WriteLocked(message);
}

void Client::Impl::HandleConfig(const v1::ConfigEntry& entry) {
  v1::ClientMessage ack;
  ack.mutable_ack()->set_config_key(entry.key());
  ack.mutable_ack()->set_version(entry.version());
  {
    absl::MutexLock lock(&mu_);
    auto it = configs_.find(entry.key());
    uint64_t have = (it != configs_.end() && it->second.value) ? it->second.value->version : 0;
    if (it != configs_.end() && (entry.version() > have || it->second.accept_next)) {
      it->second.accept_next = false;
      it->second.value = FromProto(entry);
      for (auto& [id, cb] : it->second.callbacks) {
        ConfigValue copy = *it->second.value;
        ConfigCallback callback = cb;
        QueueDelivery(id, [callback, copy] { callback(copy); });
      }
    }
  }
  Send(ack);
}

std::optional<ServiceSnapshot> Client::Impl::GetSnapshot(absl::string_view service) const {
  absl::MutexLock lock(&mu_);
  auto it = services_.find(service);
  if (it == services_.end()) {
    return std::nullopt;
  }
  return it->second.snapshot;
}

absl::StatusOr<ServiceSnapshot> Client::Impl::AwaitSnapshot(absl::string_view service,
                                                            absl::Duration timeout,
                                                            bool allow_empty) const {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = services_.find(service);
    return it == services_.end() ||
           (it->second.snapshot && (allow_empty || !it->second.snapshot->instances.empty()));
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  auto it = services_.find(service);
  if (it == services_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("not subscribed to '", service, "'; call Subscribe first"));
  }
  if (!it->second.snapshot || (!allow_empty && it->second.snapshot->instances.empty())) {
    return absl::DeadlineExceededError(
        absl::StrCat("no provider of '", service, "' known after ", absl::FormatDuration(timeout)));
  }
  return *it->second.snapshot;
}

// ---------------------------------------------------------------------------
// Callback dispatch

void Client::Impl::QueueDelivery(uint64_t callback_id, std::function<void()> run) {
  auto [it, inserted] = deliveries_.insert_or_assign(callback_id, Delivery{std::move(run)});
  if (inserted) {
    delivery_order_.push_back(callback_id);
  }
}

void Client::Impl::DispatchLoop() {
  while (true) {
    std::function<void()> run;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !delivery_order_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) {
        return;
      }
      uint64_t id = delivery_order_.front();
      delivery_order_.pop_front();
      auto it = deliveries_.find(id);
      if (it == deliveries_.end()) {
        continue;  // unsubscribed meanwhile
      }
      run = std::move(it->second.run);
      deliveries_.erase(it);
      running_callback_ = id;
    }
    try {
      run();
    } catch (const std::exception& e) {
      SPDLOG_ERROR("a registry callback threw: {}", e.what());
    } catch (...) {
      SPDLOG_ERROR("a registry callback threw a non-standard exception");
    }
    absl::MutexLock lock(&mu_);
    running_callback_ = 0;
  }
}

// ---------------------------------------------------------------------------
// Cache

void Client::Impl::WriteCache(const v1::ServiceSnapshot& snapshot) {
  if (options_.cache_dir.empty()) {
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.cache_dir, ec);
  std::filesystem::path path =
      std::filesystem::path(options_.cache_dir) / CacheFileName(snapshot.service());
  // A name of its own, so processes sharing the directory never mix writes.
  std::filesystem::path tmp = path;
  tmp += absl::StrCat(".", getpid(), ".", std::hash<std::thread::id>()(std::this_thread::get_id()),
                      ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !snapshot.SerializeToOstream(&out)) {
      SPDLOG_WARN("cannot write the registry cache file {}", tmp.string());
      return;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    SPDLOG_WARN("cannot move the registry cache file into place: {}", ec.message());
  }
}

std::optional<ServiceSnapshot> Client::Impl::ReadCache(absl::string_view service) {
  if (options_.cache_dir.empty()) {
    return std::nullopt;
  }
  std::ifstream in(std::filesystem::path(options_.cache_dir) / CacheFileName(service),
                   std::ios::binary);
  v1::ServiceSnapshot proto;
  if (!in || !proto.ParseFromIstream(&in) || proto.service() != service) {
    return std::nullopt;
  }
  ServiceSnapshot out = FromProto(proto);
  out.from_cache = true;
  return out;
}

// ---------------------------------------------------------------------------
// Unary config calls

// Tries each registry in turn. A write moves on only when the call surely
// never reached the registry (UNAVAILABLE); a read also on a timeout.
template <typename Call>
absl::Status Client::Impl::Unary(bool is_read, Call call) {
  std::vector<std::string> order;
  {
    absl::MutexLock lock(&mu_);
    size_t n = options_.registries.size();
    for (size_t i = 0; i < n; ++i) {
      order.push_back(options_.registries[(address_index_ + i) % n]);
    }
  }
  absl::Status last = absl::UnavailableError("no registry configured");
  for (const std::string& address : order) {
    auto stub = StubFor(address);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.request_timeout));
    grpc::Status status = call(stub.get(), &context);
    last = FromGrpcStatus(status);
    bool retry = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                 (is_read && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
    if (!retry) {
      return last;
    }
  }
  return last;
}

std::unique_ptr<v1::Registry::Stub> Client::Impl::StubFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (connected_ && channel_ != nullptr &&
      options_.registries[address_index_ % options_.registries.size()] == address) {
    return v1::Registry::NewStub(channel_);
  }
  return v1::Registry::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

absl::StatusOr<ConfigValue> Client::Impl::GetConfig(absl::string_view key) {
  v1::GetConfigRequest request;
  request.set_key(std::string(key));
  v1::ConfigEntry response;
  absl::Status st = Unary(true, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->GetConfig(ctx, request, &response);
  });
  if (!st.ok()) {
    return st;
  }
  return FromProto(response);
}

absl::StatusOr<ConfigValue> Client::Impl::PutConfig(absl::string_view key, absl::string_view value,
                                                    std::optional<uint64_t> expected) {
  v1::PutConfigRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  if (expected) {
    request.set_expected_version(*expected);
  }
  v1::PutConfigResponse response;
  absl::Status st = Unary(false, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->PutConfig(ctx, request, &response);
  });
  if (!st.ok()) {
    return st;
  }
  return FromProto(response.entry());
}

absl::Status Client::Impl::DeleteConfig(absl::string_view key, std::optional<uint64_t> expected) {
  v1::DeleteConfigRequest request;
  request.set_key(std::string(key));
  if (expected) {
    request.set_expected_version(*expected);
  }
  v1::DeleteConfigResponse response;
  return Unary(false, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->DeleteConfig(ctx, request, &response);
  });
}

// ---------------------------------------------------------------------------
// Client

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("ClientOptions.registries is empty: name at least one dsrd");
  }
  for (const std::string& address : options.registries) {
    if (absl::Status st = ValidateAddress(address); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("ClientOptions.registries: ", st.message()));
    }
  }
  if (options.lease < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError("ClientOptions.lease must be at least 100ms");
  }
  if (options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.request_timeout must be positive");
  }
  if (options.backoff_initial <= absl::ZeroDuration() ||
      options.backoff_max < options.backoff_initial) {
    return absl::InvalidArgumentError(
        "ClientOptions.backoff_initial must be positive and not above backoff_max");
  }
  if (options.reconcile_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.reconcile_interval must be positive");
  }
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(std::move(options))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() { impl_->Stop(); }

absl::Status Client::Publish(const Instance& instance) { return impl_->Publish(instance); }
absl::Status Client::Unpublish(absl::string_view service, absl::string_view address) {
  return impl_->Unpublish(service, address);
}
absl::StatusOr<uint64_t> Client::Subscribe(absl::string_view service, SnapshotCallback callback) {
  return impl_->Subscribe(service, std::move(callback));
}
void Client::Unsubscribe(uint64_t id) {
  impl_->Unsubscribe(id);
  impl_->AwaitCallbackDone(id);
}
std::optional<ServiceSnapshot> Client::GetSnapshot(absl::string_view service) const {
  return impl_->GetSnapshot(service);
}
absl::StatusOr<ServiceSnapshot> Client::AwaitSnapshot(absl::string_view service,
                                                      absl::Duration timeout,
                                                      bool allow_empty) const {
  return impl_->AwaitSnapshot(service, timeout, allow_empty);
}
absl::StatusOr<ConfigValue> Client::GetConfig(absl::string_view key) {
  return impl_->GetConfig(key);
}
absl::StatusOr<ConfigValue> Client::PutConfig(absl::string_view key, absl::string_view value,
                                              std::optional<uint64_t> expected_version) {
  return impl_->PutConfig(key, value, expected_version);
}
absl::Status Client::DeleteConfig(absl::string_view key, std::optional<uint64_t> expected_version) {
  return impl_->DeleteConfig(key, expected_version);
}
absl::StatusOr<uint64_t> Client::WatchConfig(absl::string_view key, ConfigCallback callback) {
  return impl_->WatchConfig(key, std::move(callback));
}
void Client::Unwatch(uint64_t id) {
  impl_->Unwatch(id);
  impl_->AwaitCallbackDone(id);
}
bool Client::connected() const { return impl_->connected(); }
uint64_t Client::session_id() const { return impl_->session_id(); }
std::string Client::connected_registry() const { return impl_->connected_registry(); }
void Client::DropConnectionForTesting() { impl_->DropConnection(); }

}  // namespace formica::registry
