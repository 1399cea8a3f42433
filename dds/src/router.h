// Router: where a statement on logical tables runs. Users are split into
// 100 logical shards by the last two digits of their id; each logical shard
// lives in one physical database, in tables named <logical>_<shard, 2
// digits>. The router finds the shard key in the statement (WHERE col = v,
// col IN (...), INSERT values, UPDATE and DELETE), rewrites logical table
// names to physical ones, and returns one statement per shard it must run
// on: one for a keyed statement, one per shard touched by a multi-row
// INSERT, every shard when no key is given. What it cannot route right is
// refused with a clear error, never run wrong. Thread-safe; each distinct
// statement text is parsed once.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace formica::dds {

inline constexpr int kLogicalShards = 100;

struct RouterConfig {
  // Sharded logical tables: name -> shard column (the user id).
  std::map<std::string, std::string> sharded_tables;
  // Copied to every database: never renamed, joinable with anything.
  std::set<std::string> broadcast_tables;
  int databases = 1;  // logical shard s lives in database s * databases / 100
  // UPDATE and DELETE without the shard key are refused (they would touch
  // every shard); false lets them run everywhere.
  bool writes_need_shard_key = true;
};

struct RoutedStatement {
  int shard = 0;     // logical shard 0..99
  int database = 0;  // physical database index
  std::string sql;   // with physical table names
};

// The logical shard of a user id: its last two decimal digits. An id that
// does not end in two digits is INVALID_ARGUMENT.
absl::StatusOr<int> ShardOf(const std::string& user_id);

class Router {
 public:
  // INVALID_ARGUMENT for a config that cannot work (no tables, a table both
  // sharded and broadcast, databases outside 1..100).
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterConfig config);
  ~Router();

  // `params` are the values of $1, $2, ... as text. In shard order.
  absl::StatusOr<std::vector<RoutedStatement>> Route(const std::string& sql,
                                                     const std::vector<std::string>& params) const;

  int DatabaseOf(int shard) const;

  class Impl;

 private:
  explicit Router(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dds
