#include "shard_keys.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace formica::dds {
namespace {

absl::StatusOr<std::optional<ShardSet>> Shards(const ShardMap& map, const Value& v) {
  absl::StatusOr<int> shard = map.ShardOf(v);
  if (!shard.ok()) return shard.status();
  return std::optional<ShardSet>(ShardSet{*shard});
}

absl::Status Unjoined(const TableGroup& a, const TableGroup& b) {
  return absl::InvalidArgumentError(
      absl::StrCat("the statement joins sharded tables ", a.name.substr(0, a.name.find(' ')),
                   " and ", b.name.substr(0, b.name.find(' ')),
                   " across shards; join them on their shard columns (", a.example.qualifier, ".",
                   a.example.name, " = ", b.example.qualifier, ".", b.example.name, ")"));
}

absl::Status Untied(const TableGroup& outer, const TableGroup& inner, const std::string& where) {
  bool same = inner.example.qualifier == outer.example.qualifier;
  return absl::InvalidArgumentError(absl::StrCat(
      "the subquery reading ", inner.name, " is not tied to ", where, ": ",
      same ? "give it an alias and correlate" : "correlate",
      " it with the outer query on the shard column (", same ? "x" : inner.example.qualifier, ".",
      inner.example.name, " = ", outer.example.qualifier, ".", outer.example.name,
      "), or give the statement and the subquery one shard key"));
}

}  // namespace

absl::StatusOr<std::optional<Value>> ValueOf(const pg_query::Node& n,
                                             absl::Span<const Value> params) {
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

bool IsKeyColumn(const std::vector<Column>& keys, const pg_query::Node& n) {
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

int KeyParam(const std::vector<Column>& key_columns, const pg_query::Node& where) {
  std::vector<const pg_query::Node*> parts;
  Conjuncts(where, &parts);
  int found = 0, mentions = 0;
  for (const pg_query::Node* p : parts) {
    bool mentioned = false;
    ForEach<pg_query::ColumnRef>(*p, [&](const pg_query::ColumnRef& c) {
      pg_query::Node n;
      *n.mutable_column_ref() = c;
      mentioned = mentioned || IsKeyColumn(key_columns, n);
    });
    if (!mentioned) continue;
    ++mentions;
    if (!p->has_a_expr() || !IsOperator(p->a_expr(), "=")) continue;
    const pg_query::A_Expr& e = p->a_expr();
    if (IsKeyColumn(key_columns, e.lexpr()) && e.rexpr().has_param_ref()) {
      found = e.rexpr().param_ref().number();
    } else if (IsKeyColumn(key_columns, e.rexpr()) && e.lexpr().has_param_ref()) {
      found = e.lexpr().param_ref().number();
    }
  }
  return mentions == 1 ? found : 0;
}

absl::StatusOr<std::optional<ShardSet>> ShardsOfWhere(const ShardMap& map,
                                                      const std::vector<Column>& keys,
                                                      const pg_query::Node& n,
                                                      absl::Span<const Value> params) {
  if (n.has_bool_expr()) {
    const pg_query::BoolExpr& b = n.bool_expr();
    if (b.boolop() == pg_query::AND_EXPR) {
      std::optional<ShardSet> out;
      for (const pg_query::Node& arg : b.args()) {
        absl::StatusOr<std::optional<ShardSet>> k = ShardsOfWhere(map, keys, arg, params);
        if (!k.ok()) return k.status();
        if (!k->has_value()) continue;
        out = out.has_value() ? Intersect(*out, **k) : **k;
      }
      return out;
    }
    if (b.boolop() == pg_query::OR_EXPR) {
      ShardSet all;
      for (const pg_query::Node& arg : b.args()) {
        absl::StatusOr<std::optional<ShardSet>> k = ShardsOfWhere(map, keys, arg, params);
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
      return Shards(map, **v);
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
      absl::StatusOr<int> shard = map.ShardOf(**v);
      if (!shard.ok()) return shard.status();
      out.push_back(*shard);
    }
    Normalize(&out);
    return std::optional<ShardSet>(std::move(out));
  }
  return std::optional<ShardSet>();
}

absl::StatusOr<std::optional<ShardSet>> CheckGroups(const ShardMap& map, const Analysis& a,
                                                    std::optional<ShardSet> shards,
                                                    absl::Span<const Value> params) {
  const std::vector<TableGroup>& groups = a.groups;
  std::vector<std::optional<ShardSet>> keys(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].where == nullptr) continue;
    absl::StatusOr<std::optional<ShardSet>> k =
        ShardsOfWhere(map, groups[g].key_columns, *groups[g].where, params);
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
  const int shard = shards->empty() ? map.target_shard[0] : (*shards)[0];
  std::vector<bool> held(groups.size(), false);
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::optional<ShardSet>& k = keys[g];
    held[g] = k.has_value() && std::all_of(k->begin(), k->end(), [&](int s) { return s == shard; });
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
    return Untied(groups[first_top >= 0 ? first_top : 0], groups[g], absl::StrCat("shard ", shard));
  }
  return shards;
}

}  // namespace formica::dds
