#include "analysis.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "dialect.h"
#include "scatter_plan.h"
#include "shard_keys.h"
#include "shard_map.h"

namespace formica::dds {
namespace {

std::atomic<uint64_t> next_serial{1};

using Tables = std::map<std::string, std::string>;  // sharded table -> shard column

// The statement's kind; only SELECT, INSERT, UPDATE, DELETE and some DDL
// are routed.
absl::Status Classify(const pg_query::Node& root, Analysis* a) {
  if (root.has_transaction_stmt()) {
    return absl::InvalidArgumentError(
        "transaction statements cannot be routed; begin a transaction with the shard key "
        "(ShardedDataSource::Begin)");
  }
  if (root.has_create_stmt() || root.has_index_stmt() || root.has_alter_table_stmt()) {
    a->kind = StatementKind::kDdl;
  } else if (root.has_insert_stmt() || root.has_update_stmt() || root.has_delete_stmt()) {
    a->kind = StatementKind::kWrite;
  } else if (root.has_select_stmt()) {
    a->kind = StatementKind::kRead;
    a->locking = root.select_stmt().locking_clause_size() > 0;
  } else {
    return absl::InvalidArgumentError(
        "only SELECT, INSERT, UPDATE, DELETE, CREATE TABLE, CREATE INDEX and ALTER TABLE can "
        "be routed by shard");
  }
  return absl::OkStatus();
}

// The tables it names: each must be known.
absl::Status FindTables(const RouterConfig& config, Analysis* a) {
  absl::Status unknown;
  ForEach<pg_query::RangeVar>(a->tree, [&](const pg_query::RangeVar& rv) {
    if (config.sharded_tables.count(rv.relname()) > 0) {
      a->sharded.insert(rv.relname());
    } else if (config.broadcast_tables.count(rv.relname()) == 0 && unknown.ok()) {
      unknown = absl::InvalidArgumentError(absl::StrCat(
          "unknown table '", rv.relname(), "': it is neither sharded nor broadcast in the config"));
    }
  });
  return unknown;
}

// A common table expression is named like a table; refuse rather than guess.
absl::Status RefuseWith(const pg_query::Node& root) {
  if ((root.has_select_stmt() && root.select_stmt().has_with_clause()) ||
      (root.has_insert_stmt() && root.insert_stmt().has_with_clause()) ||
      (root.has_update_stmt() && root.update_stmt().has_with_clause()) ||
      (root.has_delete_stmt() && root.delete_stmt().has_with_clause())) {
    return absl::InvalidArgumentError("WITH queries cannot be routed by shard");
  }
  return absl::OkStatus();
}

// A broadcast table's copies must change alike: a write to one that
// also reads sharded tables would differ database by database.
absl::Status CheckBroadcastWrite(const Tables& sharded, const pg_query::Node& root,
                                 const std::vector<TableRef>& refs) {
  if (!refs.empty() && (root.has_update_stmt() || root.has_delete_stmt())) {
    const std::string& target = root.has_update_stmt() ? root.update_stmt().relation().relname()
                                                       : root.delete_stmt().relation().relname();
    if (sharded.count(target) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a write to broadcast table ", target,
          " may not read sharded tables: its copies in every database must change alike"));
    }
  }
  return absl::OkStatus();
}

// A row's shard column is never changed: the row would belong to another shard.
absl::Status CheckOnConflictKeepsShard(const Tables& sharded, const pg_query::Node& root) {
  if (root.has_insert_stmt() && root.insert_stmt().has_on_conflict_clause()) {
    auto it = sharded.find(root.insert_stmt().relation().relname());
    for (const pg_query::Node& t : root.insert_stmt().on_conflict_clause().target_list()) {
      if (it != sharded.end() && t.has_res_target() && t.res_target().name() == it->second) {
        return absl::InvalidArgumentError(
            absl::StrCat("ON CONFLICT DO UPDATE may not change the shard column ", it->first, ".",
                         it->second, ": the row would belong to another shard"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckUpdateKeepsShard(const Tables& sharded, const pg_query::Node& root) {
  if (root.has_update_stmt()) {
    const std::string& table = root.update_stmt().relation().relname();
    auto it = sharded.find(table);
    for (const pg_query::Node& t : root.update_stmt().target_list()) {
      if (it != sharded.end() && t.has_res_target() && t.res_target().name() == it->second) {
        return absl::InvalidArgumentError(absl::StrCat("UPDATE may not change the shard column ",
                                                       table, ".", it->second,
                                                       ": the row would belong to another shard"));
      }
    }
  }
  return absl::OkStatus();
}

// Rows are split by shard only when given as VALUES.
absl::Status CheckInsertValues(const pg_query::Node& root) {
  if (root.has_insert_stmt() &&
      !(root.insert_stmt().select_stmt().has_select_stmt() &&
        root.insert_stmt().select_stmt().select_stmt().values_lists_size() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "INSERT into ", root.insert_stmt().relation().relname(), " must give its rows as VALUES"));
  }
  return absl::OkStatus();
}

bool Binding(const RouterConfig& config, const std::string& a, const std::string& b) {
  if (a == b) return true;
  for (const std::set<std::string>& g : config.binding_groups) {
    if (g.count(a) > 0 && g.count(b) > 0) return true;
  }
  return false;
}

// Sharded tables are joined only with tables bound to them; the shard
// columns of the statement's own scope are where its key may be given.
absl::Status CheckJoins(const RouterConfig& config, const pg_query::Node& root,
                        const std::vector<TableRef>& refs, int top, Analysis* a) {
  if (root.has_insert_stmt() && refs.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "INSERT into ", root.insert_stmt().relation().relname(),
        " may not read sharded tables: its rows are split by shard; read first, then insert"));
  }
  for (const TableRef& r : refs) {
    if (!Binding(config, refs[0].table, r.table)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the statement joins sharded tables ", refs[0].table, " and ", r.table,
          ", which are not binding tables; join sharded tables only if the config binds them, "
          "and otherwise only with broadcast tables"));
    }
    // A qualified key must name this table (or its alias): a broadcast
    // table's column of the same name is no shard key.
    if (r.scope == top) a->key_columns.push_back({r.qualifier, config.sharded_tables.at(r.table)});
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t NextSerial() { return next_serial.fetch_add(1); }

const pg_query::Node* WhereOf(const pg_query::Node& root) {
  if (root.has_update_stmt() && root.update_stmt().has_where_clause()) {
    return &root.update_stmt().where_clause();
  }
  if (root.has_delete_stmt() && root.delete_stmt().has_where_clause()) {
    return &root.delete_stmt().where_clause();
  }
  if (root.has_select_stmt() && root.select_stmt().has_where_clause()) {
    return &root.select_stmt().where_clause();
  }
  return nullptr;
}

absl::Status Analyze(const RouterConfig& config, Analysis* a) {
  const pg_query::Node& root = a->tree.stmts(0).stmt();
  if (absl::Status st = Classify(root, a); !st.ok()) return st;
  if (absl::Status st = FindTables(config, a); !st.ok()) return st;
  if (absl::Status st = RefuseWith(root); !st.ok()) return st;
  ScopeScan scan(config.sharded_tables);
  const int top = scan.Scan(root);
  if (!scan.error().ok()) return scan.error();
  const std::vector<TableRef>& refs = scan.refs();
  if (absl::Status st = CheckBroadcastWrite(config.sharded_tables, root, refs); !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckOnConflictKeepsShard(config.sharded_tables, root); !st.ok()) {
    return st;
  }
  a->broadcast_only = refs.empty();
  if (config.sqlite) {
    if (absl::Status st = CheckSqliteCasts(a->tree, a->sql); !st.ok()) return st;
  }
  ForEach<pg_query::ParamRef>(
      a->tree, [&](const pg_query::ParamRef& p) { a->params_used.push_back(p.number()); });
  Normalize(&a->params_used);

  if (absl::Status st = CheckInsertValues(root); !st.ok()) return st;
  if (absl::Status st = CheckUpdateKeepsShard(config.sharded_tables, root); !st.ok()) return st;
  if (absl::Status st = CheckJoins(config, root, refs, top, a); !st.ok()) return st;
  a->single = GroupTables(scan, top, config.sharded_tables, &a->groups);
  if (const pg_query::Node* where = WhereOf(root);
      where != nullptr && !a->broadcast_only && a->single) {
    a->key_param = KeyParam(a->key_columns, *where);
  }
  if (a->kind == StatementKind::kRead && !a->broadcast_only) {
    a->scatter_error = PlanScatter(config, a);
  }
  return absl::OkStatus();
}

}  // namespace formica::dds
