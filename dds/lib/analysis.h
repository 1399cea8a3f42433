// What a statement text is, worked out once by the router (Analyze): its
// tree, what it touches, whether it is refused whatever its parameters,
// where its shard key may be found, and for a read that may span tables,
// how it is merged. An Analysis is shared by every call with the same text;
// its fields are written by Analyze only, before it is shared, except the
// statements made for it (under `mu`, see below).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "merge.h"
#include "parse_tree.h"
#include "pg_query/pg_query.pb.h"
#include "router.h"
#include "scopes.h"
#include "statement_writer.h"

namespace formica::dds {

// A number never handed out before in this process (from 1): names
// analyses' texts and routers apart.
uint64_t NextSerial();

struct Analysis {
  absl::Status error;  // the statement is refused whatever its parameters
  std::string sql;
  pg_query::ParseResult tree;
  StatementKind kind = StatementKind::kRead;
  bool locking = false;
  bool broadcast_only = false;
  std::set<std::string> sharded;  // the sharded tables it names
  // Shard columns a key may be given on in the statement's own WHERE:
  // its own scope's sharded tables (qualifier: alias or name).
  std::vector<Column> key_columns;
  // The groups of sharded tables it reads, outer scopes first. Unless
  // `single`, each call checks they all read the shard the statement runs on.
  std::vector<TableGroup> groups;
  // One group in the statement's own scope, and every subquery's tables
  // correlated with it (directly or through other subqueries): right on any
  // shards.
  bool single = true;
  // A read over several tables: why it cannot be, or how it is merged.
  absl::Status scatter_error;
  std::shared_ptr<MergePlan> merge;
  pg_query::ParseResult scatter_tree;
  bool limit_per_call = false;  // LIMIT/OFFSET given as parameters
  // The common shape "... WHERE key = $n [AND other conditions]": the key
  // is parameter n, found without reading the tree again (0: not this shape).
  int key_param = 0;
  // The parameters it uses ($n), sorted: all must be given before anything runs.
  std::vector<int> params_used;

  // Each analysis names its texts apart from every other one's (ids).
  const uint64_t serial = NextSerial();

  // std::mutex, not absl::Mutex: this is on every statement's path, and
  // the distribution's abseil checks lock order on each absl::Mutex lock.
  std::mutex mu;
  std::shared_ptr<const Template> plain_template, scatter_template;  // null until made
  // The statement (plain or scattered) on each target, null until made;
  // once set never changed, so read without the lock. Owned by `made`.
  std::unique_ptr<std::atomic<const RoutedStatement*>[]> plain_statement, scatter_statement;
  std::vector<std::unique_ptr<const RoutedStatement>> made;  // guarded by mu
};

// Fills `a` from a->sql and a->tree (one parsed statement) under `config`.
// Returns why the statement is refused whatever its parameters (stored by
// the caller in a->error), OK otherwise.
absl::Status Analyze(const RouterConfig& config, Analysis* a);

// The WHERE clause of an UPDATE, DELETE or SELECT statement; null if none.
const pg_query::Node* WhereOf(const pg_query::Node& root);

}  // namespace formica::dds
