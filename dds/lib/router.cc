#include "router.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <shared_mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "backend.h"
#include "sql.h"

namespace formica::dds {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
// Shards, sorted, each once. Inline: a keyed statement allocates nothing.
using ShardSet = absl::InlinedVector<int, 4>;

ShardSet Intersect(const ShardSet& a, const ShardSet& b) {
  ShardSet out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

// Sorted, each once.
template <typename Container>
void Normalize(Container* s) {
  std::sort(s->begin(), s->end());
  s->erase(std::unique(s->begin(), s->end()), s->end());
}

std::atomic<uint64_t> next_serial{1};

constexpr size_t kMaxCached = 10000;
constexpr char kHiddenPrefix[] = "__dds_";

// Calls `visit` on every message in `m`'s tree, parents first.
void Walk(Message* m, const std::function<void(Message*)>& visit) {
  visit(m);
  const google::protobuf::Reflection* r = m->GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(*m, f); ++i) Walk(r->MutableRepeatedMessage(m, f, i), visit);
    } else {
      Walk(r->MutableMessage(m, f), visit);
    }
  }
}

template <typename T>
void ForEach(const Message& m, const std::function<void(const T&)>& visit) {
  Walk(const_cast<Message*>(&m), [&](Message* x) {
    if (x->GetDescriptor() == T::descriptor()) visit(*static_cast<const T*>(x));
  });
}

// An expression with its source positions cleared, for comparing two.
std::string Fingerprint(const pg_query::Node& n) {
  pg_query::Node copy = n;
  Walk(&copy, [](Message* m) {
    const FieldDescriptor* f = m->GetDescriptor()->FindFieldByName("location");
    if (f != nullptr && !f->is_repeated()) m->GetReflection()->ClearField(m, f);
  });
  std::string out;
  copy.SerializeToString(&out);
  return out;
}

// A column reference: its qualifier (may be empty) and its name.
struct Column {
  std::string qualifier;
  std::string name;
};

std::optional<Column> ColumnOf(const pg_query::Node& n) {
  if (!n.has_column_ref()) return std::nullopt;
  const auto& f = n.column_ref().fields();
  if (f.empty() || !f[f.size() - 1].has_string()) return std::nullopt;
  Column c;
  c.name = f[f.size() - 1].string().sval();
  if (f.size() >= 2 && f[f.size() - 2].has_string()) c.qualifier = f[f.size() - 2].string().sval();
  return c;
}

bool IsOperator(const pg_query::A_Expr& e, const char* op) {
  return e.kind() == pg_query::AEXPR_OP && e.name_size() == 1 && e.name(0).has_string() &&
         e.name(0).string().sval() == op;
}

// The conjuncts of a condition (a AND b AND c -> a, b, c).
void Conjuncts(const pg_query::Node& n, std::vector<const pg_query::Node*>* out) {
  if (n.has_bool_expr() && n.bool_expr().boolop() == pg_query::AND_EXPR) {
    for (const pg_query::Node& a : n.bool_expr().args()) Conjuncts(a, out);
  } else {
    out->push_back(&n);
  }
}

const char* const kAggregates[] = {"count", "sum", "min", "max", "avg"};

std::optional<MergeOp> AggregateOf(const pg_query::Node& n) {
  if (!n.has_func_call()) return std::nullopt;
  const pg_query::FuncCall& f = n.func_call();
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) {
    return std::nullopt;
  }
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  if (name == "count") return MergeOp::kCount;
  if (name == "sum") return MergeOp::kSum;
  if (name == "min") return MergeOp::kMin;
  if (name == "max") return MergeOp::kMax;
  if (name == "avg") return MergeOp::kAvg;
  return std::nullopt;
}

bool IsAggregateName(const pg_query::FuncCall& f) {
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) return false;
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  for (const char* a : kAggregates) {
    if (name == a) return true;
  }
  return false;
}

// Aggregates whose per-shard results cannot be combined (or that the
// merge does not know): refused over several shards.
bool IsUnmergeableAggregate(const pg_query::FuncCall& f) {
  if (f.agg_within_group() || f.agg_order_size() > 0) return true;
  if (f.funcname_size() == 0 || !f.funcname(f.funcname_size() - 1).has_string()) return false;
  std::string name = absl::AsciiStrToLower(f.funcname(f.funcname_size() - 1).string().sval());
  if (f.agg_star() && name != "count") return true;
  static const char* const kOthers[] = {"string_agg",
                                        "array_agg",
                                        "group_concat",
                                        "total",
                                        "bool_and",
                                        "bool_or",
                                        "every",
                                        "stddev",
                                        "stddev_pop",
                                        "stddev_samp",
                                        "variance",
                                        "var_pop",
                                        "var_samp",
                                        "json_agg",
                                        "jsonb_agg",
                                        "json_object_agg",
                                        "jsonb_object_agg",
                                        "xmlagg",
                                        "bit_and",
                                        "bit_or",
                                        "bit_xor",
                                        "percentile_cont",
                                        "percentile_disc",
                                        "mode",
                                        "corr",
                                        "covar_pop",
                                        "covar_samp",
                                        "regr_avgx",
                                        "regr_avgy",
                                        "regr_count",
                                        "regr_intercept",
                                        "regr_r2",
                                        "regr_slope",
                                        "regr_sxx",
                                        "regr_sxy",
                                        "regr_syy",
                                        "range_agg",
                                        "range_intersect_agg"};
  for (const char* o : kOthers) {
    if (name == o) return true;
  }
  return false;
}

// The last part of a type's name, lower case ("int4" for pg_catalog.int4).
std::string TypeNameOf(const pg_query::TypeName& t) {
  if (t.names_size() == 0 || !t.names(t.names_size() - 1).has_string()) return "";
  return absl::AsciiStrToLower(t.names(t.names_size() - 1).string().sval());
}

bool IsIntegerType(const std::string& name) {
  return name == "int2" || name == "int4" || name == "int8" || name == "integer" || name == "int" ||
         name == "bigint" || name == "smallint";
}

bool IsTextType(const std::string& name) {
  return name == "text" || name == "varchar" || name == "bpchar" || name == "char";
}

// A cast's type as SQLite is to read it in CAST(x AS type). SQLite takes
// any name and gives it an affinity by the words in it (INT: integer;
// CHAR, CLOB, TEXT: text; BLOB: none; REAL, FLOA, DOUB: real; else
// numeric); PostgreSQL's parser renamed the standard types (INTEGER is
// pg_catalog.int4), which are written back as the words a user writes,
// so the affinity is the one the statement's own words give on SQLite.
// Length and precision are dropped: SQLite ignores them.
absl::StatusOr<std::string> SqliteTypeName(const pg_query::TypeName& t) {
  std::string name = TypeNameOf(t);
  if (t.array_bounds_size() > 0 || t.setof() || t.pct_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SQLite has no array or set types: cannot cast to ", name, "[]"));
  }
  bool catalog =
      t.names_size() == 2 && t.names(0).has_string() && t.names(0).string().sval() == "pg_catalog";
  if (catalog) {
    static const std::map<std::string, std::string> kWords = {
        {"int2", "SMALLINT"},       {"int4", "INTEGER"},      {"int8", "BIGINT"},
        {"float4", "REAL"},         {"float8", "REAL"},       {"numeric", "NUMERIC"},
        {"bool", "BOOLEAN"},        {"bpchar", "CHAR"},       {"varchar", "VARCHAR"},
        {"timestamp", "TIMESTAMP"}, {"time", "TIME"},         {"timestamptz", "TIMESTAMPTZ"},
        {"timetz", "TIMETZ"},       {"interval", "INTERVAL"}, {"bit", "BIT"},
        {"varbit", "VARBIT"}};
    auto it = kWords.find(name);
    if (it != kWords.end()) return it->second;
  } else if (t.names_size() == 1 && !name.empty() &&
             std::all_of(name.begin(), name.end(), [](char c) {
               return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
             })) {
    return absl::AsciiStrToUpper(name);
  }
  return absl::InvalidArgumentError(absl::StrCat("SQLite cannot cast to type ", name,
                                                 "; cast to INTEGER, REAL, TEXT, BLOB or NUMERIC"));
}

pg_query::Node IntConst(int64_t v) {
  pg_query::Node n;
  n.mutable_a_const()->mutable_ival()->set_ival(static_cast<int32_t>(v));
  return n;
}

// The expression under CASTs and unary pluses, which SQLite looks through
// for a column's collation.
const pg_query::Node& Peeled(const pg_query::Node& n) {
  if (n.has_type_cast()) return Peeled(n.type_cast().arg());
  if (n.has_a_expr() && IsOperator(n.a_expr(), "+") && !n.a_expr().has_lexpr()) {
    return Peeled(n.a_expr().rexpr());
  }
  return n;
}

// The collation a COLLATE names, "" for none.
std::string CollationName(const pg_query::CollateClause& c) {
  if (c.collname_size() == 0 || !c.collname(c.collname_size() - 1).has_string()) return "";
  return c.collname(c.collname_size() - 1).string().sval();
}

bool IsPlainColumn(const pg_query::Node& n) {
  if (!n.has_column_ref()) return false;
  const auto& f = n.column_ref().fields();
  return !f.empty() && f[f.size() - 1].has_string();
}

// function(arg), as the parser would have read it.
pg_query::Node Call(const char* function, const pg_query::Node& arg) {
  pg_query::Node n;
  pg_query::FuncCall* f = n.mutable_func_call();
  f->add_funcname()->mutable_string()->set_sval(function);
  *f->add_args() = arg;
  f->set_funcformat(pg_query::COERCE_EXPLICIT_CALL);
  f->set_location(-1);
  return n;
}

// arg::text.
pg_query::Node AsText(const pg_query::Node& arg) {
  pg_query::Node n;
  pg_query::TypeCast* c = n.mutable_type_cast();
  *c->mutable_arg() = arg;
  c->mutable_type_name()->add_names()->mutable_string()->set_sval("text");
  c->mutable_type_name()->set_typemod(-1);
  c->mutable_type_name()->set_location(-1);
  c->set_location(-1);
  return n;
}

}  // namespace

absl::StatusOr<int> LastTwoDigits(const std::string& user_id) {
  std::string id(absl::StripAsciiWhitespace(user_id));
  if (id.size() < 2 || !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 1])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 2]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard key '", user_id, "' does not end in two digits"));
  }
  return (id[id.size() - 2] - '0') * 10 + (id[id.size() - 1] - '0');
}

// ---- scopes: which sharded tables a statement reads, and where ----------
//
// Each SELECT (the statement's, a subquery's, a derived table's) is a scope:
// the tables of its FROM, its WHERE and its joins' ON conditions. A
// condition constrains the rows of its own scope's tables only: an equality
// of shard columns joins two tables of one scope (both then hold one user's
// rows, so both are in one shard), or ties a table of an inner scope to one
// of an outer scope (a correlated subquery reads the outer row's shard); an
// equality between two outer tables inside a subquery constrains neither.

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
  explicit ScopeScan(const std::map<std::string, std::string>& sharded) : sharded_(sharded) {}

  // The statement `root`; returns the index of its own scope.
  int Scan(const pg_query::Node& root) {
    if (root.has_select_stmt()) {
      Visit(root.select_stmt(), -1);
      return 0;
    }
    int top = NewScope(-1);
    if (root.has_update_stmt()) {
      const pg_query::UpdateStmt& u = root.update_stmt();
      Register(u.relation(), top);
      for (const pg_query::Node& f : u.from_clause()) AddFrom(f, top);
      if (u.has_where_clause()) AddWhere(u.where_clause(), top);
    } else if (root.has_delete_stmt()) {
      const pg_query::DeleteStmt& d = root.delete_stmt();
      Register(d.relation(), top);
      for (const pg_query::Node& f : d.using_clause()) AddFrom(f, top);
      if (d.has_where_clause()) AddWhere(d.where_clause(), top);
    } else if (root.has_insert_stmt()) {
      Register(root.insert_stmt().relation(), top);
    }
    Visit(root, top);
    return top;
  }

  // The table a column reference seen in `scope` names, if it is that
  // table's shard column.
  std::optional<int> Resolve(const pg_query::Node& n, int scope) const {
    std::optional<Column> c = ColumnOf(n);
    if (!c.has_value()) return std::nullopt;
    for (int s = scope; s >= 0; s = scopes_[s].parent) {
      if (!c->qualifier.empty()) {
        auto it = scopes_[s].names.find(c->qualifier);
        if (it == scopes_[s].names.end()) continue;
        if (it->second < 0 || sharded_.at(refs_[it->second].table) != c->name) {
          return std::nullopt;
        }
        return it->second;
      }
      for (int r : scopes_[s].refs) {
        if (sharded_.at(refs_[r].table) == c->name) return r;
      }
    }
    return std::nullopt;
  }

  const std::vector<Scope>& scopes() const { return scopes_; }
  const std::vector<TableRef>& refs() const { return refs_; }
  const absl::Status& error() const { return error_; }

 private:
  int NewScope(int parent) {
    scopes_.emplace_back();
    scopes_.back().parent = parent;
    return static_cast<int>(scopes_.size()) - 1;
  }

  void AddWhere(const pg_query::Node& where, int scope) {
    scopes_[scope].where = &where;
    scopes_[scope].conditions.push_back(&where);
  }

  void Name(const std::string& name, int ref, int scope) {
    auto [it, fresh] = scopes_[scope].names.emplace(name, ref);
    if (!fresh && ref >= 0 && error_.ok()) {
      error_ = absl::InvalidArgumentError(absl::StrCat("sharded table ", refs_[ref].table,
                                                       " appears twice as '", name,
                                                       "'; give each an alias"));
    }
  }

  void Register(const pg_query::RangeVar& rv, int scope) {
    registered_.insert(&rv);
    std::string name = rv.has_alias() ? rv.alias().aliasname() : rv.relname();
    if (sharded_.count(rv.relname()) == 0) {
      Name(name, -1, scope);
      return;
    }
    refs_.push_back({rv.relname(), name, scope});
    scopes_[scope].refs.push_back(static_cast<int>(refs_.size()) - 1);
    Name(name, static_cast<int>(refs_.size()) - 1, scope);
  }

  void AddFrom(const pg_query::Node& n, int scope) {
    if (n.has_range_var()) {
      Register(n.range_var(), scope);
    } else if (n.has_join_expr()) {
      const pg_query::JoinExpr& j = n.join_expr();
      AddFrom(j.larg(), scope);
      AddFrom(j.rarg(), scope);
      if (j.has_quals()) scopes_[scope].conditions.push_back(&j.quals());
      if (j.using_clause_size() > 0) scopes_[scope].usings.push_back(&j);
      if (j.has_alias()) Name(j.alias().aliasname(), -1, scope);
    } else if (n.has_range_subselect() && n.range_subselect().has_alias()) {
      Name(n.range_subselect().alias().aliasname(), -1, scope);
    } else if (n.has_range_function() && n.range_function().has_alias()) {
      Name(n.range_function().alias().aliasname(), -1, scope);
    }
  }

  // Every SELECT below `m` opens a scope inside `scope`.
  void Visit(const Message& m, int scope) {
    if (m.GetDescriptor() == pg_query::SelectStmt::descriptor()) {
      const auto& select = static_cast<const pg_query::SelectStmt&>(m);
      scope = NewScope(scope);
      for (const pg_query::Node& f : select.from_clause()) AddFrom(f, scope);
      if (select.has_where_clause()) AddWhere(select.where_clause(), scope);
    } else if (m.GetDescriptor() == pg_query::RangeVar::descriptor() && scope >= 0 &&
               registered_.count(&m) == 0) {
      Register(static_cast<const pg_query::RangeVar&>(m), scope);  // DDL
    }
    const google::protobuf::Reflection* r = m.GetReflection();
    std::vector<const FieldDescriptor*> fields;
    r->ListFields(m, &fields);
    for (const FieldDescriptor* f : fields) {
      if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f); ++i) Visit(r->GetRepeatedMessage(m, f, i), scope);
      } else {
        Visit(r->GetMessage(m, f), scope);
      }
    }
  }

  const std::map<std::string, std::string>& sharded_;
  std::vector<Scope> scopes_;
  std::vector<TableRef> refs_;
  std::set<const Message*> registered_;
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

// A statement written out for a backend, with a hole wherever a sharded
// table's (or index's) name goes: pieces[0] holes[0] pieces[1] ... The
// holes hold the logical names; a physical table's text fills them.
struct Template {
  std::vector<std::string> pieces;  // one more than holes
  std::vector<std::string> holes;
  std::shared_ptr<const std::vector<int>> order;  // see RoutedStatement::order
};

// What a statement text is, worked out once: its tree, what it touches,
// and for a read that may span tables, how it is merged.
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
  const uint64_t serial = next_serial.fetch_add(1);

  // std::mutex, not absl::Mutex: this is on every statement's path, and
  // the distribution's abseil checks lock order on each absl::Mutex lock.
  std::mutex mu;
  std::shared_ptr<const Template> plain_template, scatter_template;  // null until made
  // The statement (plain or scattered) on each target, null until made;
  // once set never changed, so read without the lock. Owned by `made`.
  std::unique_ptr<std::atomic<const RoutedStatement*>[]> plain_statement, scatter_statement;
  std::vector<std::unique_ptr<const RoutedStatement>> made;  // guarded by mu
};

class Router::Impl {
 public:
  RouterConfig config;
  std::vector<int> database_of;                  // per shard
  std::vector<std::string> suffix_of;            // per shard
  std::vector<int> target_of;                    // shard -> physical table index
  std::vector<int> target_shard;                 // physical table index -> its first shard
  int width = 2;                                 // digits of a shard number in a suffix
  const uint64_t id = next_serial.fetch_add(1);  // tells routers apart in per-thread caches

  mutable std::shared_mutex mu;  // see Analysis::mu
  mutable absl::flat_hash_map<std::string, std::shared_ptr<Analysis>> cache;
  // Identifiers that the deparser quotes or might (see Spelled).
  mutable std::mutex spelled_mu;
  mutable absl::flat_hash_map<std::string, std::string> spelled;

  absl::Status Init() {
    const RouterConfig& c = config;
    if (c.sharded_tables.empty() && c.broadcast_tables.empty()) {
      return absl::InvalidArgumentError("the DDS config names no tables");
    }
    if (c.shards < 1 || c.shards > 100000) {
      return absl::InvalidArgumentError(absl::StrCat("shards must be 1 to 100000, not ", c.shards));
    }
    if (c.function == ShardFunction::kLastTwoDigits && c.shards != 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("the last-two-digits shard function needs 100 shards, not ", c.shards,
                       "; use the modulo or range function for another count"));
    }
    if (c.function == ShardFunction::kRange) {
      if (static_cast<int>(c.ranges.size()) != c.shards) {
        return absl::InvalidArgumentError(
            absl::StrCat("the range shard function needs one range "
                         "per shard: ",
                         c.ranges.size(), " ranges for ", c.shards, " shards"));
      }
      std::vector<std::pair<int64_t, int64_t>> sorted = c.ranges;
      std::sort(sorted.begin(), sorted.end());
      for (size_t i = 0; i < sorted.size(); ++i) {
        if (sorted[i].first > sorted[i].second) {
          return absl::InvalidArgumentError(absl::StrCat(
              "range ", sorted[i].first, "-", sorted[i].second, " ends before it starts"));
        }
        if (i > 0 && sorted[i].first <= sorted[i - 1].second) {
          return absl::InvalidArgumentError(
              absl::StrCat("ranges ", sorted[i - 1].first, "-", sorted[i - 1].second, " and ",
                           sorted[i].first, "-", sorted[i].second, " overlap"));
        }
      }
    }
    if (c.databases < 1 || c.databases > c.shards) {
      return absl::InvalidArgumentError(
          absl::StrCat("databases must be 1 to ", c.shards, " (the shards), not ", c.databases));
    }
    for (const auto& [table, column] : c.sharded_tables) {
      if (c.broadcast_tables.count(table) > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("table '", table, "' cannot be both sharded and broadcast"));
      }
      if (column.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("table '", table, "' needs a shard column"));
      }
    }
    std::map<std::string, int> group_of;
    for (size_t g = 0; g < c.binding_groups.size(); ++g) {
      for (const std::string& t : c.binding_groups[g]) {
        if (c.sharded_tables.count(t) == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("binding table '", t, "' is not a sharded table"));
        }
        if (!group_of.emplace(t, static_cast<int>(g)).second) {
          return absl::InvalidArgumentError(
              absl::StrCat("table '", t, "' is in more than one binding group"));
        }
      }
    }
    if (c.table_suffix.find_first_of(" \t\"';") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("table_suffix '", c.table_suffix, "' may not hold spaces or quotes"));
    }
    width = std::max<int>(2, static_cast<int>(std::to_string(c.shards - 1).size()));
    if (!c.shard_database.empty()) {
      if (static_cast<int>(c.shard_database.size()) != c.shards) {
        return absl::InternalError("the shard map must cover every shard");
      }
      database_of = c.shard_database;
    } else {
      for (int s = 0; s < c.shards; ++s) {
        database_of.push_back(static_cast<int>(int64_t{s} * c.databases / c.shards));
      }
    }
    std::map<std::pair<int, std::string>, int> targets;
    for (int s = 0; s < c.shards; ++s) {
      if (database_of[s] < 0 || database_of[s] >= c.databases) {
        return absl::InternalError("the shard map names a database that does not exist");
      }
      suffix_of.push_back(
          absl::StrReplaceAll(c.table_suffix, {{"{shard}", absl::StrFormat("%0*d", width, s)}}));
      auto [it, fresh] = targets.emplace(std::make_pair(database_of[s], suffix_of[s]),
                                         static_cast<int>(target_shard.size()));
      if (fresh) target_shard.push_back(s);
      target_of.push_back(it->second);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> ShardOf(const Value& key) const {
    if (std::holds_alternative<std::monostate>(key)) {
      return absl::InvalidArgumentError("the shard key is NULL");
    }
    if (const double* d = std::get_if<double>(&key)) {
      if (*d != static_cast<double>(static_cast<int64_t>(*d)) || std::abs(*d) > 9e15) {
        return absl::InvalidArgumentError(absl::StrCat("shard key ", *d, " is not an integer"));
      }
      return ShardOf(Value(static_cast<int64_t>(*d)));
    }
    if (config.function == ShardFunction::kLastTwoDigits) {
      if (const int64_t* i = std::get_if<int64_t>(&key)) {
        return static_cast<int>(*i < 0 ? -(*i % 100) : *i % 100);  // 5 is 05
      }
      return LastTwoDigits(std::get<std::string>(key));
    }
    std::string text = ToString(key);
    int64_t id;
    if (!absl::SimpleAtoi(text, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("shard key '", text, "' is not an integer"));
    }
    if (config.function == ShardFunction::kModulo) {
      int64_t m = id % config.shards;
      return static_cast<int>(m < 0 ? m + config.shards : m);
    }
    for (size_t s = 0; s < config.ranges.size(); ++s) {
      if (id >= config.ranges[s].first && id <= config.ranges[s].second) {
        return static_cast<int>(s);
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("shard key ", id, " is in no shard's range of the config"));
  }

  bool Binding(const std::string& a, const std::string& b) const {
    if (a == b) return true;
    for (const std::set<std::string>& g : config.binding_groups) {
      if (g.count(a) > 0 && g.count(b) > 0) return true;
    }
    return false;
  }

  // ---- analysis, once per statement text --------------------------------

  // The analysis of `sql`, valid until this thread's next call. A few
  // recent ones are kept per thread, which spares the shared cache's lock.
  absl::StatusOr<Analysis*> Analyzed(absl::string_view sql) const {
    if (sql.size() > kMaxKeptText) {
      // Not kept (see kMaxKeptText): held by this thread until its next call.
      thread_local std::shared_ptr<Analysis> large;
      absl::StatusOr<std::shared_ptr<Analysis>> a = Make(sql);
      if (!a.ok()) return a.status();
      large = *std::move(a);
      return large.get();
    }
    struct Recent {
      uint64_t router = 0;
      std::shared_ptr<Analysis> analysis;
    };
    thread_local std::array<Recent, 8> recent;
    unsigned char middle = sql.empty() ? 0 : static_cast<unsigned char>(sql[sql.size() / 2]);
    Recent& slot = recent[(sql.size() * 31 + middle) % 8];
    if (slot.router == id && slot.analysis->sql == sql) return slot.analysis.get();
    absl::StatusOr<std::shared_ptr<Analysis>> a = Shared(sql);
    if (!a.ok()) return a.status();
    slot.router = id;
    slot.analysis = *std::move(a);
    return slot.analysis.get();
  }

  absl::StatusOr<std::shared_ptr<Analysis>> Shared(absl::string_view sql) const {
    {
      std::shared_lock<std::shared_mutex> lock(mu);
      if (auto it = cache.find(sql); it != cache.end()) return it->second;
    }
    absl::StatusOr<std::shared_ptr<Analysis>> a = Make(sql);
    if (!a.ok()) return a.status();  // not cached: cheap to find again, and unbounded
    std::unique_lock<std::shared_mutex> lock(mu);
    if (cache.size() >= kMaxCached) cache.clear();
    cache[std::string(sql)] = *a;
    return a;
  }

  absl::StatusOr<std::shared_ptr<Analysis>> Make(absl::string_view sql) const {
    absl::StatusOr<Statement> st = Parse(std::string(sql));
    if (!st.ok()) return st.status();
    auto a = std::make_shared<Analysis>();
    a->sql = std::string(sql);
    a->tree = std::move(st->tree);
    a->error = Analyze(a.get());
    a->plain_statement.reset(new std::atomic<const RoutedStatement*>[target_shard.size()]());
    a->scatter_statement.reset(new std::atomic<const RoutedStatement*>[target_shard.size()]());
    return a;
  }

  absl::Status Analyze(Analysis* a) const {
    const pg_query::Node& root = a->tree.stmts(0).stmt();
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

    // The tables it names: each must be known.
    absl::Status unknown;
    ForEach<pg_query::RangeVar>(a->tree, [&](const pg_query::RangeVar& rv) {
      if (config.sharded_tables.count(rv.relname()) > 0) {
        a->sharded.insert(rv.relname());
      } else if (config.broadcast_tables.count(rv.relname()) == 0 && unknown.ok()) {
        unknown = absl::InvalidArgumentError(
            absl::StrCat("unknown table '", rv.relname(),
                         "': it is neither sharded nor broadcast in the config"));
      }
    });
    if (!unknown.ok()) return unknown;
    // A common table expression is named like a table; refuse rather than guess.
    if ((root.has_select_stmt() && root.select_stmt().has_with_clause()) ||
        (root.has_insert_stmt() && root.insert_stmt().has_with_clause()) ||
        (root.has_update_stmt() && root.update_stmt().has_with_clause()) ||
        (root.has_delete_stmt() && root.delete_stmt().has_with_clause())) {
      return absl::InvalidArgumentError("WITH queries cannot be routed by shard");
    }
    ScopeScan scan(config.sharded_tables);
    const int top = scan.Scan(root);
    if (!scan.error().ok()) return scan.error();
    const std::vector<TableRef>& refs = scan.refs();
    // A broadcast table's copies must change alike: a write to one that
    // also reads sharded tables would differ database by database.
    if (!refs.empty() && (root.has_update_stmt() || root.has_delete_stmt())) {
      const std::string& target = root.has_update_stmt() ? root.update_stmt().relation().relname()
                                                         : root.delete_stmt().relation().relname();
      if (config.sharded_tables.count(target) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a write to broadcast table ", target,
            " may not read sharded tables: its copies in every database must change alike"));
      }
    }
    if (root.has_insert_stmt() && root.insert_stmt().has_on_conflict_clause()) {
      auto it = config.sharded_tables.find(root.insert_stmt().relation().relname());
      for (const pg_query::Node& t : root.insert_stmt().on_conflict_clause().target_list()) {
        if (it != config.sharded_tables.end() && t.has_res_target() &&
            t.res_target().name() == it->second) {
          return absl::InvalidArgumentError(
              absl::StrCat("ON CONFLICT DO UPDATE may not change the shard column ", it->first, ".",
                           it->second, ": the row would belong to another shard"));
        }
      }
    }
    a->broadcast_only = refs.empty();
    if (config.sqlite) {
      absl::Status cast;
      ForEach<pg_query::TypeCast>(a->tree, [&](const pg_query::TypeCast& c) {
        if (!cast.ok()) return;
        absl::StatusOr<std::string> type = SqliteTypeName(c.type_name());
        if (!type.ok()) {
          cast = type.status();
          return;
        }
        // CAST(x AS T) and x::T (located at CAST and at ::) are written as
        // CAST for SQLite; a typed literal (DATE '2026-01-01', located
        // nowhere) SQLite does not have.
        int at = c.location();
        absl::string_view from = at >= 0 && at < static_cast<int>(a->sql.size())
                                     ? absl::string_view(a->sql).substr(at)
                                     : absl::string_view();
        if (!absl::StartsWith(from, "::") && !absl::StartsWithIgnoreCase(from, "cast")) {
          cast = absl::InvalidArgumentError(
              absl::StrCat("SQLite has no typed literals (", TypeNameOf(c.type_name()),
                           " '...'); write CAST('...' AS ", *type, ")"));
        }
      });
      if (!cast.ok()) return cast;
    }
    ForEach<pg_query::ParamRef>(
        a->tree, [&](const pg_query::ParamRef& p) { a->params_used.push_back(p.number()); });
    Normalize(&a->params_used);

    if (root.has_insert_stmt() &&
        !(root.insert_stmt().select_stmt().has_select_stmt() &&
          root.insert_stmt().select_stmt().select_stmt().values_lists_size() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("INSERT into ",
                                                     root.insert_stmt().relation().relname(),
                                                     " must give its rows as VALUES"));
    }
    if (root.has_update_stmt()) {
      const std::string& table = root.update_stmt().relation().relname();
      auto it = config.sharded_tables.find(table);
      for (const pg_query::Node& t : root.update_stmt().target_list()) {
        if (it != config.sharded_tables.end() && t.has_res_target() &&
            t.res_target().name() == it->second) {
          return absl::InvalidArgumentError(
              absl::StrCat("UPDATE may not change the shard column ", table, ".", it->second,
                           ": the row would belong to another shard"));
        }
      }
    }

    if (root.has_insert_stmt() && refs.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "INSERT into ", root.insert_stmt().relation().relname(),
          " may not read sharded tables: its rows are split by shard; read first, then insert"));
    }
    for (const TableRef& r : refs) {
      if (!Binding(refs[0].table, r.table)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the statement joins sharded tables ", refs[0].table, " and ", r.table,
            ", which are not binding tables; join sharded tables only if the config binds them, "
            "and otherwise only with broadcast tables"));
      }
      // A qualified key must name this table (or its alias): a broadcast
      // table's column of the same name is no shard key.
      if (r.scope == top)
        a->key_columns.push_back({r.qualifier, config.sharded_tables.at(r.table)});
    }
    Group(scan, top, a);
    if (const pg_query::Node* where = WhereOf(root);
        where != nullptr && !a->broadcast_only && a->single) {
      a->key_param = KeyParam(*a, *where);
    }
    if (a->kind == StatementKind::kRead && !a->broadcast_only) {
      a->scatter_error = PlanScatter(a);
    }
    return absl::OkStatus();
  }

  // The statement's sharded tables in groups (see ScopeScan): tables of one
  // scope joined on their shard columns, and which outer groups each
  // subquery's group is correlated with.
  void Group(const ScopeScan& scan, int top, Analysis* a) const {
    const std::vector<TableRef>& refs = scan.refs();
    const std::vector<Scope>& scopes = scan.scopes();
    std::vector<size_t> parent(refs.size());
    std::iota(parent.begin(), parent.end(), 0);
    std::function<size_t(size_t)> find = [&](size_t x) {
      return parent[x] == x ? x : parent[x] = find(parent[x]);
    };
    std::vector<std::pair<int, int>> correlated;  // (outer table, inner table)
    for (size_t s = 0; s < scopes.size(); ++s) {
      const int scope = static_cast<int>(s);
      for (const pg_query::Node* condition : scopes[s].conditions) {
        std::vector<const pg_query::Node*> parts;
        Conjuncts(*condition, &parts);
        for (const pg_query::Node* p : parts) {
          if (!p->has_a_expr() || !IsOperator(p->a_expr(), "=")) continue;
          std::optional<int> l = scan.Resolve(p->a_expr().lexpr(), scope);
          std::optional<int> r = scan.Resolve(p->a_expr().rexpr(), scope);
          if (!l.has_value() || !r.has_value() || *l == *r) continue;
          bool l_here = refs[*l].scope == scope, r_here = refs[*r].scope == scope;
          if (l_here && r_here) {
            parent[find(*l)] = find(*r);
          } else if (l_here || r_here) {
            correlated.emplace_back(l_here ? *r : *l, l_here ? *l : *r);
          }
        }
      }
      for (const pg_query::JoinExpr* j : scopes[s].usings) {
        if (!j->larg().has_range_var() || !j->rarg().has_range_var()) continue;
        auto ref = [&](const pg_query::RangeVar& rv) -> std::optional<int> {
          auto it = scopes[s].names.find(rv.has_alias() ? rv.alias().aliasname() : rv.relname());
          if (it == scopes[s].names.end() || it->second < 0) return std::nullopt;
          return it->second;
        };
        std::optional<int> l = ref(j->larg().range_var()), r = ref(j->rarg().range_var());
        if (!l || !r) continue;
        const std::string& column = config.sharded_tables.at(refs[*l].table);
        if (column != config.sharded_tables.at(refs[*r].table)) continue;
        for (const pg_query::Node& u : j->using_clause()) {
          if (u.has_string() && u.string().sval() == column) parent[find(*l)] = find(*r);
        }
      }
    }
    // Groups in table order: outer scopes come first.
    std::map<size_t, int> group_of_root;
    std::vector<int> group_of(refs.size());
    for (size_t i = 0; i < refs.size(); ++i) {
      auto [it, fresh] = group_of_root.emplace(find(i), static_cast<int>(a->groups.size()));
      if (fresh) {
        TableGroup g;
        g.where = scopes[refs[i].scope].where;
        g.top = refs[i].scope == top;
        g.name = refs[i].qualifier == refs[i].table
                     ? refs[i].table
                     : absl::StrCat(refs[i].table, " ", refs[i].qualifier);
        g.example = {refs[i].qualifier, config.sharded_tables.at(refs[i].table)};
        a->groups.push_back(std::move(g));
      }
      group_of[i] = it->second;
      const TableRef& r = refs[i];
      a->groups[it->second].key_columns.push_back({r.qualifier, config.sharded_tables.at(r.table)});
    }
    for (const auto& [outer, inner] : correlated) {
      std::vector<int>& follows = a->groups[group_of[inner]].follows;
      if (group_of[outer] != group_of[inner]) follows.push_back(group_of[outer]);
    }
    int tops = 0;
    std::vector<bool> reached(a->groups.size(), false);
    for (size_t g = 0; g < a->groups.size(); ++g) {
      TableGroup& group = a->groups[g];
      Normalize(&group.follows);
      if (group.top) {
        ++tops;
        reached[g] = true;
      }
      for (int o : group.follows) reached[g] = reached[g] || reached[o];
      group.tied = reached[g];
    }
    a->single = tops == 1 && std::all_of(reached.begin(), reached.end(), [](bool r) { return r; });
  }

  // For a statement whose groups are not all tied to one (see Analysis::
  // single): the shard it runs on, if every group reads only that shard;
  // else why it cannot run. `shards`: what the statement's own WHERE gives.
  absl::StatusOr<std::optional<ShardSet>> CheckGroups(const Analysis& a,
                                                      std::optional<ShardSet> shards,
                                                      absl::Span<const Value> params) const {
    const std::vector<TableGroup>& groups = a.groups;
    std::vector<std::optional<ShardSet>> keys(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      if (groups[g].where == nullptr) continue;
      absl::StatusOr<std::optional<ShardSet>> k =
          Keys(groups[g].key_columns, *groups[g].where, params);
      if (!k.ok()) return k.status();
      keys[g] = *std::move(k);
    }
    int first_top = -1;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (groups[g].top && first_top < 0) first_top = static_cast<int>(g);
    }
    if (first_top < 0 && !shards.has_value()) {
      // Sharded tables only in subqueries (of a read of broadcast tables,
      // or of UNION's arms): one shard if their keys name one.
      ShardSet named;
      bool all = true;
      for (size_t g = 0; g < groups.size(); ++g) {
        if (!groups[g].follows.empty()) continue;
        if (!keys[g].has_value()) {
          all = false;
          break;
        }
        named.insert(named.end(), keys[g]->begin(), keys[g]->end());
      }
      Normalize(&named);
      if (all && named.size() == 1) shards = named;
    }
    if (!shards.has_value() || shards->size() > 1) {
      if (first_top < 0) {
        if (!a.scatter_error.ok() && a.kind == StatementKind::kRead) return a.scatter_error;
        return absl::InvalidArgumentError(
            "a sharded table read only in a subquery cannot be read across shards; give the "
            "subqueries one shard key, or read the table in the outer query's FROM, joined on "
            "its shard column");
      }
      for (size_t g = 0; g < groups.size(); ++g) {
        if (static_cast<int>(g) == first_top) continue;
        if (groups[g].top) return Unjoined(groups[first_top], groups[g]);
        if (groups[g].tied) continue;
        return Untied(groups[first_top], groups[g],
                      shards.has_value() ? "one of the statement's shards"
                                         : "the shard the outer query's rows are read on");
      }
    }
    const int shard = shards->empty() ? target_shard[0] : (*shards)[0];
    std::vector<bool> held(groups.size(), false);
    for (size_t g = 0; g < groups.size(); ++g) {
      const std::optional<ShardSet>& k = keys[g];
      held[g] =
          k.has_value() && std::all_of(k->begin(), k->end(), [&](int s) { return s == shard; });
      for (int o : groups[g].follows) held[g] = held[g] || held[o];
      if (held[g]) continue;
      if (groups[g].top) {
        return Unjoined(groups[first_top >= 0 && first_top != static_cast<int>(g) ? first_top : 0],
                        groups[g]);
      }
      if (k.has_value() && !k->empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the subquery reading ", groups[g].name, " is bound to shard ", (*k)[0],
            " but the statement runs on shard ", shard,
            "; a subquery reads the statement's shard: give it the same shard key, or correlate "
            "it with the outer query"));
      }
      return Untied(groups[first_top >= 0 ? first_top : 0], groups[g],
                    absl::StrCat("shard ", shard));
    }
    return shards;
  }

  absl::Status Unjoined(const TableGroup& a, const TableGroup& b) const {
    return absl::InvalidArgumentError(
        absl::StrCat("the statement joins sharded tables ", a.name.substr(0, a.name.find(' ')),
                     " and ", b.name.substr(0, b.name.find(' ')),
                     " across shards; join them on their shard columns (", a.example.qualifier, ".",
                     a.example.name, " = ", b.example.qualifier, ".", b.example.name, ")"));
  }

  absl::Status Untied(const TableGroup& outer, const TableGroup& inner,
                      const std::string& where) const {
    bool same = inner.example.qualifier == outer.example.qualifier;
    return absl::InvalidArgumentError(absl::StrCat(
        "the subquery reading ", inner.name, " is not tied to ", where, ": ",
        same ? "give it an alias and correlate" : "correlate",
        " it with the outer query on the shard column (", same ? "x" : inner.example.qualifier, ".",
        inner.example.name, " = ", outer.example.qualifier, ".", outer.example.name,
        "), or give the statement and the subquery one shard key"));
  }

  // How a read runs on several tables and is merged; an error if it cannot.
  absl::Status PlanScatter(Analysis* a) const {
    const pg_query::SelectStmt& s = a->tree.stmts(0).stmt().select_stmt();
    if (s.op() != pg_query::SETOP_NONE) {
      return absl::InvalidArgumentError(
          "UNION, INTERSECT and EXCEPT over sharded tables need the shard key");
    }
    if (s.has_having_clause()) {
      return absl::InvalidArgumentError(
          "HAVING over sharded tables needs the shard key (it would filter each shard's part of a "
          "group)");
    }
    bool top_level_sharded = false;
    std::function<void(const pg_query::Node&)> from = [&](const pg_query::Node& n) {
      if (n.has_range_var() && config.sharded_tables.count(n.range_var().relname()) > 0) {
        top_level_sharded = true;
      }
      if (n.has_join_expr()) {
        from(n.join_expr().larg());
        from(n.join_expr().rarg());
      }
    };
    for (const pg_query::Node& n : s.from_clause()) from(n);
    if (!top_level_sharded) {
      return absl::InvalidArgumentError(
          "a sharded table read only in a subquery cannot be read across shards; read it in the "
          "outer query's FROM, joined on its shard column");
    }
    auto plan = std::make_shared<MergePlan>();
    if (s.distinct_clause_size() > 0) {
      if (s.distinct_clause_size() != 1 ||
          s.distinct_clause(0).node_case() != pg_query::Node::NODE_NOT_SET) {
        return absl::InvalidArgumentError("DISTINCT ON over sharded tables needs the shard key");
      }
      plan->distinct = true;
    }
    if (s.limit_option() == pg_query::LIMIT_OPTION_WITH_TIES) {
      return absl::InvalidArgumentError(
          "FETCH ... WITH TIES over sharded tables needs the shard key");
    }

    struct Target {
      pg_query::Node val;
      std::string name;  // output name ("" when unknown)
      MergeOp op = MergeOp::kKeep;
      bool hidden = false;
      // A hidden column telling the merge what the database compares or
      // adds by (pg_collation_for, pg_typeof, a column for its declared
      // collation), not a sort or group key of the statement.
      bool meta = false;
    };
    std::vector<Target> targets;
    bool star = false;
    int first_star = -1, last_star = -1;  // targets that are a *
    for (const pg_query::Node& t : s.target_list()) {
      if (!t.has_res_target()) continue;
      const pg_query::ResTarget& rt = t.res_target();
      Target x;
      x.val = rt.val();
      if (rt.val().has_column_ref()) {
        const auto& f = rt.val().column_ref().fields();
        if (!f.empty() && f[f.size() - 1].has_a_star()) {
          star = true;
          if (first_star < 0) first_star = static_cast<int>(targets.size());
          last_star = static_cast<int>(targets.size());
        }
      }
      std::optional<Column> c = ColumnOf(rt.val());
      x.name = !rt.name().empty() ? rt.name() : (c.has_value() ? c->name : "");
      std::optional<MergeOp> op = AggregateOf(rt.val());
      if (op.has_value()) {
        const pg_query::FuncCall& f = rt.val().func_call();
        if (f.agg_distinct()) {
          return absl::InvalidArgumentError(
              "an aggregate of DISTINCT values over sharded tables needs the shard key");
        }
        if (f.has_over()) {
          return absl::InvalidArgumentError(
              "window functions over sharded tables need the shard key");
        }
        x.op = *op;
      }
      // An aggregate inside an expression (sum(a) / count(*)) cannot be merged.
      bool nested = false, window = false, unmergeable = false;
      ForEach<pg_query::FuncCall>(rt.val(), [&](const pg_query::FuncCall& f) {
        if (f.has_over()) window = true;
        if (IsUnmergeableAggregate(f)) unmergeable = true;
        if (IsAggregateName(f) &&
            &f != (rt.val().has_func_call() ? &rt.val().func_call() : nullptr)) {
          nested = true;
        }
      });
      if (window) {
        return absl::InvalidArgumentError(
            "window functions over sharded tables need the shard key");
      }
      if (unmergeable) {
        return absl::InvalidArgumentError(
            "over sharded tables only count, sum, min, max and avg can be merged; other "
            "aggregates need the shard key");
      }
      if (nested) {
        return absl::InvalidArgumentError(
            "an aggregate inside an expression over sharded tables needs the shard key; select "
            "the aggregates themselves and compute with them afterwards");
      }
      targets.push_back(std::move(x));
    }
    const size_t visible = targets.size();
    bool aggregate = s.group_clause_size() > 0;
    for (const Target& t : targets) aggregate = aggregate || t.op != MergeOp::kKeep;
    if (aggregate && star) {
      return absl::InvalidArgumentError(
          "SELECT * with aggregates over sharded tables is not supported");
    }

    // Finds or adds the target an ORDER BY / GROUP BY expression names.
    auto target_for = [&](const pg_query::Node& n, bool order) -> absl::StatusOr<int> {
      if (n.has_a_const() && n.a_const().has_ival()) {
        int k = n.a_const().ival().ival();
        if (star) {
          return absl::InvalidArgumentError(
              "ORDER BY or GROUP BY a position after SELECT * over sharded tables is not "
              "supported; name the column");
        }
        if (k < 1 || k > static_cast<int>(visible)) {
          return absl::InvalidArgumentError(
              absl::StrCat("position ", k, " is not in the select list"));
        }
        return k - 1;
      }
      std::string fp = Fingerprint(n);
      for (size_t i = 0; i < targets.size(); ++i) {
        if (Fingerprint(targets[i].val) == fp) return static_cast<int>(i);
      }
      std::optional<Column> c = ColumnOf(n);
      if (order && c.has_value() && c->qualifier.empty()) {
        for (size_t i = 0; i < visible; ++i) {
          if (targets[i].name == c->name) return static_cast<int>(i);
        }
      }
      if (star && c.has_value() && c->qualifier.empty()) return -1;  // by name in the result
      Target x;
      x.val = n;
      x.hidden = true;
      std::optional<MergeOp> op = AggregateOf(n);
      if (op.has_value()) x.op = *op;
      targets.push_back(std::move(x));
      return static_cast<int>(targets.size() - 1);
    };

    std::vector<int> group_index;
    for (const pg_query::Node& g : s.group_clause()) {
      if (g.has_grouping_set()) {
        return absl::InvalidArgumentError(
            "ROLLUP, CUBE and GROUPING SETS over sharded tables need the shard key");
      }
      absl::StatusOr<int> i = target_for(g, false);
      if (!i.ok()) return i.status();
      group_index.push_back(*i);
    }
    if (aggregate) {
      for (size_t i = 0; i < visible; ++i) {
        if (targets[i].op == MergeOp::kKeep &&
            std::find(group_index.begin(), group_index.end(), static_cast<int>(i)) ==
                group_index.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "select list item ", i + 1, (targets[i].name.empty() ? "" : " ("), targets[i].name,
              (targets[i].name.empty() ? "" : ")"),
              " is neither an aggregate nor in GROUP BY, so shards' rows cannot be merged"));
        }
      }
    }
    std::vector<std::pair<int, const pg_query::SortBy*>> order_index;
    for (const pg_query::Node& o : s.sort_clause()) {
      if (!o.has_sort_by()) continue;
      const pg_query::SortBy& sb = o.sort_by();
      if (sb.sortby_dir() == pg_query::SORTBY_USING) {
        return absl::InvalidArgumentError(
            "ORDER BY ... USING over sharded tables is not supported");
      }
      absl::StatusOr<int> i = target_for(sb.node(), true);
      if (!i.ok()) return i.status();
      if (aggregate && *i >= 0 && targets[*i].hidden && targets[*i].op == MergeOp::kKeep &&
          std::find(group_index.begin(), group_index.end(), *i) == group_index.end()) {
        return absl::InvalidArgumentError(
            "ORDER BY over sharded tables with aggregates must name an aggregate or a GROUP BY "
            "expression");
      }
      order_index.emplace_back(*i, &sb);
    }
    const bool sqlite = config.sqlite;
    plan->dialect = sqlite ? Dialect::kSqlite : Dialect::kPostgres;
    // AVG is merged from hidden SUM and COUNT of the same argument (on
    // SQLite total(), which like avg() never fails on integer overflow).
    std::vector<std::pair<int, int>> avg_parts_index(targets.size(), {-1, -1});
    const size_t before_avg = targets.size();
    for (size_t i = 0; i < before_avg; ++i) {
      if (targets[i].op != MergeOp::kAvg) continue;
      for (const char* name : {"sum", "count"}) {
        const bool sum = name[0] == 's';
        Target x;
        x.val = targets[i].val;
        pg_query::FuncCall* f = x.val.mutable_func_call();
        f->clear_funcname();
        f->add_funcname()->mutable_string()->set_sval(sum && sqlite ? "total" : name);
        x.op = sum ? MergeOp::kSum : MergeOp::kCount;
        x.hidden = true;
        targets.push_back(std::move(x));
        (sum ? avg_parts_index[i].first : avg_parts_index[i].second) =
            static_cast<int>(targets.size() - 1);
      }
    }

    // A hidden column the merge reads, added once per expression.
    std::map<std::string, int> meta_index;
    auto meta = [&](pg_query::Node val) {
      std::string fp = Fingerprint(val);
      auto it = meta_index.find(fp);
      if (it != meta_index.end()) return it->second;
      Target x;
      x.val = std::move(val);
      x.hidden = true;
      x.meta = true;
      targets.push_back(std::move(x));
      int i = static_cast<int>(targets.size() - 1);
      meta_index.emplace(fp, i);
      return i;
    };
    auto describe = [&](int i, const pg_query::Node& n) -> std::string {
      if (i >= 0 && i < static_cast<int>(visible) && !targets[i].name.empty()) {
        return absl::StrCat("column ", targets[i].name);
      }
      if (std::optional<Column> c = ColumnOf(Peeled(n)); c.has_value()) {
        return absl::StrCat("column ", c->qualifier.empty() ? "" : c->qualifier + ".", c->name);
      }
      if (i >= 0 && i < static_cast<int>(visible)) return absl::StrCat("select list item ", i + 1);
      return "an ORDER BY or GROUP BY expression";
    };
    // Where the merge finds the collation target i (or, under SELECT *,
    // the column `by_name`) compares by: as a key (sorted, grouped,
    // DISTINCT) or, `folding`, as min/max compare their argument. SQLite:
    // COLLATE at the top of the expression (under CASTs and unary pluses),
    // else the collation the table declares for the column there, else
    // BINARY (an aggregate's result too); an expression with COLLATE or a
    // subquery inside is refused. PostgreSQL: the database tells,
    // pg_collation_for the expression. Column references are made once
    // `targets` is complete.
    struct Pending {
      CollationSource source;
      int declared = -2, reported = -2;  // target indexes; -1: by_name
      const pg_query::Node* by_name = nullptr;
    };
    auto collation_of = [&](int i, const pg_query::Node* by_name,
                            bool folding) -> absl::StatusOr<Pending> {
      Pending p;
      const pg_query::Node& expr = i >= 0 ? targets[i].val : *by_name;
      p.source.what = describe(i, expr);
      p.by_name = by_name;
      MergeOp op = i >= 0 ? targets[i].op : MergeOp::kKeep;
      if (op == MergeOp::kCount || op == MergeOp::kSum || op == MergeOp::kAvg) return p;  // numbers
      if (!sqlite) {
        // As text, so that it answers for every type; the merge heeds it
        // only for the text types (Connection::Execute tells which).
        p.reported = meta(Call("pg_collation_for", AsText(expr)));
        return p;
      }
      const bool minmax = op == MergeOp::kMin || op == MergeOp::kMax;
      if (minmax != folding) return p;  // SQLite compares an aggregate's result by BINARY
      if (minmax && expr.func_call().args_size() != 1) return p;
      const pg_query::Node& compared = minmax ? expr.func_call().args(0) : expr;
      const pg_query::Node& peeled = Peeled(compared);
      if (peeled.has_collate_clause()) {
        p.source.named = CollationName(peeled.collate_clause());
      } else if (IsPlainColumn(peeled)) {
        // The backend tells what the table declares for a column selected as is.
        p.declared = &peeled == &expr ? i : meta(peeled);
      } else {
        bool unknown = false;
        ForEach<pg_query::CollateClause>(compared,
                                         [&](const pg_query::CollateClause&) { unknown = true; });
        ForEach<pg_query::SubLink>(compared, [&](const pg_query::SubLink&) { unknown = true; });
        if (unknown) {
          return absl::InvalidArgumentError(absl::StrCat(
              "the collation SQLite compares ", p.source.what,
              " by cannot be told across shards (a COLLATE or a subquery inside the expression); "
              "put COLLATE at the top of it, or give the shard key"));
        }
      }
      return p;
    };
    std::vector<Pending> order_collations, group_collations, distinct_collations;
    std::vector<std::pair<int, Pending>> op_collations;
    for (const auto& [i, sb] : order_index) {
      absl::StatusOr<Pending> p = collation_of(i, &sb->node(), false);
      if (!p.ok()) return p.status();
      order_collations.push_back(*std::move(p));
    }
    for (size_t g = 0; g < group_index.size(); ++g) {
      absl::StatusOr<Pending> p =
          collation_of(group_index[g], &s.group_clause(static_cast<int>(g)), false);
      if (!p.ok()) return p.status();
      group_collations.push_back(*std::move(p));
    }
    if (plan->distinct) {
      if (star && !sqlite) {
        return absl::InvalidArgumentError(
            "SELECT DISTINCT * over sharded PostgreSQL tables is not merged (each column's "
            "collation must be asked for); name the columns");
      }
      for (size_t i = 0; i < visible; ++i) {
        if (star && targets[i].val.has_column_ref()) continue;  // the *, or a column beside it
        absl::StatusOr<Pending> p = collation_of(static_cast<int>(i), nullptr, false);
        if (!p.ok()) return p.status();
        if (star && (!p->source.named.empty() || p->declared >= 0)) {
          return absl::InvalidArgumentError(
              "SELECT DISTINCT * with COLLATE or CAST beside the * over sharded tables is not "
              "merged; name the columns");
        }
        if (!star) distinct_collations.push_back(*std::move(p));
      }
    }
    const size_t before_meta = targets.size();
    for (size_t i = 0; i < before_meta; ++i) {
      if (targets[i].op != MergeOp::kMin && targets[i].op != MergeOp::kMax) continue;
      absl::StatusOr<Pending> p = collation_of(static_cast<int>(i), nullptr, true);
      if (!p.ok()) return p.status();
      op_collations.emplace_back(static_cast<int>(i), *std::move(p));
    }
    // PostgreSQL sums are read as exact text, with their type beside them.
    std::vector<int> sum_type_index(targets.size(), -1);
    if (!sqlite) {
      for (size_t i = 0; i < before_meta; ++i) {
        if (targets[i].op == MergeOp::kSum)
          sum_type_index[i] = meta(Call("pg_typeof", targets[i].val));
      }
    }

    const int total = static_cast<int>(targets.size());
    plan->aggregate = aggregate;
    plan->hidden = total - static_cast<int>(visible);
    if (plan->distinct) {
      for (int i = static_cast<int>(visible); i < total; ++i) {
        if (!targets[i].meta) {
          return absl::InvalidArgumentError(
              "SELECT DISTINCT over sharded tables must select every ORDER BY and GROUP BY "
              "expression");
        }
      }
    }
    // Under SELECT *, an item is found by its place from the start when
    // before the first *, from the end when after the last (as the hidden
    // ones are), by name in between.
    auto ref = [&](int i, const pg_query::Node& n) {
      ColumnRef r;
      if (i < 0) {
        r.name = ColumnOf(n)->name;
      } else if (star) {
        if (i > last_star) {
          r.from_end = total - i;
        } else if (i < first_star) {
          r.index = i;
        } else {
          r.name = targets[i].name;
        }
      } else {
        r.index = i;
      }
      return r;
    };
    for (const auto& [i, sb] : order_index) {
      if (star && i > first_star && i < last_star && targets[i].name.empty()) {
        return absl::InvalidArgumentError(
            "over sharded tables, an expression between two * that ORDER BY names needs a name "
            "(AS ...)");
      }
    }
    auto resolved = [&](const Pending& p) {
      static const pg_query::Node kNone;
      const pg_query::Node& by_name = p.by_name != nullptr ? *p.by_name : kNone;
      CollationSource out = p.source;
      if (p.declared >= -1) out.declared = ref(p.declared, by_name);
      if (p.reported >= 0) out.reported = ref(p.reported, by_name);
      return out;
    };
    if (aggregate) {
      plan->ops.resize(total);
      plan->avg_parts.resize(total);
      plan->sum_types.resize(total);
      plan->op_collations.resize(total);
      for (int i = 0; i < total; ++i) {
        plan->ops[i] = targets[i].op;
        if (targets[i].op == MergeOp::kAvg) {
          plan->avg_parts[i] = {total - avg_parts_index[i].first,
                                total - avg_parts_index[i].second};
        }
        if (i < static_cast<int>(sum_type_index.size()) && sum_type_index[i] >= 0) {
          plan->sum_types[i] = total - sum_type_index[i];
        }
      }
      for (const auto& [i, p] : op_collations) plan->op_collations[i] = resolved(p);
      for (size_t g = 0; g < group_index.size(); ++g) {
        plan->group_by.push_back(ref(group_index[g], s.group_clause(static_cast<int>(g))));
        plan->group_collations.push_back(resolved(group_collations[g]));
      }
    }
    for (const Pending& p : distinct_collations) plan->distinct_collations.push_back(resolved(p));
    for (size_t k = 0; k < order_index.size(); ++k) {
      const auto& [i, sb] = order_index[k];
      SortKey key;
      key.column = ref(i, sb->node());
      key.descending = sb->sortby_dir() == pg_query::SORTBY_DESC;
      if (sb->sortby_nulls() == pg_query::SORTBY_NULLS_FIRST) key.nulls_first = true;
      if (sb->sortby_nulls() == pg_query::SORTBY_NULLS_LAST) key.nulls_first = false;
      key.collation = resolved(order_collations[k]);
      plan->order_by.push_back(key);
    }
    auto bound = [&](const pg_query::Node& n,
                     const char* what) -> absl::StatusOr<std::optional<Bound>> {
      if (n.node_case() == pg_query::Node::NODE_NOT_SET) return std::optional<Bound>();
      if (n.has_a_const()) {
        if (n.a_const().isnull()) return std::optional<Bound>();  // LIMIT ALL
        if (n.a_const().has_ival()) {
          return std::optional<Bound>(Bound{n.a_const().ival().ival(), 0});
        }
      }
      if (n.has_param_ref()) return std::optional<Bound>(Bound{0, n.param_ref().number()});
      return absl::InvalidArgumentError(
          absl::StrCat(what, " over sharded tables must be an integer constant or a parameter"));
    };
    absl::StatusOr<std::optional<Bound>> limit = bound(s.limit_count(), "LIMIT");
    if (!limit.ok()) return limit.status();
    absl::StatusOr<std::optional<Bound>> offset = bound(s.limit_offset(), "OFFSET");
    if (!offset.ok()) return offset.status();
    plan->limit = *limit;
    plan->offset = *offset;

    // The statement each shard runs.
    a->scatter_tree = a->tree;
    pg_query::SelectStmt* out =
        a->scatter_tree.mutable_stmts(0)->mutable_stmt()->mutable_select_stmt();
    auto shard_val = [&](int i) {
      return sum_type_index.size() > static_cast<size_t>(i) && sum_type_index[i] >= 0
                 ? AsText(targets[i].val)
                 : targets[i].val;
    };
    int item = 0;
    for (pg_query::Node& t : *out->mutable_target_list()) {
      if (!t.has_res_target()) continue;
      *t.mutable_res_target()->mutable_val() = shard_val(item++);
    }
    for (int i = static_cast<int>(visible); i < total; ++i) {
      pg_query::ResTarget* rt = out->add_target_list()->mutable_res_target();
      rt->set_name(absl::StrCat(kHiddenPrefix, i - visible + 1));
      *rt->mutable_val() = shard_val(i);
    }
    if (aggregate) {
      out->clear_sort_clause();
      out->clear_limit_count();
      out->clear_limit_offset();
    } else if (plan->limit.has_value() || plan->offset.has_value()) {
      a->limit_per_call = (plan->limit.has_value() && plan->limit->param != 0) ||
                          (plan->offset.has_value() && plan->offset->param != 0);
      if (!a->limit_per_call) {
        absl::Status st = SetShardLimit(out, *plan, {});
        if (!st.ok()) return st;
      }
    }
    a->merge = std::move(plan);
    return absl::OkStatus();
  }

  // Each shard returns up to offset+limit rows, from its first (all of
  // them when that passes what a LIMIT constant holds, or with no LIMIT).
  static absl::Status SetShardLimit(pg_query::SelectStmt* s, const MergePlan& plan,
                                    absl::Span<const Value> params) {
    s->clear_limit_offset();
    s->clear_limit_count();
    absl::StatusOr<RowWindow> window = RowsWanted(plan, params);
    if (!window.ok()) return window.status();
    if (window->count.has_value() && *window->count <= INT32_MAX - window->offset) {
      *s->mutable_limit_count() = IntConst(*window->count + window->offset);
    }
    return absl::OkStatus();
  }

  // ---- per call ---------------------------------------------------------

  // The text of a constant or parameter; nullopt for anything else.
  absl::StatusOr<std::optional<Value>> ValueOf(const pg_query::Node& n,
                                               absl::Span<const Value> params) const {
    if (n.has_a_const()) {
      const pg_query::A_Const& c = n.a_const();
      if (c.has_ival()) return std::optional<Value>(int64_t{c.ival().ival()});
      if (c.has_sval()) return std::optional<Value>(c.sval().sval());
      if (c.has_fval()) {  // 112.00: a number, never its text's last digits
        double d;
        if (absl::SimpleAtod(c.fval().fval(), &d)) return std::optional<Value>(d);
        return std::optional<Value>(c.fval().fval());
      }
      return std::optional<Value>();
    }
    if (n.has_param_ref()) {
      int k = n.param_ref().number();
      if (k < 1 || k > static_cast<int>(params.size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("the statement uses $", k, "; parameters given: ", params.size()));
      }
      return std::optional<Value>(params[k - 1]);
    }
    if (n.has_type_cast()) {
      // A key cast to an integer or a text type is read as the cast reads it;
      // what else a cast makes of it is the database's to say (nullopt).
      absl::StatusOr<std::optional<Value>> v = ValueOf(n.type_cast().arg(), params);
      if (!v.ok() || !v->has_value()) return v;
      const std::string type = TypeNameOf(n.type_cast().type_name());
      if (n.type_cast().type_name().array_bounds_size() > 0) return std::optional<Value>();
      const Value& x = **v;
      if (IsIntegerType(type)) {
        if (std::holds_alternative<int64_t>(x)) return v;
        if (const double* d = std::get_if<double>(&x)) {
          if (*d == std::trunc(*d) && std::abs(*d) < 9e15) {
            return std::optional<Value>(static_cast<int64_t>(*d));
          }
          return std::optional<Value>();
        }
        int64_t i;
        if (const std::string* t = std::get_if<std::string>(&x);
            t != nullptr && absl::SimpleAtoi(*t, &i)) {
          return std::optional<Value>(i);
        }
        return std::optional<Value>();
      }
      if (IsTextType(type) &&
          (std::holds_alternative<int64_t>(x) || std::holds_alternative<std::string>(x))) {
        return v;
      }
      return std::optional<Value>();
    }
    return std::optional<Value>();
  }

  static const pg_query::Node* WhereOf(const pg_query::Node& root) {
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

  // n when the WHERE's conjuncts name a shard column in exactly one place,
  // "key = $n"; else 0 (the tree is read for keys on each call).
  int KeyParam(const Analysis& a, const pg_query::Node& where) const {
    std::vector<const pg_query::Node*> parts;
    Conjuncts(where, &parts);
    int found = 0, mentions = 0;
    for (const pg_query::Node* p : parts) {
      bool mentioned = false;
      ForEach<pg_query::ColumnRef>(*p, [&](const pg_query::ColumnRef& c) {
        pg_query::Node n;
        *n.mutable_column_ref() = c;
        mentioned = mentioned || IsKeyColumn(a.key_columns, n);
      });
      if (!mentioned) continue;
      ++mentions;
      if (!p->has_a_expr() || !IsOperator(p->a_expr(), "=")) continue;
      const pg_query::A_Expr& e = p->a_expr();
      if (IsKeyColumn(a.key_columns, e.lexpr()) && e.rexpr().has_param_ref()) {
        found = e.rexpr().param_ref().number();
      } else if (IsKeyColumn(a.key_columns, e.rexpr()) && e.lexpr().has_param_ref()) {
        found = e.lexpr().param_ref().number();
      }
    }
    return mentions == 1 ? found : 0;
  }

  bool IsKeyColumn(const std::vector<Column>& keys, const pg_query::Node& n) const {
    if (!n.has_column_ref()) return false;
    const auto& f = n.column_ref().fields();
    if (f.empty() || !f[f.size() - 1].has_string()) return false;
    const std::string& name = f[f.size() - 1].string().sval();
    const std::string* qualifier =
        f.size() >= 2 && f[f.size() - 2].has_string() ? &f[f.size() - 2].string().sval() : nullptr;
    for (const Column& k : keys) {
      if (k.name != name) continue;
      if (k.qualifier.empty() || qualifier == nullptr || k.qualifier == *qualifier) return true;
    }
    return false;
  }

  absl::StatusOr<std::optional<ShardSet>> Shards(const Value& v) const {
    absl::StatusOr<int> shard = ShardOf(v);
    if (!shard.ok()) return shard.status();
    return std::optional<ShardSet>(ShardSet{*shard});
  }

  // The shards a WHERE clause confines the statement to; nullopt: any.
  absl::StatusOr<std::optional<ShardSet>> Keys(const std::vector<Column>& keys,
                                               const pg_query::Node& n,
                                               absl::Span<const Value> params) const {
    if (n.has_bool_expr()) {
      const pg_query::BoolExpr& b = n.bool_expr();
      if (b.boolop() == pg_query::AND_EXPR) {
        std::optional<ShardSet> out;
        for (const pg_query::Node& arg : b.args()) {
          absl::StatusOr<std::optional<ShardSet>> k = Keys(keys, arg, params);
          if (!k.ok()) return k.status();
          if (!k->has_value()) continue;
          out = out.has_value() ? Intersect(*out, **k) : **k;
        }
        return out;
      }
      if (b.boolop() == pg_query::OR_EXPR) {
        ShardSet all;
        for (const pg_query::Node& arg : b.args()) {
          absl::StatusOr<std::optional<ShardSet>> k = Keys(keys, arg, params);
          if (!k.ok()) return k.status();
          if (!k->has_value()) return std::optional<ShardSet>();
          all.insert(all.end(), (*k)->begin(), (*k)->end());
        }
        Normalize(&all);
        return std::optional<ShardSet>(std::move(all));
      }
      return std::optional<ShardSet>();
    }
    if (!n.has_a_expr()) return std::optional<ShardSet>();
    const pg_query::A_Expr& e = n.a_expr();
    if (IsOperator(e, "=")) {
      for (int side = 0; side < 2; ++side) {
        const pg_query::Node& col = side == 0 ? e.lexpr() : e.rexpr();
        const pg_query::Node& val = side == 0 ? e.rexpr() : e.lexpr();
        if (!IsKeyColumn(keys, col)) continue;
        absl::StatusOr<std::optional<Value>> v = ValueOf(val, params);
        if (!v.ok()) return v.status();
        if (!v->has_value()) continue;
        return Shards(**v);
      }
      return std::optional<ShardSet>();
    }
    if (e.kind() == pg_query::AEXPR_IN) {
      if (!IsKeyColumn(keys, e.lexpr()) || !e.rexpr().has_list()) return std::optional<ShardSet>();
      bool negated = e.name_size() == 1 && e.name(0).has_string() &&
                     e.name(0).string().sval() == "<>";  // NOT IN
      if (negated) return std::optional<ShardSet>();
      ShardSet out;
      for (const pg_query::Node& item : e.rexpr().list().items()) {
        absl::StatusOr<std::optional<Value>> v = ValueOf(item, params);
        if (!v.ok()) return v.status();
        if (!v->has_value()) return std::optional<ShardSet>();
        absl::StatusOr<int> shard = ShardOf(**v);
        if (!shard.ok()) return shard.status();
        out.push_back(*shard);
      }
      Normalize(&out);
      return std::optional<ShardSet>(std::move(out));
    }
    return std::optional<ShardSet>();
  }

  // ---- writing statements out ------------------------------------------

  // The text of `tree` for the backend, with a hole for each sharded table's
  // (and index's) name. Written out once however many tables it runs on.
  absl::StatusOr<Template> Render(const pg_query::ParseResult& tree) const {
    // Markers stand for what the deparser cannot write: names filled in per
    // table, and for SQLite, casts and parameters. A marker the statement
    // itself happens to hold shows as one too many; another is chosen.
    for (int nonce = 0; nonce < 8; ++nonce) {
      pg_query::ParseResult copy = tree;
      const std::string prefix = absl::StrCat("__dds", nonce, "_");
      std::vector<std::string> names, types;
      size_t markers = 0;
      pg_query::Node* root = copy.mutable_stmts(0)->mutable_stmt();
      if (root->has_index_stmt() && root->index_stmt().access_method() == "btree") {
        root->mutable_index_stmt()->clear_access_method();  // the default; SQLite has no USING
      }
      if (config.sqlite && root->has_select_stmt()) {
        // SQLite locks the whole database for a transaction's writes.
        root->mutable_select_stmt()->clear_locking_clause();
      }
      auto marker = [&](char kind, size_t k) {
        ++markers;
        return absl::StrCat(prefix, std::string(1, kind), k, "__");
      };
      absl::Status bad;
      // A table a column names by the table's own name (orders.user_id)
      // keeps that name as its alias once renamed.
      std::set<std::string> qualifiers;
      ForEach<pg_query::ColumnRef>(copy, [&](const pg_query::ColumnRef& c) {
        if (c.fields_size() >= 2 && c.fields(c.fields_size() - 2).has_string()) {
          qualifiers.insert(c.fields(c.fields_size() - 2).string().sval());
        }
      });
      const pg_query::RangeVar* inserted =
          root->has_insert_stmt() ? &root->insert_stmt().relation() : nullptr;
      Walk(&copy, [&](Message* m) {
        if (m->GetDescriptor() == pg_query::RangeVar::descriptor()) {
          auto* rv = static_cast<pg_query::RangeVar*>(m);
          if (config.sharded_tables.count(rv->relname()) > 0) {
            if (!rv->has_alias() && rv != inserted && qualifiers.count(rv->relname()) > 0) {
              rv->mutable_alias()->set_aliasname(rv->relname());
            }
            names.push_back(rv->relname());
            rv->set_relname(marker('t', names.size() - 1));
          }
        } else if (m->GetDescriptor() == pg_query::IndexStmt::descriptor()) {
          auto* ix = static_cast<pg_query::IndexStmt*>(m);
          if (!ix->idxname().empty() && config.sharded_tables.count(ix->relation().relname()) > 0) {
            names.push_back(ix->idxname());
            ix->set_idxname(marker('t', names.size() - 1));
          }
        } else if (config.sqlite && m->GetDescriptor() == pg_query::Node::descriptor()) {
          auto* n = static_cast<pg_query::Node*>(m);
          if (n->has_param_ref()) {
            // SQLite reads $n as a name, looked up among all the others (a
            // statement of many parameters took quadratic time); ?n is
            // parameter n.
            int k = n->param_ref().number();
            n->mutable_column_ref()->add_fields()->mutable_string()->set_sval(marker('p', k));
          } else if (n->has_type_cast()) {
            // x::T, which SQLite does not read, as CAST(x AS T): a call
            // whose name and last argument are markers.
            absl::StatusOr<std::string> type = SqliteTypeName(n->type_cast().type_name());
            if (!type.ok()) {
              if (bad.ok()) bad = type.status();
              return;
            }
            types.push_back(*std::move(type));
            pg_query::Node arg = n->type_cast().arg();
            pg_query::FuncCall* call = n->mutable_func_call();
            call->add_funcname()->mutable_string()->set_sval(marker('c', types.size() - 1));
            *call->add_args() = std::move(arg);
            call->add_args()->mutable_column_ref()->add_fields()->mutable_string()->set_sval(
                marker('a', types.size() - 1));
            call->set_funcformat(pg_query::COERCE_EXPLICIT_CALL);
          }
        }
      });
      if (!bad.ok()) return bad;
      absl::StatusOr<std::string> text = Deparse(copy);
      if (!text.ok()) return text.status();
      absl::StatusOr<std::optional<Template>> t = Fill(*text, prefix, markers, names, types);
      if (!t.ok()) return t.status();
      if (t->has_value()) return **std::move(t);
    }
    return absl::InternalError(
        "cannot write the statement out: its text holds the router's markers");
  }

  // The deparsed text cut at its markers; nullopt if it holds other
  // markers than the `expected` ones made for it.
  static absl::StatusOr<std::optional<Template>> Fill(const std::string& text,
                                                      const std::string& prefix, size_t expected,
                                                      const std::vector<std::string>& names,
                                                      const std::vector<std::string>& types) {
    Template t;
    t.pieces.emplace_back();
    std::vector<int> order;
    size_t found = 0, at = 0;
    while (true) {
      size_t next = text.find(prefix, at);
      t.pieces.back().append(text, at, next == std::string::npos ? std::string::npos : next - at);
      if (next == std::string::npos) break;
      size_t p = next + prefix.size();
      size_t end = text.find("__", p + 1);
      uint64_t k;
      if (p >= text.size() || end == std::string::npos ||
          !absl::SimpleAtoi(absl::string_view(text).substr(p + 1, end - p - 1), &k)) {
        return std::optional<Template>();
      }
      ++found;
      std::string& piece = t.pieces.back();
      switch (text[p]) {
        case 't':
          if (k >= names.size()) return std::optional<Template>();
          t.holes.push_back(names[k]);
          t.pieces.emplace_back();
          break;
        case 'p':
          piece += "?";
          order.push_back(static_cast<int>(k));
          break;
        case 'c':
          if (k >= types.size()) return std::optional<Template>();
          piece += "CAST";
          break;
        case 'a':
          if (k >= types.size() || !absl::EndsWith(piece, ", ")) return std::optional<Template>();
          piece.resize(piece.size() - 2);
          absl::StrAppend(&piece, " AS ", types[k]);
          break;
        default:
          return std::optional<Template>();
      }
      at = end + 2;
    }
    if (found != expected) return std::optional<Template>();
    bool as_given = true;
    for (size_t i = 0; i < order.size(); ++i)
      as_given = as_given && order[i] == static_cast<int>(i) + 1;
    if (!as_given) t.order = std::make_shared<const std::vector<int>>(std::move(order));
    return std::optional<Template>(std::move(t));
  }

  // The text of a rendered statement for the tables of `shard`.
  std::string Text(const Template& t, int shard) const {
    const std::string& suffix = suffix_of[shard];
    std::string out = t.pieces[0];
    for (size_t i = 0; i < t.holes.size(); ++i) {
      out += Spelled(t.holes[i] + suffix);
      out += t.pieces[i + 1];
    }
    return out;
  }

  // `name` as the deparser writes an identifier: as it is, or quoted.
  std::string Spelled(const std::string& name) const {
    bool plain = !name.empty() && !absl::ascii_isdigit(static_cast<unsigned char>(name[0]));
    bool digit = false;
    for (char c : name) {
      if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        digit = true;
      } else if (!absl::ascii_islower(static_cast<unsigned char>(c)) && c != '_') {
        plain = false;
      }
    }
    if (plain && digit) return name;  // no keyword holds a digit
    std::lock_guard<std::mutex> lock(spelled_mu);
    auto it = spelled.find(name);
    if (it != spelled.end()) return it->second;
    static const std::string kFrom = "SELECT 1 FROM ";
    absl::StatusOr<Statement> st = Parse(kFrom + "x");
    st->tree.mutable_stmts(0)
        ->mutable_stmt()
        ->mutable_select_stmt()
        ->mutable_from_clause(0)
        ->mutable_range_var()
        ->set_relname(name);
    absl::StatusOr<std::string> text = Deparse(st->tree);
    std::string out = text.ok() && absl::StartsWith(*text, kFrom) ? text->substr(kFrom.size())
                                                                  : absl::StrCat("\"", name, "\"");
    spelled.emplace(name, out);
    return out;
  }

  // The cached text of the statement (plain or scattered) on a target.
  absl::StatusOr<RoutedStatement> Cached(Analysis& a, bool scatter, int target) const {
    std::atomic<const RoutedStatement*>& slot =
        (scatter ? a.scatter_statement : a.plain_statement)[target];
    if (const RoutedStatement* made = slot.load(std::memory_order_acquire)) return *made;
    int shard = target_shard[target];
    uint64_t id = (a.serial * 2 + (scatter ? 1 : 0)) * target_shard.size() + target + 1;
    std::shared_ptr<const Template> t;
    {
      std::lock_guard<std::mutex> lock(a.mu);
      t = scatter ? a.scatter_template : a.plain_template;
    }
    if (t == nullptr) {
      absl::StatusOr<Template> made = Render(scatter ? a.scatter_tree : a.tree);
      if (!made.ok()) return made.status();
      t = std::make_shared<const Template>(*std::move(made));
    }
    if (a.sql.size() > kMaxKeptText) {  // texts for this call only
      std::lock_guard<std::mutex> lock(a.mu);
      (scatter ? a.scatter_template : a.plain_template) = t;
      return Once(*t, shard);
    }
    auto statement = std::make_unique<const RoutedStatement>(
        RoutedStatement{shard, database_of[shard],
                        std::make_shared<const std::string>(Text(*t, shard)), id, t->order});
    std::lock_guard<std::mutex> lock(a.mu);
    (scatter ? a.scatter_template : a.plain_template) = t;
    if (const RoutedStatement* made = slot.load(std::memory_order_acquire)) return *made;
    slot.store(statement.get(), std::memory_order_release);
    a.made.push_back(std::move(statement));
    return *a.made.back();
  }

  RoutedStatement Once(const Template& t, int shard) const {
    return RoutedStatement{shard, database_of[shard],
                           std::make_shared<const std::string>(Text(t, shard)), 0, t.order};
  }

  absl::StatusOr<Routing> Route(absl::string_view sql, absl::Span<const Value> params) const {
    absl::StatusOr<Analysis*> analyzed = Analyzed(sql);
    if (!analyzed.ok()) return analyzed.status();
    Analysis& a = **analyzed;
    if (!a.error.ok()) return a.error;
    // Every parameter is checked before any shard's statement runs: a
    // statement split over shards must not run on some and fail on others.
    if (!a.params_used.empty() && a.params_used.back() > static_cast<int>(params.size())) {
      int missing = *std::upper_bound(a.params_used.begin(), a.params_used.end(),
                                      static_cast<int>(params.size()));
      return absl::InvalidArgumentError(
          absl::StrCat("the statement uses $", missing,
                       missing == a.params_used.back()
                           ? ""
                           : absl::StrCat(" (and up to $", a.params_used.back(), ")"),
                       "; parameters given: ", params.size()));
    }
    Routing out;
    out.kind = a.kind;
    out.locking = a.locking;
    const pg_query::Node& root = a.tree.stmts(0).stmt();
    if (a.key_param > 0 && a.key_param <= static_cast<int>(params.size()) && a.single &&
        !a.broadcast_only && a.kind != StatementKind::kDdl && !root.has_insert_stmt()) {
      // The common keyed statement: one shard's table, as the path below
      // would find it without the sets of shards and targets.
      absl::StatusOr<int> shard = ShardOf(params[a.key_param - 1]);
      if (!shard.ok()) return shard.status();
      absl::StatusOr<RoutedStatement> r = Cached(a, false, target_of[*shard]);
      if (!r.ok()) return r.status();
      out.statements.push_back(*std::move(r));
      return out;
    }

    if (a.broadcast_only) {
      // A read goes to any one database, a write or DDL to all.
      absl::StatusOr<Template> t = Render(a.tree);
      if (!t.ok()) return t.status();
      out.any_database = a.kind == StatementKind::kRead;
      auto shared = std::make_shared<const std::string>(Text(*t, 0));
      for (int db = 0; db < (out.any_database ? 1 : config.databases); ++db) {
        out.statements.push_back(RoutedStatement{-1, db, shared, 0, t->order});
      }
      return out;
    }

    std::optional<ShardSet> shards;
    if (a.kind == StatementKind::kDdl) {
      // every table
    } else if (root.has_insert_stmt()) {
      return RouteInsert(a, params, std::move(out));
    } else {
      const pg_query::Node* where = WhereOf(root);
      if (a.key_param > 0 && a.key_param <= static_cast<int>(params.size())) {
        absl::StatusOr<int> shard = ShardOf(params[a.key_param - 1]);
        if (!shard.ok()) return shard.status();
        shards = ShardSet{*shard};
      } else if (where != nullptr) {
        absl::StatusOr<std::optional<ShardSet>> k = Keys(a.key_columns, *where, params);
        if (!k.ok()) return k.status();
        shards = *k;
      }
      if (!a.single) {
        absl::StatusOr<std::optional<ShardSet>> checked = CheckGroups(a, shards, params);
        if (!checked.ok()) return checked.status();
        shards = *std::move(checked);
      }
      if (!shards.has_value() && a.kind == StatementKind::kWrite && config.writes_need_shard_key) {
        const std::string& table = *a.sharded.begin();
        const std::string& column = config.sharded_tables.at(table);
        return absl::InvalidArgumentError(absl::StrCat(
            root.has_update_stmt() ? "UPDATE" : "DELETE", " on ", table, " without its shard key (",
            column, " = ... or ", column,
            " IN (...)) would touch every shard; the config requires the key for writes"));
      }
    }
    // Keys that contradict each other (a = 1 AND a = 2) match no row; one
    // table answers (nothing) so that aggregates still answer.
    absl::InlinedVector<int, 4> targets;
    if (!shards.has_value()) {
      targets.resize(target_shard.size());
      std::iota(targets.begin(), targets.end(), 0);
    } else if (shards->empty()) {
      targets.push_back(0);
    } else {
      for (int s : *shards) targets.push_back(target_of[s]);
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    }
    bool scatter = a.kind == StatementKind::kRead && targets.size() > 1;
    if (scatter) {
      if (!a.scatter_error.ok()) return a.scatter_error;
      out.merge = a.merge;
    }
    out.statements.reserve(targets.size());
    std::optional<Template> per_call;  // a scatter whose LIMIT is a parameter
    if (scatter && a.limit_per_call) {
      pg_query::ParseResult tree = a.scatter_tree;
      absl::Status st = SetShardLimit(tree.mutable_stmts(0)->mutable_stmt()->mutable_select_stmt(),
                                      *a.merge, params);
      if (!st.ok()) return st;
      absl::StatusOr<Template> t = Render(tree);
      if (!t.ok()) return t.status();
      per_call = *std::move(t);
    }
    for (int t : targets) {
      if (per_call.has_value()) {
        out.statements.push_back(Once(*per_call, target_shard[t]));
      } else {
        absl::StatusOr<RoutedStatement> r = Cached(a, scatter, t);
        if (!r.ok()) return r.status();
        out.statements.push_back(*std::move(r));
      }
    }
    return out;
  }

  // Each row goes to its user's shard; rows of one table stay together.
  absl::StatusOr<Routing> RouteInsert(Analysis& a, absl::Span<const Value> params,
                                      Routing out) const {
    const pg_query::InsertStmt& ins = a.tree.stmts(0).stmt().insert_stmt();
    const std::string& table = ins.relation().relname();
    if (config.sharded_tables.count(table) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("INSERT into broadcast table ", table, " may not read sharded tables"));
    }
    const std::string& column = config.sharded_tables.at(table);
    int index = -1;
    for (int i = 0; i < ins.cols_size(); ++i) {
      if (ins.cols(i).has_res_target() && ins.cols(i).res_target().name() == column) index = i;
    }
    if (index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("INSERT into ", table, " must name its shard column ", column));
    }
    std::map<int, std::vector<int>> rows;  // target -> row indexes
    const auto& values = ins.select_stmt().select_stmt().values_lists();
    for (int r = 0; r < values.size(); ++r) {
      const pg_query::List& row = values.Get(r).list();
      if (index >= row.items_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("INSERT row ", r + 1, " has ", row.items_size(), " values"));
      }
      absl::StatusOr<std::optional<Value>> v = ValueOf(row.items(index), params);
      if (!v.ok()) return v.status();
      if (!v->has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("INSERT row ", r + 1, ": the shard column ",
                                                       column,
                                                       " must be a constant or a parameter"));
      }
      absl::StatusOr<int> shard = ShardOf(**v);
      if (!shard.ok()) return shard.status();
      rows[target_of[*shard]].push_back(r);
    }
    for (const auto& [target, indexes] : rows) {
      if (rows.size() == 1) {
        absl::StatusOr<RoutedStatement> r = Cached(a, false, target);
        if (!r.ok()) return r.status();
        out.statements.push_back(*std::move(r));
      } else {
        pg_query::ParseResult part = a.tree;
        auto* lists = part.mutable_stmts(0)
                          ->mutable_stmt()
                          ->mutable_insert_stmt()
                          ->mutable_select_stmt()
                          ->mutable_select_stmt()
                          ->mutable_values_lists();
        google::protobuf::RepeatedPtrField<pg_query::Node> kept;
        for (int r : indexes) *kept.Add() = values.Get(r);
        lists->Swap(&kept);
        absl::StatusOr<Template> t = Render(part);
        if (!t.ok()) return t.status();
        out.statements.push_back(Once(*t, target_shard[target]));
      }
    }
    return out;
  }
};

absl::Span<const Value> ParamsOf(const RoutedStatement& s, absl::Span<const Value> params,
                                 std::vector<Value>* storage) {
  if (s.order == nullptr) return params;
  storage->clear();
  storage->reserve(s.order->size());
  for (int k : *s.order) storage->push_back(params[k - 1]);  // checked by Route
  return *storage;
}

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  absl::Status st = impl->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() = default;

absl::StatusOr<Routing> Router::Route(absl::string_view sql, absl::Span<const Value> params) const {
  return impl_->Route(sql, params);
}

absl::StatusOr<int> Router::ShardOf(const Value& key) const { return impl_->ShardOf(key); }
int Router::DatabaseOf(int shard) const { return impl_->database_of[shard]; }

}  // namespace formica::dds
