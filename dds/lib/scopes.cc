#include "scopes.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include <algorithm>
#include <functional>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "shard_map.h"

namespace formica::dds {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

int ScopeScan::Scan(const pg_query::Node& root) {
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

std::optional<int> ScopeScan::Resolve(const pg_query::Node& n, int scope) const {
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

int ScopeScan::NewScope(int parent) {
  scopes_.emplace_back();
  scopes_.back().parent = parent;
  return static_cast<int>(scopes_.size()) - 1;
}

void ScopeScan::AddWhere(const pg_query::Node& where, int scope) {
  scopes_[scope].where = &where;
  scopes_[scope].conditions.push_back(&where);
}

void ScopeScan::Name(const std::string& name, int ref, int scope) {
  auto [it, fresh] = scopes_[scope].names.emplace(name, ref);
  if (!fresh && ref >= 0 && error_.ok()) {
    error_ = absl::InvalidArgumentError(absl::StrCat(
        "sharded table ", refs_[ref].table, " appears twice as '", name, "'; give each an alias"));
  }
}

void ScopeScan::Register(const pg_query::RangeVar& rv, int scope) {
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

void ScopeScan::AddFrom(const pg_query::Node& n, int scope) {
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

void ScopeScan::Visit(const Message& m, int scope) {
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

bool GroupTables(const ScopeScan& scan, int top,
                 const std::map<std::string, std::string>& sharded_tables,
                 std::vector<TableGroup>* groups) {
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
      const std::string& column = sharded_tables.at(refs[*l].table);
      if (column != sharded_tables.at(refs[*r].table)) continue;
      for (const pg_query::Node& u : j->using_clause()) {
        if (u.has_string() && u.string().sval() == column) parent[find(*l)] = find(*r);
      }
    }
  }
  // Groups in table order: outer scopes come first.
  std::map<size_t, int> group_of_root;
  std::vector<int> group_of(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    auto [it, fresh] = group_of_root.emplace(find(i), static_cast<int>(groups->size()));
    if (fresh) {
      TableGroup g;
      g.where = scopes[refs[i].scope].where;
      g.top = refs[i].scope == top;
      g.name = refs[i].qualifier == refs[i].table
                   ? refs[i].table
                   : absl::StrCat(refs[i].table, " ", refs[i].qualifier);
      g.example = {refs[i].qualifier, sharded_tables.at(refs[i].table)};
      (*groups).push_back(std::move(g));
    }
    group_of[i] = it->second;
    const TableRef& r = refs[i];
    (*groups)[it->second].key_columns.push_back({r.qualifier, sharded_tables.at(r.table)});
  }
  for (const auto& [outer, inner] : correlated) {
    std::vector<int>& follows = (*groups)[group_of[inner]].follows;
    if (group_of[outer] != group_of[inner]) follows.push_back(group_of[outer]);
  }
  int tops = 0;
  std::vector<bool> reached(groups->size(), false);
  for (size_t g = 0; g < groups->size(); ++g) {
    TableGroup& group = (*groups)[g];
    Normalize(&group.follows);
    if (group.top) {
      ++tops;
      reached[g] = true;
    }
    for (int o : group.follows) reached[g] = reached[g] || reached[o];
    group.tied = reached[g];
  }
  return tops == 1 && std::all_of(reached.begin(), reached.end(), [](bool r) { return r; });
}

}  // namespace formica::dds
