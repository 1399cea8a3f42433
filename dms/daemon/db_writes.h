// DbWrites: where dmsd's RocksDB writes go (GroupProgress, MetaStore). A
// single dmsd writes straight into its database; a member of a replicated
// broker group (docs/ha.md) proposes each batch to the group's Raft log,
// whose Apply writes it on every member. A group leader's engines get one
// bound to its term: a batch is never appended in another term (refused,
// UNAVAILABLE), so a stale engine cannot move committed state back.
// Implementations are thread-safe.
#pragma once

#include "absl/status/status.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace formica::dms {

class DbWrites {
 public:
  virtual ~DbWrites() = default;
  // Writes `batch` into `db`; with `sync`, durable on return. A batch holds
  // blind puts and deletes only (no merge), so applying it again is safe.
  virtual absl::Status Write(rocksdb::DB* db, rocksdb::WriteBatch* batch, bool sync) = 0;
  // True when every Write is durable on return whatever `sync` says (the
  // group's log holds it), so callers need no WAL sync of their own.
  virtual bool durable() const = 0;
};

// Straight into the database (WriteOptions.sync = sync). Never null.
DbWrites* DirectDbWrites();

}  // namespace formica::dms
