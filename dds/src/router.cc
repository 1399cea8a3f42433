#include "router.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include <algorithm>
#include <functional>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "sql.h"

namespace formica::dds {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using ShardSet = std::set<int>;

constexpr size_t kMaxCached = 10000;

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

// The name a column reference ends with ("user_id" of "o.user_id").
std::optional<std::string> ColumnName(const pg_query::Node& n) {
  if (!n.has_column_ref() || n.column_ref().fields_size() == 0) return std::nullopt;
  const pg_query::Node& last = n.column_ref().fields(n.column_ref().fields_size() - 1);
  if (!last.has_string()) return std::nullopt;
  return last.string().sval();
}

}  // namespace

absl::StatusOr<int> ShardOf(const std::string& user_id) {
  std::string id(absl::StripAsciiWhitespace(user_id));
  if (id.size() < 2 || !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 1])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 2]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard key '", user_id, "' does not end in two digits"));
  }
  return (id[id.size() - 2] - '0') * 10 + (id[id.size() - 1] - '0');
}

class Router::Impl {
 public:
  RouterConfig config;
  mutable absl::Mutex mu;
  mutable std::map<std::string, std::shared_ptr<const Statement>> cache ABSL_GUARDED_BY(mu);

  absl::StatusOr<std::shared_ptr<const Statement>> Parsed(const std::string& sql) const {
    {
      absl::MutexLock lock(&mu);
      if (auto it = cache.find(sql); it != cache.end()) return it->second;
    }
    absl::StatusOr<Statement> st = Parse(sql);
    if (!st.ok()) return st.status();
    auto shared = std::make_shared<const Statement>(*std::move(st));
    absl::MutexLock lock(&mu);
    if (cache.size() >= kMaxCached) cache.clear();
    cache[sql] = shared;
    return shared;
  }

  // The text of a constant or parameter; nullopt for anything else.
  absl::StatusOr<std::optional<std::string>> Value(const pg_query::Node& n,
                                                   const std::vector<std::string>& params) const {
    if (n.has_a_const()) {
      const pg_query::A_Const& c = n.a_const();
      if (c.has_ival()) return std::optional<std::string>(std::to_string(c.ival().ival()));
      if (c.has_sval()) return std::optional<std::string>(c.sval().sval());
      if (c.has_fval()) return std::optional<std::string>(c.fval().fval());
      return std::optional<std::string>();
    }
    if (n.has_param_ref()) {
      int k = n.param_ref().number();
      if (k < 1 || k > static_cast<int>(params.size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("the statement uses $", k, "; parameters given: ", params.size()));
      }
      return std::optional<std::string>(params[k - 1]);
    }
    if (n.has_type_cast()) return Value(n.type_cast().arg(), params);
    return std::optional<std::string>();
  }

  // The shards a WHERE clause confines the statement to; nullopt: any.
  absl::StatusOr<std::optional<ShardSet>> Keys(const pg_query::Node& n,
                                               const std::set<std::string>& columns,
                                               const std::vector<std::string>& params) const {
    if (n.has_bool_expr()) {
      const pg_query::BoolExpr& b = n.bool_expr();
      if (b.boolop() == pg_query::AND_EXPR) {
        std::optional<ShardSet> out;
        for (const pg_query::Node& arg : b.args()) {
          absl::StatusOr<std::optional<ShardSet>> k = Keys(arg, columns, params);
          if (!k.ok()) return k.status();
          if (!k->has_value()) continue;
          if (!out.has_value()) {
            out = **k;
          } else {
            ShardSet both;
            std::set_intersection(out->begin(), out->end(), (*k)->begin(), (*k)->end(),
                                  std::inserter(both, both.begin()));
            out = both;
          }
        }
        return out;
      }
      if (b.boolop() == pg_query::OR_EXPR) {
        ShardSet all;
        for (const pg_query::Node& arg : b.args()) {
          absl::StatusOr<std::optional<ShardSet>> k = Keys(arg, columns, params);
          if (!k.ok()) return k.status();
          if (!k->has_value()) return std::optional<ShardSet>();
          all.insert((*k)->begin(), (*k)->end());
        }
        return std::optional<ShardSet>(all);
      }
      return std::optional<ShardSet>();
    }
    if (!n.has_a_expr()) return std::optional<ShardSet>();
    const pg_query::A_Expr& e = n.a_expr();
    bool is_eq = e.kind() == pg_query::AEXPR_OP && e.name_size() == 1 && e.name(0).has_string() &&
                 e.name(0).string().sval() == "=";
    if (is_eq) {
      for (int side = 0; side < 2; ++side) {
        const pg_query::Node& col = side == 0 ? e.lexpr() : e.rexpr();
        const pg_query::Node& val = side == 0 ? e.rexpr() : e.lexpr();
        std::optional<std::string> name = ColumnName(col);
        if (!name.has_value() || columns.count(*name) == 0) continue;
        absl::StatusOr<std::optional<std::string>> v = Value(val, params);
        if (!v.ok()) return v.status();
        if (!v->has_value()) continue;
        absl::StatusOr<int> shard = ShardOf(**v);
        if (!shard.ok()) return shard.status();
        return std::optional<ShardSet>(ShardSet{*shard});
      }
      return std::optional<ShardSet>();
    }
    if (e.kind() == pg_query::AEXPR_IN) {
      std::optional<std::string> name = ColumnName(e.lexpr());
      if (!name.has_value() || columns.count(*name) == 0 || !e.rexpr().has_list()) {
        return std::optional<ShardSet>();
      }
      bool negated = e.name_size() == 1 && e.name(0).has_string() &&
                     e.name(0).string().sval() == "<>";  // NOT IN
      if (negated) return std::optional<ShardSet>();
      ShardSet out;
      for (const pg_query::Node& item : e.rexpr().list().items()) {
        absl::StatusOr<std::optional<std::string>> v = Value(item, params);
        if (!v.ok()) return v.status();
        if (!v->has_value()) return std::optional<ShardSet>();
        absl::StatusOr<int> shard = ShardOf(**v);
        if (!shard.ok()) return shard.status();
        out.insert(*shard);
      }
      return std::optional<ShardSet>(out);
    }
    return std::optional<ShardSet>();
  }

  // `tree` with each sharded table renamed to its table in `shard`.
  absl::StatusOr<std::string> Rewrite(pg_query::ParseResult tree, int shard) const {
    Walk(&tree, [&](Message* m) {
      if (m->GetDescriptor() != pg_query::RangeVar::descriptor()) return;
      auto* rv = static_cast<pg_query::RangeVar*>(m);
      if (config.sharded_tables.count(rv->relname()) > 0) {
        rv->set_relname(absl::StrFormat("%s_%02d", rv->relname(), shard));
      }
    });
    return Deparse(tree);
  }

  absl::StatusOr<std::vector<RoutedStatement>> Route(const std::string& sql,
                                                     const std::vector<std::string>& params) const {
    absl::StatusOr<std::shared_ptr<const Statement>> parsed = Parsed(sql);
    if (!parsed.ok()) return parsed.status();
    const pg_query::ParseResult& tree = (*parsed)->tree;
    const pg_query::Node& root = tree.stmts(0).stmt();
    bool write = root.has_insert_stmt() || root.has_update_stmt() || root.has_delete_stmt();
    if (!write && !root.has_select_stmt()) {
      return absl::InvalidArgumentError(
          "only SELECT, INSERT, UPDATE and DELETE can be routed by shard");
    }
    // The tables it names: each must be known.
    std::set<std::string> sharded;
    absl::Status unknown;
    pg_query::ParseResult copy = tree;
    Walk(&copy, [&](Message* m) {
      if (m->GetDescriptor() != pg_query::RangeVar::descriptor()) return;
      const auto* rv = static_cast<const pg_query::RangeVar*>(m);
      if (config.sharded_tables.count(rv->relname()) > 0) {
        sharded.insert(rv->relname());
      } else if (config.broadcast_tables.count(rv->relname()) == 0 && unknown.ok()) {
        unknown = absl::InvalidArgumentError(
            absl::StrCat("unknown table '", rv->relname(),
                         "': it is neither sharded nor broadcast in the config"));
      }
    });
    if (!unknown.ok()) return unknown;
    if (root.has_insert_stmt() &&
        !(root.insert_stmt().select_stmt().has_select_stmt() &&
          root.insert_stmt().select_stmt().select_stmt().values_lists_size() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("INSERT into ",
                                                     root.insert_stmt().relation().relname(),
                                                     " must give its rows as VALUES"));
    }
    std::vector<RoutedStatement> out;
    if (sharded.empty()) {
      // Broadcast tables only: a read goes to one database, a write to all.
      absl::StatusOr<std::string> text = Deparse(tree);
      if (!text.ok()) return text.status();
      for (int db = 0; db < (write ? config.databases : 1); ++db) {
        out.push_back(RoutedStatement{db * kLogicalShards / config.databases, db, *text});
      }
      return out;
    }
    if (sharded.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the statement joins sharded tables ", absl::StrJoin(sharded, ", "),
                       " across shards; join a sharded table only with broadcast tables"));
    }
    const std::string& table = *sharded.begin();
    const std::string& column = config.sharded_tables.at(table);
    std::set<std::string> columns = {column};

    if (root.has_insert_stmt()) return RouteInsert(tree, table, column, params);

    const pg_query::Node* where = nullptr;
    if (root.has_update_stmt()) {
      for (const pg_query::Node& t : root.update_stmt().target_list()) {
        if (t.has_res_target() && t.res_target().name() == column) {
          return absl::InvalidArgumentError(
              absl::StrCat("UPDATE may not change the shard column ", table, ".", column,
                           ": the row would belong to another shard"));
        }
      }
      if (root.update_stmt().has_where_clause()) where = &root.update_stmt().where_clause();
    } else if (root.has_delete_stmt()) {
      if (root.delete_stmt().has_where_clause()) where = &root.delete_stmt().where_clause();
    } else if (root.select_stmt().has_where_clause()) {
      where = &root.select_stmt().where_clause();
    }
    std::optional<ShardSet> shards;
    if (where != nullptr) {
      absl::StatusOr<std::optional<ShardSet>> k = Keys(*where, columns, params);
      if (!k.ok()) return k.status();
      shards = *k;
    }
    if (!shards.has_value() && !root.has_select_stmt() && config.writes_need_shard_key) {
      return absl::InvalidArgumentError(absl::StrCat(
          root.has_update_stmt() ? "UPDATE" : "DELETE", " on ", table, " without its shard key (",
          column, " = ... or ", column,
          " IN (...)) would touch every shard; the config requires the key for writes"));
    }
    // No key: every shard. Keys that contradict each other: every shard too
    // (each finds nothing), so that aggregates still answer.
    if (!shards.has_value() || shards->empty()) {
      shards = ShardSet();
      for (int s = 0; s < kLogicalShards; ++s) shards->insert(s);
    }
    for (int s : *shards) {
      absl::StatusOr<std::string> text = Rewrite(tree, s);
      if (!text.ok()) return text.status();
      out.push_back(RoutedStatement{s, DatabaseOf(s), *text});
    }
    return out;
  }

  // Each row goes to its user's shard; rows of one shard stay together.
  absl::StatusOr<std::vector<RoutedStatement>> RouteInsert(
      const pg_query::ParseResult& tree, const std::string& table, const std::string& column,
      const std::vector<std::string>& params) const {
    const pg_query::InsertStmt& ins = tree.stmts(0).stmt().insert_stmt();
    int index = -1;
    for (int i = 0; i < ins.cols_size(); ++i) {
      if (ins.cols(i).has_res_target() && ins.cols(i).res_target().name() == column) index = i;
    }
    if (index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("INSERT into ", table, " must name its shard column ", column));
    }
    if (!ins.select_stmt().has_select_stmt() ||
        ins.select_stmt().select_stmt().values_lists_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("INSERT into ", table, " must give its rows as VALUES"));
    }
    std::map<int, std::vector<int>> rows;  // shard -> row indexes
    const auto& values = ins.select_stmt().select_stmt().values_lists();
    for (int r = 0; r < values.size(); ++r) {
      const pg_query::List& row = values.Get(r).list();
      if (index >= row.items_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("INSERT row ", r + 1, " has ", row.items_size(), " values"));
      }
      absl::StatusOr<std::optional<std::string>> v = Value(row.items(index), params);
      if (!v.ok()) return v.status();
      if (!v->has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("INSERT row ", r + 1, ": the shard column ",
                                                       column,
                                                       " must be a constant or a parameter"));
      }
      absl::StatusOr<int> shard = ShardOf(**v);
      if (!shard.ok()) return shard.status();
      rows[*shard].push_back(r);
    }
    std::vector<RoutedStatement> out;
    for (const auto& [shard, indexes] : rows) {
      pg_query::ParseResult part = tree;
      auto* lists = part.mutable_stmts(0)
                        ->mutable_stmt()
                        ->mutable_insert_stmt()
                        ->mutable_select_stmt()
                        ->mutable_select_stmt()
                        ->mutable_values_lists();
      google::protobuf::RepeatedPtrField<pg_query::Node> kept;
      for (int r : indexes) *kept.Add() = values.Get(r);
      lists->Swap(&kept);
      absl::StatusOr<std::string> text = Rewrite(std::move(part), shard);
      if (!text.ok()) return text.status();
      out.push_back(RoutedStatement{shard, DatabaseOf(shard), *text});
    }
    return out;
  }

  int DatabaseOf(int shard) const { return shard * config.databases / kLogicalShards; }
};

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterConfig config) {
  if (config.sharded_tables.empty() && config.broadcast_tables.empty()) {
    return absl::InvalidArgumentError("the DDS config names no tables");
  }
  if (config.databases < 1 || config.databases > kLogicalShards) {
    return absl::InvalidArgumentError(
        absl::StrCat("databases must be 1 to ", kLogicalShards, ", not ", config.databases));
  }
  for (const auto& [table, column] : config.sharded_tables) {
    if (config.broadcast_tables.count(table) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("table '", table, "' cannot be both sharded and broadcast"));
    }
    if (column.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("table '", table, "' needs a shard column"));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() = default;

absl::StatusOr<std::vector<RoutedStatement>> Router::Route(
    const std::string& sql, const std::vector<std::string>& params) const {
  return impl_->Route(sql, params);
}

int Router::DatabaseOf(int shard) const { return impl_->DatabaseOf(shard); }

}  // namespace formica::dds
