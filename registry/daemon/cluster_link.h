// Cluster mode: a dsrd node's link to etcd (v3 gRPC API).
//
// etcd holds the truth; each node is a front for its client sessions:
//   <prefix>svc/<service>#<address>  an Instance, under the publishing
//                                    session's lease
//   <prefix>cfg/<key>                a config value; its mod revision is the
//                                    entry's version
//   <prefix>session/<id>             a SessionRecord, under the session's lease
//   <prefix>member/<node id>         a ClusterNode, under the node's own lease
// A session id is its etcd lease id, so any node of the cluster can resume a
// session while the lease lives, and a dead node's sessions expire with their
// leases. Service versions are etcd revisions, the same on every node.
//
// Writes run in order on one writer thread (consecutive publishes share one
// etcd transaction); watches share one Watch stream; keep-alives share one
// LeaseKeepAlive stream. Results and watch events reach the Listener on the
// link's threads, never while the link holds a lock of its own, so the
// listener may call back into the link.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "backend_events.h"

namespace formica::registry {

// The end of etcd's key range covering every key that starts with `prefix`.
inline std::string EtcdPrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    unsigned char last = static_cast<unsigned char>(prefix.back());
    if (last < 0xff) {
      prefix.back() = static_cast<char>(last + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // from the key to the end of the keyspace
}

class RegistryStore;
struct StoredConfig;
namespace v1 {
class Instance;
class ClusterInfo;
class ListServicesResponse;
class ServiceSnapshot;
class SessionRecord;
}  // namespace v1

struct ClusterOptions {
  // etcd client endpoints, host:port (an http:// prefix is accepted). Several
  // endpoints must be IP addresses; one DNS name may resolve to all members.
  std::vector<std::string> endpoints;
  std::string prefix = "/formica/";
  std::string cluster_name = "formica";
  std::string node_id;       // this node's name in <prefix>member/
  std::string node_address;  // what clients dial for this node
  // How long one etcd call may keep retrying through a member failure or an
  // election before it fails.
  absl::Duration request_timeout = absl::Seconds(5);
  // How long start-up waits for etcd.
  absl::Duration dial_timeout = absl::Seconds(10);
  // The node's own lease in <prefix>member/.
  absl::Duration node_lease = absl::Seconds(5);
};

class ClusterLink {
 public:
  // Watch events and lost leases reach the listener on the link's threads.
  using Listener = BackendListener;

  // Connects (waiting up to dial_timeout for etcd to answer), registers the
  // node and starts the streams.
  static absl::StatusOr<std::unique_ptr<ClusterLink>> Start(ClusterOptions options,
                                                            Listener* listener);
  ~ClusterLink();

  // Stops the threads and withdraws the node's membership. Sessions'
  // leases are left to live on, so clients can resume on other nodes.
  void Shutdown();

  const ClusterOptions& options() const;
  // The cluster's identity for clients: name, etcd cluster id and prefix.
  const std::string& identity() const;
  // Config entries in etcd, for the registry's config calls.
  std::unique_ptr<RegistryStore> NewConfigStore();

  // ---- asynchronous; run in call order; `done` runs on the writer thread ----
  struct Opened {
    uint64_t session_id = 0;
    uint64_t record_revision = 0;  // of <prefix>session/<id>, for Publish and Unpublish
  };
  using SessionDone = std::function<void(absl::StatusOr<Opened>)>;
  void OpenSession(int64_t ttl_seconds, const v1::SessionRecord& record, SessionDone done);
  // The publications still under the session's lease; NOT_FOUND if it lapsed.
  struct Resumed {
    int64_t ttl_seconds = 0;
    uint64_t record_revision = 0;                                   // as Opened::record_revision
    std::vector<std::pair<std::string, std::string>> publications;  // (service, address)
  };
  void ResumeSession(uint64_t session_id, const v1::SessionRecord& record,
                     std::function<void(absl::StatusOr<Resumed>)> done);
  // Publish and Unpublish change nothing, and end FAILED_PRECONDITION, once
  // the session was resumed since `record_revision` (by another node), so a
  // node's late writes never undo what the client did elsewhere; NOT_FOUND
  // once its lease is gone.
  void Publish(uint64_t session_id, uint64_t record_revision, const v1::Instance& instance,
               std::function<void(absl::Status)> done);
  // Deletes the instance if this session still holds it.
  void Unpublish(uint64_t session_id, uint64_t record_revision, const std::string& service,
                 const std::string& address, std::function<void(absl::Status)> done);
  // Revokes the lease: its publications go at once.
  void CloseSession(uint64_t session_id);
  // Renews the session's lease; `renewed` (if any) runs on the keep-alive
  // reader once etcd answered this renewal with the lease alive, and never
  // when it did not answer (the stream broke) or the lease is gone.
  void KeepAlive(uint64_t session_id, std::function<void()> renewed = nullptr);
  // Whether etcd answered this node's keep-alives within the last 1.5 s
  // (the node renews its own lease every 400 ms).
  bool Reachable() const;

  void WatchService(const std::string& service);
  void UnwatchService(const std::string& service);
  void WatchConfig(const std::string& key);
  void UnwatchConfig(const std::string& key);

  // ---- synchronous reads, for operator views ----
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out);
  absl::Status ListServices(v1::ListServicesResponse* out);
  absl::Status Describe(v1::ClusterInfo* out);

  // Tests only: the next `n` etcd transaction replies are lost after etcd
  // applied them (the call then retries, as after a broken connection).
  void DropTxnRepliesForTesting(int n);
  // Tests only: ends the etcd watch stream; the next one runs `hold` (on
  // the watch thread) after it is up and before it creates the watches.
  void BreakWatchStreamForTesting(std::function<void()> hold);

  class Impl;

 private:
  explicit ClusterLink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::registry
