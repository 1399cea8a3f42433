// The registry's rules, free of any transport: sessions and their leases,
// publications, subscriptions and config watches, merged and acknowledged
// pushes, warm-up and the operator's stop-push switch. Where the data lives
// is the backend's business (RegistryBackend); the gRPC service is a thin
// adapter that turns each stream into a SessionStream and calls in here.
//
// Thread-safe: one mutex guards the core and its engines (SessionTable,
// PushScheduler, ConfigWatches, the service table). Streams call in on the
// transport's threads, the backend on its own, and a maintenance thread
// (StartMaintenance) sweeps leases and retries and flushes due pushes.
// Tests drive it without threads through Tick() and a FakeClock.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "backend_events.h"
#include "config_watches.h"
#include "formica/internal/duration_histogram.h"
#include "push_scheduler.h"
#include "registry_backend.h"
#include "service_table.h"
#include "session_table.h"
#include "validation.h"

namespace formica {
class Clock;
}  // namespace formica

namespace formica::registry {

namespace v1 {
class ClientMessage;
class ClusterInfo;
class ListServicesResponse;
class ListSessionsResponse;
class OpenSession;
class PushSwitchState;
class ServiceSnapshot;
}  // namespace v1

// As in RegistryServerOptions, which RegistryServer copies them from.
struct RegistryCoreOptions {
  std::string registry_id;
  absl::Duration default_lease = absl::Seconds(10);
  absl::Duration min_lease = absl::Milliseconds(500);
  absl::Duration max_lease = absl::Minutes(5);
  absl::Duration merge_window = absl::Milliseconds(20);
  absl::Duration push_retry = absl::Seconds(1);
  absl::Duration warmup = absl::ZeroDuration();  // pushes held this long after start
  absl::Duration sweep_interval = absl::Milliseconds(50);
  Limits limits;
};

class RegistryCore : public BackendListener {
 public:
  // `clock` is borrowed (null: the real clock).
  RegistryCore(RegistryCoreOptions options, Clock* clock);
  ~RegistryCore() override;

  // The tables a backend works on (see RegistryBackend), and the backend:
  // set once, before any stream or StartMaintenance. Borrowed.
  CoreTables tables();
  void AttachBackend(RegistryBackend* backend);
  RegistryBackend* backend() const { return backend_; }
  const RegistryCoreOptions& options() const { return options_; }

  // Sweeps every sweep_interval (real time) and flushes pushes when due.
  void StartMaintenance();
  void StopMaintenance();
  // One sweep: lapsed leases, push retries, the end of warm-up, due pushes.
  void Tick();

  // ---- BackendListener ----
  void OnServiceUpdate(const std::string& service, uint64_t revision, bool reset,
                       std::vector<InstanceChange> changes) override;
  void OnConfigUpdate(const StoredConfig& entry) override;
  void OnLeaseLost(uint64_t session_id) override;

  // ---- from the transport, per stream ----
  void StreamStarted(SessionStream* stream);
  void Handle(SessionStream* stream, const v1::ClientMessage& message);
  // The client went away (or cancelled) without closing its session.
  void StreamEnded(SessionStream* stream);
  void WriteDone(SessionStream* stream, bool ok);
  // The transport is done with the stream; it is not used again.
  void StreamDone(SessionStream* stream);
  // Ends every stream, opened or not, with UNAVAILABLE `why`, and refuses
  // new ones the same way (the registry is shutting down).
  void CloseAllStreams(absl::string_view why);

  // ---- operator views and controls ----
  absl::Status ListServices(v1::ListServicesResponse* out);
  absl::Status Describe(v1::ClusterInfo* out);
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out);
  // A config entry was written or deleted through this node.
  void ConfigChanged(const StoredConfig& entry);
  v1::PushSwitchState SetStopPush(std::optional<bool> stop);
  void ListSessions(v1::ListSessionsResponse* out);
  absl::Status KillSession(uint64_t id);
  // Pushes sent (service snapshots, config values) and the time from each
  // push to the subscriber's ack, for the metrics (docs/metrics.md).
  void WritePushMetrics(PrometheusText& out) const;
  // Whether the backend's store answers (etcd in cluster mode).
  bool BackendReachable() const { return backend_->Reachable(); }
  absl::string_view BackendName() const { return backend_->name(); }

 private:
  bool Held() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pushes_.Held(); }
  bool Stale(uint64_t have, uint64_t acked) const { return backend_->Stale(have, acked); }

  // Sessions
  void HandleOpen(SessionStream* stream, const v1::OpenSession& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteOpen(SessionStream* stream, const v1::OpenSession& open,
                    absl::StatusOr<SessionGrant> grant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishOpen(SessionStream* stream, Session& session, const v1::OpenSession& open,
                  absl::Duration lease, bool resumed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A session this node holds, taken over by a new stream.
  void ResumeLocal(SessionStream* stream, Session& session, const v1::OpenSession& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The stream waiting for `serial`'s open, if it still waits.
  SessionStream* TakeOpening(uint64_t serial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `revoke`: the session ends for good (closed, killed); otherwise the
  // backend decides (another node may have resumed it).
  void RemoveSession(uint64_t id, absl::string_view why, bool revoke = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A backend write for a session finished: answer it, or end the
  // session's stream if its lease is gone or the backend is out of reach.
  void WriteResult(uint64_t session_id, uint64_t incarnation, uint64_t request_id,
                   const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Requests on an open session
  void HandleUnsubscribe(Session& session, const std::string& service, uint64_t request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleUnwatch(Session& session, const std::string& key, uint64_t request_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleReconcile(Session& session, const v1::ClientMessage& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandleSubscribe(Session& session, const std::string& service, uint64_t known)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HandleWatch(Session& session, const std::string& key, uint64_t known)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Writing to streams
  void Reply(SessionStream* stream, Msg message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReplyResult(SessionStream* stream, uint64_t request_id, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RequestFinish(SessionStream* stream, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pump(Session& session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Services, config watches and pushes
  ServiceState& EnsureService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const Msg& CurrentSnapshot(const std::string& name, ServiceState& state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeForgetService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyConfig(const StoredConfig& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkDirty(const std::string& service) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pushes_.MarkServiceDirty(service);
  }
  void Flush() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new version of one service, queued for its subscribers.
  void FlushService(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After warm-up or stop-push: bring every subscriber to the current version.
  void Release() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueService(Session& session, const std::string& service)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueConfig(Session& session, const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Streams cut off when the backend becomes unreachable.
  void CheckBackend() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RetryUnacked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaintenanceLoop();

  const RegistryCoreOptions options_;
  Clock* const clock_;
  RegistryBackend* backend_ = nullptr;
  std::thread maintenance_;

  absl::Mutex mu_;
  SessionTable sessions_ ABSL_GUARDED_BY(mu_);
  PushScheduler pushes_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> service_pushes_{0};
  std::atomic<uint64_t> config_pushes_{0};
  DurationHistogram push_acks_;
  ServiceMap services_ ABSL_GUARDED_BY(mu_);
  ConfigWatches configs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Every stream the transport has not finished with, so that shutting
  // down ends each with its reason, opened or not.
  std::set<SessionStream*> streams_ ABSL_GUARDED_BY(mu_);
  std::string closed_why_ ABSL_GUARDED_BY(mu_);  // set: new streams are refused with it
  // Streams whose open waits for the backend, by stream serial.
  std::map<uint64_t, SessionStream*> opening_ ABSL_GUARDED_BY(mu_);
  bool backend_reachable_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace formica::registry
