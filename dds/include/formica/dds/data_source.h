// formica::dds::ShardedDataSource — plain SQL on logical tables, run on the
// physical databases that hold each user's shard.
//
//   auto ds = dds::ShardedDataSource::Open(dds::LoadDataSourceConfig("fund-dds.yaml").value());
//   (*ds)->Execute("INSERT INTO orders (id, user_id, amount) VALUES ($1, $2, $3)",
//                  {order_id, user_id, int64_t{500}});
//   auto rows = (*ds)->Execute("SELECT id, amount FROM orders WHERE user_id = $1", {user_id});
//   auto top = (*ds)->Execute("SELECT user_id, sum(amount) FROM orders GROUP BY user_id "
//                             "ORDER BY 2 DESC LIMIT 10");       // every shard, merged
//
//   auto tx = (*ds)->Begin(user_id);                 // one shard's database
//   (*tx)->Execute("UPDATE accounts SET balance = balance - $2 WHERE user_id = $1", {user_id,
//   500});
//   (*tx)->Execute("INSERT INTO orders (...) VALUES (...)", {...});
//   (*tx)->Commit();
//
// A statement with the shard key (WHERE col = $n, col IN (...), INSERT
// values) runs on its shard's table; one without it runs on every shard in
// parallel and the results are merged (ORDER BY, LIMIT/OFFSET, COUNT, SUM,
// MIN, MAX, AVG, GROUP BY, DISTINCT), text compared by the collation the
// database compares it by and sums added in its arithmetic. What cannot be
// run right is refused with INVALID_ARGUMENT naming why, and nothing runs;
// text whose collation DDS cannot compare by exactly (a locale's, ICU's) is
// refused with UNIMPLEMENTED naming the column and the collation. A write that spans
// shards outside a transaction commits shard by shard (its error names the
// shards already written); atomic cross-shard writes are DTS's business.
// Reads outside a transaction go to a replica when the database has any,
// unless ExecuteOptions::primary is set. Thread-safe; a Transaction is used
// by one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "formica/dds/value.h"
#include "formica/dds/write_gate.h"

namespace formica::dds {

// Value, ResultSet and ShardFunction are in formica/dds/value.h.

enum class DatabaseKind { kSqlite, kPostgres };

struct DatabaseConfig {
  std::string name;
  DatabaseKind kind = DatabaseKind::kSqlite;
  // SQLite: a file path (created if missing). PostgreSQL: a libpq
  // connection string ("host=127.0.0.1 port=5432 dbname=fund0 user=fund").
  std::string target;
  std::vector<std::string> replicas;  // read-only copies, same kind
  int pool = 8;                       // connections kept per database and replica
  // The logical shards this database holds; when every database leaves it
  // empty, shards are split evenly in the order databases are listed.
  std::vector<int> shards;
};

struct DataSourceConfig {
  std::vector<DatabaseConfig> databases;
  int shards = 100;  // logical shards
  ShardFunction function = ShardFunction::kLastTwoDigits;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // kRange: shard s holds [first, second]
  // Physical table of a logical table in shard s: <table><suffix>, where
  // "{shard}" in the suffix is s with two digits (more when shards > 100).
  // An empty suffix keeps the logical name (one table per database).
  std::string table_suffix = "_{shard}";
  std::map<std::string, std::string> sharded_tables;  // table -> shard column
  // Groups of sharded tables sharded alike (by the same user id), which may
  // be joined on their shard columns within a shard.
  std::vector<std::set<std::string>> binding_groups;
  std::set<std::string> broadcast_tables;       // the same rows in every database
  bool writes_need_shard_key = true;            // UPDATE/DELETE without the key refused
  int fanout = 8;                               // statements of one scatter run at once
  absl::Duration pool_wait = absl::Seconds(5);  // longest wait for a free connection
  // Set in code, not in YAML: asked before every write (INSERT, UPDATE,
  // DELETE, alone or in a transaction) to a sharded table, once per shard
  // written; the write runs while its passes live (a transaction's until it
  // ends). Null: every write runs. Needs the last_two_digits function.
  // LDC's ldc::ZoneWriteGate is one (docs/ldc.md).
  std::shared_ptr<WriteGate> write_gate;
};

// Reads the `dds:` section of a YAML file (see docs/dds.md). INVALID_ARGUMENT
// naming the file, line and key for anything wrong or unknown.
absl::StatusOr<DataSourceConfig> LoadDataSourceConfig(const std::string& path);
absl::StatusOr<DataSourceConfig> ParseDataSourceConfig(const std::string& yaml,
                                                       const std::string& source = "<inline>");

struct ExecuteOptions {
  bool primary = false;  // read from the primary even when replicas exist
};

class Transaction {
 public:
  virtual ~Transaction() = default;  // rolls back if neither committed nor rolled back
  // Runs on this transaction's database; a statement that routes to
  // another database is refused (FAILED_PRECONDITION) and changes nothing.
  virtual absl::StatusOr<ResultSet> Execute(absl::string_view sql,
                                            absl::Span<const Value> params = {}) = 0;
  virtual absl::Status Commit() = 0;
  virtual absl::Status Rollback() = 0;
  virtual int shard() const = 0;
  virtual const std::string& database() const = 0;
};

class ShardedDataSource {
 public:
  // Opens connections to every database. INVALID_ARGUMENT for a config that
  // cannot work, UNAVAILABLE when a database cannot be reached.
  static absl::StatusOr<std::unique_ptr<ShardedDataSource>> Open(DataSourceConfig config);
  virtual ~ShardedDataSource() = default;

  // Runs one statement. DDL (CREATE TABLE, CREATE INDEX, ALTER TABLE) on a
  // sharded table runs once per physical table, on a broadcast table once
  // per database. `params` are the values of $1, $2, ...: a braced list
  // ({user_id, amount}) or a std::vector<Value>, read during the call only.
  virtual absl::StatusOr<ResultSet> Execute(absl::string_view sql,
                                            absl::Span<const Value> params = {},
                                            const ExecuteOptions& options = {}) = 0;
  // A local transaction on the database of `shard_key`'s shard.
  virtual absl::StatusOr<std::unique_ptr<Transaction>> Begin(const Value& shard_key) = 0;

  // The logical shard of an id, and the database holding it.
  virtual absl::StatusOr<int> ShardOf(const Value& shard_key) const = 0;
  virtual const std::string& DatabaseOf(int shard) const = 0;
};

}  // namespace formica::dds
