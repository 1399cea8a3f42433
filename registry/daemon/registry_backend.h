// Where the registry's data lives, behind one interface: EmbeddedBackend
// (one node: publications in memory, config in RocksDB) or EtcdBackend
// (cluster mode: everything in etcd, this node a front for its sessions).
// RegistryCore runs the same rules over either; what differs between the
// modes is here, never a branch in the core.
//
// Calls marked "under the core's lock" are made by RegistryCore holding its
// mutex; a backend answers them without waiting for the network (embedded,
// at most a read of the local store). Asynchronous answers (`later`,
// CoreTables::write_done) come on the backend's own threads, without it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "backend_events.h"
#include "service_table.h"
#include "session_table.h"

namespace formica::registry {

class RegistryStore;
namespace v1 {
class ClusterInfo;
class ListServicesResponse;
class OpenSession;
class Publish;
class ServiceSnapshot;
class Unpublish;
}  // namespace v1

// A stream asks for a session.
struct SessionRequest {
  uint64_t resume_id = 0;  // 0: a new session
  std::string client_name;
  std::string peer;
  std::string identity;
  absl::Duration lease;  // asked for, within the configured bounds
};

// The backend's answer.
struct SessionGrant {
  uint64_t id = 0;
  absl::Duration lease;
  bool resumed = false;
  uint64_t record_revision = 0;  // guards later writes (see ClusterLink)
  // Set when the backend holds the session's publications itself: they
  // replace whatever copy of the session this node holds. Unset on a resume:
  // the session held here continues.
  std::optional<std::vector<std::pair<std::string, std::string>>> publications;
};

// The core's tables a backend may read and change, under `mu`.
struct CoreTables {
  absl::Mutex* mu = nullptr;
  SessionTable* sessions = nullptr;
  ServiceMap* services = nullptr;
  // Marks a service changed (a push is scheduled). Under `mu`.
  std::function<void(const std::string&)> mark_dirty;
  // Answers a publish or unpublish made for the session `session_id` (at
  // its `record_revision`) later. Not under `mu`: it takes the lock.
  std::function<void(uint64_t session_id, uint64_t record_revision, uint64_t request_id,
                     const absl::Status& status)>
      write_done;
};

class RegistryBackend {
 public:
  virtual ~RegistryBackend() = default;

  // Stops the backend's threads; afterwards it calls nothing back. Idempotent.
  virtual void Shutdown() = 0;
  // Config entries (thread-safe; may block).
  virtual RegistryStore* config_store() = 0;

  // ---- reachability ----
  // Whether this node can serve sessions (a cluster node cut off from etcd
  // cannot). Thread-safe.
  virtual bool Reachable() const = 0;
  // OK, or UNAVAILABLE saying where the client should go.
  virtual absl::Status CheckReachable() const = 0;
  // Whether operator views may block (they then run off gRPC's threads).
  virtual bool views_may_block() const = 0;
  // The cluster's identity for clients; empty for one embedded node.
  virtual std::string identity() const = 0;
  // What the data lives in, for messages to clients and the log ("etcd").
  virtual absl::string_view name() const = 0;

  // ---- versions (under the core's lock) ----
  // Whether a subscriber that acknowledged `acked` needs the version `have`.
  virtual bool Stale(uint64_t have, uint64_t acked) const = 0;
  // A new entry in the service table: give it its first version, or start
  // loading it (loaded=false until OnServiceUpdate brings it).
  virtual void ServiceAdded(const std::string& name, ServiceState& state) = 0;
  // A merged change to `state` is about to be pushed.
  virtual void ServiceFlushed(ServiceState& state) = 0;
  // Nobody here subscribes to `name` any more: whether its entry goes.
  virtual bool ReleaseService(const std::string& name, const ServiceState& state) = 0;
  // A config key gets its first watcher here: its current entry, or an
  // entry still loading (loaded=false until OnConfigUpdate brings it).
  virtual absl::StatusOr<WatchedConfig> ConfigAdded(const std::string& key) = 0;
  virtual void ConfigReleased(const std::string& key) = 0;

  // ---- sessions (under the core's lock) ----
  using GrantDone = std::function<void(absl::StatusOr<SessionGrant>)>;
  // Opens or resumes a session: the answer now, or nullopt and later.
  virtual std::optional<absl::StatusOr<SessionGrant>> OpenSession(const SessionRequest& request,
                                                                  GrantDone later) = 0;
  // Ends a session for good wherever it is held (its lease is revoked).
  virtual void CloseSession(uint64_t id) = 0;
  // An operator ends a session this node does not hold.
  virtual absl::Status KillUnheldSession(uint64_t id) = 0;
  // The client showed itself alive: renew its lease. True when it is
  // renewed already (`renewed` is then not called); false when `renewed`
  // (if any) is called later, from another thread and without the core's
  // lock, once the backend renewed it, and never when it could not.
  virtual bool KeepAlive(uint64_t id, std::function<void()> renewed) = 0;
  // `session` leaves this node (before the core forgets it). `revoke`: it
  // ends for good; otherwise the backend decides (another node may hold it).
  virtual void SessionEnded(Session& session, absl::string_view why, bool revoke) = 0;

  // ---- publications (under the core's lock) ----
  // The result now, or nullopt and later through CoreTables::write_done:
  // OK; FAILED_PRECONDITION, the session was resumed elsewhere since;
  // NOT_FOUND, its lease is gone; anything else, this node cannot reach the
  // backend.
  virtual std::optional<absl::Status> Publish(Session& session, const v1::Publish& request) = 0;
  virtual std::optional<absl::Status> Unpublish(Session& session, const v1::Unpublish& request) = 0;

  // ---- operator views (not under the core's lock; may block) ----
  virtual absl::Status ListServices(v1::ListServicesResponse* out) = 0;
  virtual absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out) = 0;
  virtual absl::Status Describe(v1::ClusterInfo* out) = 0;
};

}  // namespace formica::registry
