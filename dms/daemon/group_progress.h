// GroupProgress: what each consumer group has acknowledged in each queue,
// on disk (RocksDB, synced; concurrent acks share a sync). The broker
// confirms an ack only after Ack returns, so an acknowledged message is
// never delivered again after a crash. A queue's committed offset never
// goes back, whatever order its acks arrive in; syncs are shared. Kept per (group, topic, queue):
// the committed offset (everything below is acked) and the acks above it, which fold into the
// committed offset as the gaps fill. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "db_writes.h"

namespace rocksdb {
class DB;
}

namespace formica::dms {

struct QueueProgress {
  uint64_t committed = 0;
  std::set<uint64_t> acked;  // above committed
  bool known = false;        // the group has acked something in this queue
};

// A queue some group has progress in.
struct GroupQueue {
  std::string group;
  std::string topic;
  int queue = 0;
};

class GroupProgress {
 public:
  // FAILED_PRECONDITION when the store cannot be opened (e.g. in use).
  static absl::StatusOr<std::unique_ptr<GroupProgress>> Open(const std::string& dir);
  // Over a database opened elsewhere, writing through `writes` (both
  // borrowed): a replicated broker group's store (docs/ha.md).
  static std::unique_ptr<GroupProgress> Over(rocksdb::DB* db, DbWrites* writes);
  ~GroupProgress();

  absl::StatusOr<QueueProgress> Load(const std::string& group, const std::string& topic, int queue);

  // Every (group, topic, queue) with progress on disk.
  absl::StatusOr<std::vector<GroupQueue>> Queues();

  // Records the ack of `offset`, and `committed` (the cursor's committed
  // offset after it): acks below it are folded away. Durable on return.
  absl::Status Ack(const std::string& group, const std::string& topic, int queue, uint64_t offset,
                   uint64_t committed);
  // The same for several offsets of one queue, in one write and one sync.
  absl::Status Ack(const std::string& group, const std::string& topic, int queue,
                   const std::vector<uint64_t>& offsets, uint64_t committed);
  // The same for several queues of one topic, in one write (one entry of a
  // broker group's log) and one sync.
  struct QueueAcks {
    std::vector<uint64_t> offsets;
    uint64_t committed = 0;
  };
  absl::Status AckQueues(const std::string& group, const std::string& topic,
                         const std::map<int, QueueAcks>& acks);

 private:
  struct QueueState {
    absl::Mutex mu;
    bool loaded ABSL_GUARDED_BY(mu) = false;
    uint64_t committed ABSL_GUARDED_BY(mu) = 0;  // the highest written
  };
  GroupProgress(std::unique_ptr<rocksdb::DB> owned, rocksdb::DB* db, DbWrites* writes);
  // Writes the queues' acks in one batch (not synced); returns the write's
  // number.
  absl::StatusOr<uint64_t> Write(const std::string& group, const std::string& topic,
                                 const std::map<int, QueueAcks>& acks)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;  // locks each queue's state in turn
  absl::Status SyncThrough(uint64_t write);
  QueueState& StateFor(const std::string& queue_key);

  std::unique_ptr<rocksdb::DB> owned_;
  rocksdb::DB* db_;
  DbWrites* writes_;
  absl::Mutex states_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<QueueState>> states_ ABSL_GUARDED_BY(states_mu_);
  absl::Mutex sync_mu_;
  uint64_t written_ ABSL_GUARDED_BY(sync_mu_) = 0;  // writes made
  uint64_t synced_ ABSL_GUARDED_BY(sync_mu_) = 0;   // writes covered by a WAL sync
  bool syncing_ ABSL_GUARDED_BY(sync_mu_) = false;
};

}  // namespace formica::dms
