// Broker: the heart of dmsd. Serves formica.dms.v1.Broker over the engines
// (TopicCatalog, ProduceEngine, ConsumerGroups, DeadLetters, Housekeeping,
// Transactions; see broker.cc): produce answered after fsync,
// deduplication by producer keys, consumer groups streamed with flow
// control, delayed messages, retries and dead letters, retention and the
// disk watermark.
//
//   auto broker = Broker::Start(options).value();
//   ...                   // serves formica.dms.v1.Broker, published to DSR
//   broker->Shutdown();   // ends consumer streams, unpublishes, drains
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/common/clock.h"
#include "formica/internal/raft_node.h"
#include "transactions.h"

namespace formica {
class Config;
}

namespace rocksdb {
class DB;
}

namespace formica::dms {

class BrokerGroup;
class DbWrites;
class SharedTopics;

// The stores of a replicated broker group's member (BrokerGroup), which the
// leader's engines run over; all borrowed.
struct BrokerStores {
  rocksdb::DB* progress = nullptr;
  rocksdb::DB* meta = nullptr;
  DbWrites* writes = nullptr;  // through the group's Raft log
  SharedTopics* topics = nullptr;
};

struct BrokerOptions {
  // The broker group this dmsd serves (config key `broker_group`,
  // docs/dms.md): "" is the default group, published as
  // formica.dms.v1.Broker; a named one as formica.dms.v1.Broker.<group>.
  std::string group;
  std::string listen = "127.0.0.1:7390";
  std::string advertise_host = "127.0.0.1";
  std::string zone;
  absl::Duration unpublish_grace = absl::Seconds(1);
  absl::Duration drain_timeout = absl::Seconds(5);
  std::vector<std::string> registries = {"127.0.0.1:7370"};
  // Where to serve metrics (docs/metrics.md); "" (the default): not served.
  std::string metrics_listen;

  std::string data_dir = "./dmsd-data";
  bool sync = true;  // storage.flush: sync (fsync before the ack) or async
  int64_t segment_bytes = 64ll << 20;
  // Produce answers RESOURCE_EXHAUSTED while the data directory's file
  // system is fuller than this (0..1); consumers keep working.
  double disk_full_ratio = 0.95;
  // A topic directory that cannot be opened (damaged, or no queue count
  // beside its logs) stops start-up; with this it is moved to
  // <data_dir>/quarantine and dmsd starts without it.
  bool quarantine_damaged_topics = false;

  int default_queues = 8;
  std::map<std::string, int> topics;  // created at start if missing: name -> queues

  int64_t max_body_bytes = 4 << 20;
  int max_batch = 1000;  // messages in one Produce
  absl::Duration max_delay = absl::Hours(24 * 40);
  absl::Duration dedup_window = absl::Minutes(10);

  absl::Duration ack_timeout = absl::Seconds(30);
  int max_attempts = 16;
  absl::Duration retry_initial = absl::Seconds(1);
  absl::Duration retry_max = absl::Hours(2);

  absl::Duration retention_age = absl::Hours(72);  // whole segments older than this go
  int64_t retention_bytes = 0;                     // per queue; 0: no size limit
  absl::Duration housekeeping_interval = absl::Seconds(10);

  TransactionOptions transactions;

  // Where the broker's engines take the time from (borrowed; nullptr: the
  // wall clock).
  Clock* clock = nullptr;

  // The `raft` section (docs/ha.md): set, dmsd is a member of a replicated
  // broker group (BrokerGroup); unset, a single dmsd.
  std::optional<RaftNodeOptions> raft;
  // Set by BrokerGroup for the broker its leader starts (borrowed).
  const BrokerStores* stores = nullptr;
};

// Reads BrokerOptions from a config (see deploy/dmsd.yaml). INVALID_ARGUMENT
// names the file, line, key and reason.
absl::StatusOr<BrokerOptions> LoadBrokerOptions(const Config& config);

class Broker {
 public:
  static absl::StatusOr<std::unique_ptr<Broker>> Start(BrokerOptions options);
  ~Broker();

  int port() const;
  // Ends consumer streams, unpublishes, drains calls, stops. Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit Broker(std::unique_ptr<Impl> impl);
  explicit Broker(std::unique_ptr<BrokerGroup> group);
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<BrokerGroup> group_;  // replicated mode
};

}  // namespace formica::dms
