// The meta store: dmsd's RocksDB beside the topics (<data_dir>/meta). It
// holds the dedup index and the dead letters (DedupStore, DeadLetterStore)
// and the half messages of Transactions, which uses the database itself.
//
// Keys (Transactions keeps its own under h/ and f/):
//   d/<topic>\0<dedup key>                      -> "<queue> <offset> <born ms>"
//   m/<topic>\0<queue>                          -> the queue's dedup mark
//   l/<owner>\0<topic>\0<queue:5>\0<offset:20>  -> DeadLetter
//   q/<topic>\0<queue>                          -> a queue's hold while it moves
//                                                 between broker groups (QueueHolds)
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "db_writes.h"
#include "dead_letter_store.h"
#include "dedup_store.h"

namespace rocksdb {
class DB;
}

namespace formica::dms {

class MetaStore : public DedupStore, public DeadLetterStore {
 public:
  // Opens (creating if needed) the store in `directory`. FAILED_PRECONDITION
  // when it cannot be opened (e.g. another dmsd holds it).
  static absl::StatusOr<std::unique_ptr<MetaStore>> Open(const std::string& directory);
  // Over a database opened elsewhere, writing through `writes` (both
  // borrowed): a replicated broker group's store (docs/ha.md).
  static std::unique_ptr<MetaStore> Over(rocksdb::DB* db, DbWrites* writes);
  ~MetaStore() override;

  // For Transactions, which keeps its records here too. Borrowed.
  rocksdb::DB* db() { return db_; }

  absl::StatusOr<std::optional<DedupEntry>> Find(absl::string_view topic,
                                                 absl::string_view key) override;
  absl::StatusOr<std::optional<uint64_t>> Mark(absl::string_view topic, int queue) override;
  absl::Status Index(absl::string_view topic,
                     const std::vector<std::pair<std::string, DedupEntry>>& entries,
                     const std::map<int, uint64_t>& marks) override;
  absl::StatusOr<size_t> ForgetFrom(absl::string_view topic,
                                    const std::map<int, uint64_t>& lost_from) override;
  void Sweep(int64_t oldest_unix_ms) override;

  absl::Status Put(absl::string_view owner, const v1::DeadLetter& letter) override;
  absl::Status PutMany(const std::vector<LetterEntry>& letters) override;
  absl::Status Remove(absl::string_view owner, absl::string_view topic,
                      const std::vector<std::pair<int, uint64_t>>& refs) override;
  absl::Status List(absl::string_view group, absl::string_view topic, size_t limit,
                    std::vector<LetterEntry>* out) override;
  absl::Status ListOwned(absl::string_view owner, absl::string_view topic,
                         std::vector<LetterEntry>* out) override;

  // A queue's hold (QueueHolds): written durably; an empty `value` removes it.
  struct HoldRecord {
    std::string topic;
    int queue = 0;
    std::string value;
  };
  absl::Status PutHold(absl::string_view topic, int queue, absl::string_view value);
  absl::StatusOr<std::vector<HoldRecord>> Holds();

 private:
  MetaStore(std::unique_ptr<rocksdb::DB> owned, rocksdb::DB* db, DbWrites* writes);
  std::unique_ptr<rocksdb::DB> owned_;
  rocksdb::DB* db_;
  DbWrites* writes_;
};

}  // namespace formica::dms
