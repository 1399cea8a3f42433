// Reads dmsd's configuration (see deploy/dmsd.yaml) into BrokerOptions.
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "broker.h"
#include "dms_names.h"
#include "formica/common/config.h"
#include "formica/internal/dms_placement.h"
#include "formica/internal/server_options.h"

namespace formica::dms {
namespace {

// raft.snapshot_trailing's floor for dmsd (docs/ha.md).
constexpr int64_t kMinSnapshotTrailing = 256;

}  // namespace

absl::StatusOr<BrokerOptions> LoadBrokerOptions(const Config& config) {
  BrokerOptions o;
  ConfigReader r(config);
  ServerSection server = ReadServerSectionInto(r, &o);
  o.group = r.String("broker_group", "");
  if (!o.group.empty()) {
    if (absl::Status st = ValidBrokerGroup("broker_group", o.group); !st.ok()) {
      r.Fail("broker_group", st.message());
    }
  }
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  std::string flush = r.String("storage.flush", "sync");
  if (flush == "sync") {
    o.sync = true;
  } else if (flush == "async") {
    o.sync = false;
  } else {
    r.Fail("storage.flush", absl::StrCat("expected 'sync' or 'async', got '", flush, "'"));
  }
  o.segment_bytes = r.Bytes("storage.segment_bytes", o.segment_bytes, 4096, 1ll << 34);
  o.quarantine_damaged_topics =
      r.Bool("storage.quarantine_damaged_topics", o.quarantine_damaged_topics);
  std::string ratio = r.String("storage.disk_full_ratio", "0.95");
  if (!absl::SimpleAtod(ratio, &o.disk_full_ratio) || o.disk_full_ratio <= 0 ||
      o.disk_full_ratio > 1) {
    r.Fail("storage.disk_full_ratio",
           absl::StrCat("expected a fraction in (0, 1], got '", ratio, "'"));
  }
  o.retention_age =
      r.Duration("retention.max_age", o.retention_age, absl::Seconds(1), absl::Hours(24 * 3660));
  o.retention_bytes = r.Bytes("retention.max_bytes_per_queue", o.retention_bytes, 0, 1ll << 50);
  o.housekeeping_interval = r.Duration("retention.check_interval", o.housekeeping_interval,
                                       absl::Milliseconds(100), absl::Hours(24));
  o.default_queues = static_cast<int>(r.Int("topics.default_queues", o.default_queues, 1, 1024));
  for (const std::string& entry : r.StringList("topics.create", {})) {
    std::vector<std::string> parts = absl::StrSplit(entry, ':');
    int queues = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &queues) || queues < 1 || queues > 1024) {
      r.Fail("topics.create",
             absl::StrCat("expected entries NAME:QUEUES (1..1024 queues), got '", entry, "'"));
      break;
    }
    if (absl::Status st = ValidName("topic name", parts[0]); !st.ok()) {
      r.Fail("topics.create", st.message());
      break;
    }
    o.topics[parts[0]] = queues;
  }
  o.max_body_bytes = r.Bytes("limits.max_body_bytes", o.max_body_bytes, 1, 64 << 20);
  o.max_batch = static_cast<int>(r.Int("limits.max_batch", o.max_batch, 1, 100000));
  o.max_delay =
      r.Duration("limits.max_delay", o.max_delay, absl::Seconds(1), absl::Hours(24 * 3660));
  o.dedup_window =
      r.Duration("dedup.window", o.dedup_window, absl::Seconds(1), absl::Hours(24 * 7));
  o.ack_timeout =
      r.Duration("consume.ack_timeout", o.ack_timeout, absl::Milliseconds(10), absl::Hours(24));
  o.max_attempts = static_cast<int>(r.Int("consume.max_attempts", o.max_attempts, 1, 1000));
  o.retry_initial =
      r.Duration("consume.retry_initial", o.retry_initial, absl::Milliseconds(1), absl::Hours(24));
  TransactionOptions& t = o.transactions;
  t.check_after = r.Duration("transactions.check_after", t.check_after, absl::Milliseconds(10),
                             absl::Hours(24));
  t.check_interval = r.Duration("transactions.check_interval", t.check_interval,
                                absl::Milliseconds(10), absl::Hours(24));
  t.check_interval_max = r.Duration("transactions.check_interval_max", t.check_interval_max,
                                    absl::Milliseconds(10), absl::Hours(24 * 7));
  t.max_checks = static_cast<int>(r.Int("transactions.max_checks", t.max_checks, 1, 10000));
  t.checks_per_second =
      static_cast<int>(r.Int("transactions.checks_per_second", t.checks_per_second, 1, 100000));
  t.participant = r.String("transactions.participant", t.participant);
  t.coordinator_identity = r.String("transactions.coordinator_identity", t.coordinator_identity);
  if (absl::Status st = ValidName("participant name", t.participant); !st.ok()) {
    r.Fail("transactions.participant", st.message());
  }
  o.retry_max =
      r.Duration("consume.retry_max", o.retry_max, absl::Milliseconds(1), absl::Hours(24 * 7));
  if (r.Empty("raft")) {
    // Not silently a single dmsd: the operator meant a group.
    r.Fail("raft.node_id",
           "the raft section is empty: set raft.node_id, raft.peers and raft.data_dir for a "
           "member of a broker group, or remove `raft:` for a single dmsd");
  } else if (!r.Children("raft").empty()) {
    // A replicated broker group (docs/ha.md). A member that falls more
    // than snapshot_trailing entries behind cannot catch up (dmsd does not
    // ship its stores yet), so the leader keeps many, and never few. Its
    // snapshot is a small record of what the stores hold, so sending one
    // again is cheap: a member whose snapshot was dropped (libraft drops
    // one that reaches a member taking its own) gets it again soon.
    RaftNodeOptions raft;
    raft.snapshot_threshold = 4096;
    raft.snapshot_trailing = 65536;
    raft.snapshot_timeout = absl::Seconds(5);
    ReadRaftSection(r, &raft);
    if (raft.snapshot_trailing < kMinSnapshotTrailing) {
      r.Fail("raft.snapshot_trailing",
             absl::StrCat("dmsd needs at least ", kMinSnapshotTrailing,
                          " (a member further behind than this cannot catch up); got ",
                          raft.snapshot_trailing));
    }
    o.raft = std::move(raft);
  }
  CheckServerSection(r, server);
  if (o.retry_max < o.retry_initial) {
    r.Fail("consume.retry_max", "must be at least consume.retry_initial");
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

}  // namespace formica::dms
