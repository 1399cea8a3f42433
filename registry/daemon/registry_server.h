// The registry daemon: the gRPC Registry service (registry_service.h) over
// RegistryCore (sessions, leases, merged and acknowledged pushes, warm-up
// after restart, the operator's stop-push switch) and one RegistryBackend
// (embedded RocksDB or etcd). dsrd's main() is a thin wrapper over
// RegistryServer; tests may also run it in-process.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster_link.h"
#include "validation.h"

namespace formica {
class Clock;
class Config;
}  // namespace formica

namespace formica::registry {

struct RegistryServerOptions {
  std::string listen = "127.0.0.1:7370";
  std::string data_dir = "./data/dsrd";
  std::string registry_id;  // shown to clients; defaults to `listen`

  // "rocksdb": embedded, one node. "etcd": cluster mode, the data in etcd
  // (cluster.endpoints etc.); registry_id is the node's id in the cluster.
  std::string engine = "rocksdb";
  ClusterOptions cluster;

  absl::Duration default_lease = absl::Seconds(10);
  absl::Duration min_lease = absl::Milliseconds(500);
  absl::Duration max_lease = absl::Minutes(5);

  // The first change after a quiet period is pushed at once; changes within
  // `merge_window` after a push are merged into the next one.
  absl::Duration merge_window = absl::Milliseconds(20);
  // An unacknowledged push is sent again (newest snapshot) after this.
  absl::Duration push_retry = absl::Seconds(1);
  // After start, no push at all for this long, so clients can republish
  // (no empty or partial list). Negative: one default lease in embedded
  // mode, none in cluster mode (etcd kept the publications).
  absl::Duration warmup = absl::Seconds(-1);
  // How often leases and retries are checked.
  absl::Duration sweep_interval = absl::Milliseconds(50);

  absl::Duration keepalive_time = absl::Seconds(10);
  absl::Duration keepalive_timeout = absl::Seconds(5);
  absl::Duration shutdown_grace = absl::Seconds(2);
  // Where to serve metrics (docs/metrics.md); "" (the default): not served.
  std::string metrics_listen;

  Limits limits;
  Clock* clock = nullptr;  // borrowed; null = the real clock
};

// Reads RegistryServerOptions from a Config (see deploy/dsrd.yaml).
// INVALID_ARGUMENT names the key and the reason.
absl::StatusOr<RegistryServerOptions> LoadRegistryServerOptions(const Config& config);

class RegistryServer {
 public:
  // Opens the store and starts serving. Fails with a clear error if the port
  // is taken or the store cannot be opened.
  static absl::StatusOr<std::unique_ptr<RegistryServer>> Start(RegistryServerOptions options);
  ~RegistryServer();

  // The bound port (useful with "host:0").
  int port() const;

  // Ends every session stream, stops serving within `shutdown_grace`, closes
  // the store. Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit RegistryServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::registry
