// Router: where a statement on logical tables runs. Users are split into
// logical shards by a shard function of their id (the last two digits by
// default); each logical shard lives in one physical database, in tables
// named <logical><suffix>. The router finds the shard key in the statement
// (WHERE col = v, col IN (...), INSERT values, UPDATE and DELETE), rewrites
// logical table names to physical ones, and returns one statement per
// physical table it must run on: one for a keyed statement, one per shard
// touched by a multi-row INSERT, every table when no key is given. A read
// that runs on more than one table comes with its merge plan, and its
// statements are rewritten so the shards' answers can be merged. What it
// cannot route right is refused with a clear error, never run wrong.
// Thread-safe; each distinct statement text is parsed and analysed once.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "formica/dds/value.h"
#include "merge.h"

namespace formica::dds {

struct RouterConfig {
  // Sharded logical tables: name -> shard column (the user id).
  std::map<std::string, std::string> sharded_tables;
  // Tables sharded alike, joinable on their shard columns within a shard.
  std::vector<std::set<std::string>> binding_groups;
  // Copied to every database: never renamed, joinable with anything.
  std::set<std::string> broadcast_tables;
  int shards = 100;
  ShardFunction function = ShardFunction::kLastTwoDigits;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int databases = 1;
  // Logical shard -> database; empty: shard s in database s * databases / shards.
  std::vector<int> shard_database;
  std::string table_suffix = "_{shard}";
  // UPDATE and DELETE without the shard key are refused (they would touch
  // every shard); false lets them run everywhere.
  bool writes_need_shard_key = true;
  bool sqlite = false;  // statements are written for SQLite (no FOR UPDATE)
};

enum class StatementKind { kRead, kWrite, kDdl };

struct RoutedStatement {
  int shard = 0;     // a logical shard the physical table holds; -1: a broadcast table
  int database = 0;  // physical database index
  std::shared_ptr<const std::string> sql;  // with physical table names
  // Names this text for connections' prepared-statement caches: the same id
  // is always the same text; 0 for a text made for this call only.
  uint64_t id = 0;
  // For SQLite, whose named parameters ($n, ?n) cost a search of all the
  // others each (quadratic in their number), parameters are written `?`,
  // numbered by their place in the text: the i-th `?` is $order[i].
  // Null: the i-th is $(i+1), the parameters as given.
  std::shared_ptr<const std::vector<int>> order;
};

// The parameters `s` binds, in its order: `params` itself, or `storage`
// filled in s.order.
absl::Span<const Value> ParamsOf(const RoutedStatement& s, absl::Span<const Value> params,
                                 std::vector<Value>* storage);

struct Routing {
  StatementKind kind = StatementKind::kRead;
  // A read of broadcast tables only: any one database will do.
  bool any_database = false;
  bool locking = false;  // SELECT ... FOR UPDATE/SHARE: the primary
  // One per physical table, in shard order (inline: a keyed statement allocates nothing).
  absl::InlinedVector<RoutedStatement, 1> statements;
  // Set for a read that runs on more than one physical table.
  std::shared_ptr<const MergePlan> merge;
};

// The logical shard of a user id by the last two decimal digits. An id that
// does not end in two digits is INVALID_ARGUMENT.
absl::StatusOr<int> LastTwoDigits(const std::string& user_id);

class Router {
 public:
  // INVALID_ARGUMENT for a config that cannot work.
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterConfig config);
  ~Router();

  // `params` are the values of $1, $2, ...
  absl::StatusOr<Routing> Route(absl::string_view sql, absl::Span<const Value> params) const;

  absl::StatusOr<int> ShardOf(const Value& key) const;
  int DatabaseOf(int shard) const;

  class Impl;

 private:
  explicit Router(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dds
