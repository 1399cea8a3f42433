// registry::Client::Impl, the inside of formica::registry::Client, shared by
// the files that implement it, one concern each:
//   client.cc                the options check, the public methods, the wire
//                            conversions
//   client_session.cc        the session stream: connect, open or resume,
//                            replay, heartbeats and reconciles, reconnects, Stop
//   client_requests.cc       Publish and Unpublish (answered on the stream) and
//                            the unary config calls (GetConfig, PutConfig...)
//   client_subscriptions.cc  subscriptions and config watches, the callback
//                            dispatch thread, the snapshot cache on disk
// Private to the registry's lib/ half; nothing outside it includes this.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "formica/registry/client.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "validation.h"

namespace formica::registry {

class Client::Impl {
 public:
  // Starts the session, timer and dispatch threads (client_session.cc,
  // client_subscriptions.cc).
  explicit Impl(ClientOptions options);

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
  Client::SessionView session() const {
    absl::MutexLock lock(&mu_);
    Client::SessionView view;
    view.connected = connected_;
    view.id = session_id_;
    if (connected_) {
      view.lease_valid_until =
          answered_sent_ + absl::ToChronoMilliseconds(granted_lease_ - granted_lease_ / 10);
    }
    return view;
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
  using Stream = grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>;

  // Between the public types and the wire (client.cc).
  static v1::Instance ToProto(const Instance& in);
  static Instance FromProto(const v1::Instance& in);
  static ServiceSnapshot FromProto(const v1::ServiceSnapshot& in);
  static ConfigValue FromProto(const v1::ConfigEntry& in);

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
  // When the newest stream was started, by the monotonic clock (the lease
  // is counted on it: a change of the wall clock moves no deadline).
  std::chrono::steady_clock::time_point stream_started_ ABSL_GUARDED_BY(mu_);
  // Withdrawn while the stream was down; sent again if the session resumes.
  std::set<std::pair<std::string, std::string>> withdrawn_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dropped_services_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dropped_configs_ ABSL_GUARDED_BY(mu_);
  size_t address_index_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Time last_heard_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t heartbeat_seq_ ABSL_GUARDED_BY(mu_) = 0;
  // When the heartbeats not answered yet were sent, by sequence number.
  std::map<uint64_t, std::chrono::steady_clock::time_point> heartbeats_sent_ ABSL_GUARDED_BY(mu_);
  // When the newest message the registry answered on this session was sent.
  std::chrono::steady_clock::time_point answered_sent_ ABSL_GUARDED_BY(mu_);
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

}  // namespace formica::registry
