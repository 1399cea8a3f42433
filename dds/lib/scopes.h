// Scopes: which sharded tables a statement reads, and where.
//
// Each SELECT (the statement's, a subquery's, a derived table's) is a scope:
// the tables of its FROM, its WHERE and its joins' ON conditions. A
// condition constrains the rows of its own scope's tables only: an equality
// of shard columns joins two tables of one scope (both then hold one user's
// rows, so both are in one shard), or ties a table of an inner scope to one
// of an outer scope (a correlated subquery reads the outer row's shard); an
// equality between two outer tables inside a subquery constrains neither.
//
// ScopeScan finds the scopes and their sharded tables; GroupTables puts the
// tables in groups that must read one shard. Used by the router's analysis
// of a statement, once per statement text; not thread-safe (one per call).
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parse_tree.h"
#include "pg_query/pg_query.pb.h"

namespace formica::dds {

// One sharded table named in a FROM (or written by the statement).
struct TableRef {
  std::string table;
  std::string qualifier;  // its alias, or its name
  int scope = 0;
};

struct Scope {
  int parent = -1;
  const pg_query::Node* where = nullptr;
  std::vector<const pg_query::Node*> conditions;  // WHERE and ON, each whole
  std::vector<const pg_query::JoinExpr*> usings;  // joins with USING (...)
  std::map<std::string, int> names;               // FROM item -> TableRef, -1 if not sharded
  std::vector<int> refs;
};

class ScopeScan {
 public:
  // `sharded`: the config's sharded tables (table -> shard column); borrowed.
  explicit ScopeScan(const std::map<std::string, std::string>& sharded) : sharded_(sharded) {}

  // The statement `root`; returns the index of its own scope.
  int Scan(const pg_query::Node& root);

  // The table a column reference seen in `scope` names, if it is that
  // table's shard column.
  std::optional<int> Resolve(const pg_query::Node& n, int scope) const;

  const std::vector<Scope>& scopes() const { return scopes_; }
  const std::vector<TableRef>& refs() const { return refs_; }
  const absl::Status& error() const { return error_; }

 private:
  int NewScope(int parent);
  void AddWhere(const pg_query::Node& where, int scope);
  void Name(const std::string& name, int ref, int scope);
  void Register(const pg_query::RangeVar& rv, int scope);
  void AddFrom(const pg_query::Node& n, int scope);
  // Every SELECT below `m` opens a scope inside `scope`.
  void Visit(const google::protobuf::Message& m, int scope);

  const std::map<std::string, std::string>& sharded_;
  std::vector<Scope> scopes_;
  std::vector<TableRef> refs_;
  std::set<const google::protobuf::Message*> registered_;
  absl::Status error_;
};

// Sharded tables of one scope joined on their shard columns: their rows in
// a result belong to one user, so to one shard.
struct TableGroup {
  const pg_query::Node* where = nullptr;  // its scope's WHERE (keys are read there)
  std::vector<Column> key_columns;        // its tables' shard columns
  std::vector<int> follows;               // outer groups it is correlated with
  bool top = false;                       // in the statement's own scope
  bool tied = false;  // top, or correlated with a tied group: reads its outer rows' shard
  std::string name;   // "orders p", for messages
  Column example;     // one shard column, for messages
};

// The statement's sharded tables (found by `scan`, whose own scope is `top`)
// in groups, outer scopes first: tables of one scope joined on their shard
// columns, and which outer groups each subquery's group is correlated with.
// Returns whether there is one group in the statement's own scope and every
// subquery's tables are correlated with it (directly or through other
// subqueries): right on any shards.
bool GroupTables(const ScopeScan& scan, int top,
                 const std::map<std::string, std::string>& sharded_tables,
                 std::vector<TableGroup>* groups);

}  // namespace formica::dds
