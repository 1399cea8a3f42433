#include "scatter_plan.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "parse_tree.h"

namespace formica::dds {
namespace {

constexpr char kHiddenPrefix[] = "__dds_";

// Plans one SELECT's scatter, step by step (see Plan); used once.
class ScatterPlanner {
 public:
  ScatterPlanner(const RouterConfig& config, const pg_query::SelectStmt& s)
      : config_(config), s_(s), sqlite_(config.sqlite), plan_(std::make_shared<MergePlan>()) {}

  absl::Status Plan(Analysis* a);

 private:
  // A column of the shards' statement: the select list's, then hidden ones.
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
  // Where the merge finds a collation, with target indexes still to be
  // made column references once `targets_` is complete (see Resolved).
  struct Pending {
    CollationSource source;
    int declared = -2, reported = -2;  // target indexes; -1: by_name
    const pg_query::Node* by_name = nullptr;
  };

  // What no merge can do: set operations, HAVING, sharded tables only in
  // subqueries, DISTINCT ON, WITH TIES.
  absl::Status CheckShape();
  // The select list as targets; which are aggregates; where the * are.
  absl::Status ReadSelectList();
  // Finds or adds the target an ORDER BY / GROUP BY expression names; -1:
  // a column found by name in the result of a SELECT *.
  absl::StatusOr<int> TargetFor(const pg_query::Node& n, bool order);
  absl::Status ReadGroupBy();
  absl::Status ReadOrderBy();
  // AVG is merged from hidden SUM and COUNT of the same argument.
  void AddAvgParts();
  // A hidden column the merge reads, added once per expression.
  int Meta(pg_query::Node val);
  // Target i (or expression n) named for messages.
  std::string Describe(int i, const pg_query::Node& n) const;
  // Where the merge finds the collation target i (or, under SELECT *,
  // the column `by_name`) compares by: as a key (sorted, grouped,
  // DISTINCT) or, `folding`, as min/max compare their argument. SQLite:
  // COLLATE at the top of the expression (under CASTs and unary pluses),
  // else the collation the table declares for the column there, else
  // BINARY (an aggregate's result too); an expression with COLLATE or a
  // subquery inside is refused. PostgreSQL: the database tells,
  // pg_collation_for the expression. Column references are made once
  // `targets_` is complete.
  absl::StatusOr<Pending> CollationOf(int i, const pg_query::Node* by_name, bool folding);
  // The collations of sort keys, group keys, DISTINCT columns and min/max.
  absl::Status FindCollations();
  void AddSumTypes();
  // `targets_` is complete: counts the hidden ones, and checks what
  // DISTINCT and ORDER BY between two * need of them.
  absl::Status FinishTargets();
  // Under SELECT *, an item is found by its place from the start when
  // before the first *, from the end when after the last (as the hidden
  // ones are), by name in between.
  ColumnRef Ref(int i, const pg_query::Node& n) const;
  CollationSource Resolved(const Pending& p) const;
  // Ops, AVG parts, sum types, group keys, DISTINCT and sort keys.
  void FillPlan();
  // LIMIT or OFFSET `n`: none, a constant or a parameter.
  static absl::StatusOr<std::optional<Bound>> BoundOf(const pg_query::Node& n, const char* what);
  absl::Status ReadBounds();
  // Target i as the shards select it (a PostgreSQL sum as exact text).
  pg_query::Node ShardVal(int i) const;
  // The statement each shard runs.
  absl::Status WriteShardStatement(Analysis* a);

  const RouterConfig& config_;
  const pg_query::SelectStmt& s_;
  const bool sqlite_;
  std::shared_ptr<MergePlan> plan_;
  std::vector<Target> targets_;
  bool star_ = false;
  int first_star_ = -1, last_star_ = -1;  // targets that are a *
  size_t visible_ = 0;                    // the select list's targets
  bool aggregate_ = false;                // aggregates or GROUP BY
  std::vector<int> group_index_;          // per GROUP BY item: its target
  std::vector<std::pair<int, const pg_query::SortBy*>> order_index_;  // per ORDER BY item
  std::vector<std::pair<int, int>> avg_parts_index_;  // per AVG target: its SUM and COUNT targets
  std::map<std::string, int> meta_index_;             // Meta's: fingerprint -> target
  std::vector<Pending> order_collations_, group_collations_, distinct_collations_;
  std::vector<std::pair<int, Pending>> op_collations_;
  size_t before_meta_ = 0;           // targets before those of min/max collations
  std::vector<int> sum_type_index_;  // per target: its pg_typeof target, -1 if none
  int total_ = 0;                    // targets, hidden ones included
};

absl::Status ScatterPlanner::Plan(Analysis* a) {
  if (absl::Status st = CheckShape(); !st.ok()) return st;
  if (absl::Status st = ReadSelectList(); !st.ok()) return st;
  if (absl::Status st = ReadGroupBy(); !st.ok()) return st;
  if (absl::Status st = ReadOrderBy(); !st.ok()) return st;
  plan_->dialect = sqlite_ ? Dialect::kSqlite : Dialect::kPostgres;
  AddAvgParts();
  if (absl::Status st = FindCollations(); !st.ok()) return st;
  AddSumTypes();
  if (absl::Status st = FinishTargets(); !st.ok()) return st;
  FillPlan();
  if (absl::Status st = ReadBounds(); !st.ok()) return st;
  if (absl::Status st = WriteShardStatement(a); !st.ok()) return st;
  a->merge = std::move(plan_);
  return absl::OkStatus();
}

absl::Status ScatterPlanner::CheckShape() {
  if (s_.op() != pg_query::SETOP_NONE) {
    return absl::InvalidArgumentError(
        "UNION, INTERSECT and EXCEPT over sharded tables need the shard key");
  }
  if (s_.has_having_clause()) {
    return absl::InvalidArgumentError(
        "HAVING over sharded tables needs the shard key (it would filter each shard's part of a "
        "group)");
  }
  bool top_level_sharded = false;
  std::function<void(const pg_query::Node&)> from = [&](const pg_query::Node& n) {
    if (n.has_range_var() && config_.sharded_tables.count(n.range_var().relname()) > 0) {
      top_level_sharded = true;
    }
    if (n.has_join_expr()) {
      from(n.join_expr().larg());
      from(n.join_expr().rarg());
    }
  };
  for (const pg_query::Node& n : s_.from_clause()) from(n);
  if (!top_level_sharded) {
    return absl::InvalidArgumentError(
        "a sharded table read only in a subquery cannot be read across shards; read it in the "
        "outer query's FROM, joined on its shard column");
  }
  if (s_.distinct_clause_size() > 0) {
    if (s_.distinct_clause_size() != 1 ||
        s_.distinct_clause(0).node_case() != pg_query::Node::NODE_NOT_SET) {
      return absl::InvalidArgumentError("DISTINCT ON over sharded tables needs the shard key");
    }
    plan_->distinct = true;
  }
  if (s_.limit_option() == pg_query::LIMIT_OPTION_WITH_TIES) {
    return absl::InvalidArgumentError(
        "FETCH ... WITH TIES over sharded tables needs the shard key");
  }
  return absl::OkStatus();
}

absl::Status ScatterPlanner::ReadSelectList() {
  for (const pg_query::Node& t : s_.target_list()) {
    if (!t.has_res_target()) continue;
    const pg_query::ResTarget& rt = t.res_target();
    Target x;
    x.val = rt.val();
    if (rt.val().has_column_ref()) {
      const auto& f = rt.val().column_ref().fields();
      if (!f.empty() && f[f.size() - 1].has_a_star()) {
        star_ = true;
        if (first_star_ < 0) first_star_ = static_cast<int>(targets_.size());
        last_star_ = static_cast<int>(targets_.size());
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
      return absl::InvalidArgumentError("window functions over sharded tables need the shard key");
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
    targets_.push_back(std::move(x));
  }
  visible_ = targets_.size();
  aggregate_ = s_.group_clause_size() > 0;
  for (const Target& t : targets_) aggregate_ = aggregate_ || t.op != MergeOp::kKeep;
  if (aggregate_ && star_) {
    return absl::InvalidArgumentError(
        "SELECT * with aggregates over sharded tables is not supported");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ScatterPlanner::TargetFor(const pg_query::Node& n, bool order) {
  if (n.has_a_const() && n.a_const().has_ival()) {
    int k = n.a_const().ival().ival();
    if (star_) {
      return absl::InvalidArgumentError(
          "ORDER BY or GROUP BY a position after SELECT * over sharded tables is not "
          "supported; name the column");
    }
    if (k < 1 || k > static_cast<int>(visible_)) {
      return absl::InvalidArgumentError(absl::StrCat("position ", k, " is not in the select list"));
    }
    return k - 1;
  }
  std::string fp = Fingerprint(n);
  for (size_t i = 0; i < targets_.size(); ++i) {
    if (Fingerprint(targets_[i].val) == fp) return static_cast<int>(i);
  }
  std::optional<Column> c = ColumnOf(n);
  if (order && c.has_value() && c->qualifier.empty()) {
    for (size_t i = 0; i < visible_; ++i) {
      if (targets_[i].name == c->name) return static_cast<int>(i);
    }
  }
  if (star_ && c.has_value() && c->qualifier.empty()) return -1;  // by name in the result
  Target x;
  x.val = n;
  x.hidden = true;
  std::optional<MergeOp> op = AggregateOf(n);
  if (op.has_value()) x.op = *op;
  targets_.push_back(std::move(x));
  return static_cast<int>(targets_.size() - 1);
}

absl::Status ScatterPlanner::ReadGroupBy() {
  for (const pg_query::Node& g : s_.group_clause()) {
    if (g.has_grouping_set()) {
      return absl::InvalidArgumentError(
          "ROLLUP, CUBE and GROUPING SETS over sharded tables need the shard key");
    }
    absl::StatusOr<int> i = TargetFor(g, false);
    if (!i.ok()) return i.status();
    group_index_.push_back(*i);
  }
  if (aggregate_) {
    for (size_t i = 0; i < visible_; ++i) {
      if (targets_[i].op == MergeOp::kKeep &&
          std::find(group_index_.begin(), group_index_.end(), static_cast<int>(i)) ==
              group_index_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "select list item ", i + 1, (targets_[i].name.empty() ? "" : " ("), targets_[i].name,
            (targets_[i].name.empty() ? "" : ")"),
            " is neither an aggregate nor in GROUP BY, so shards' rows cannot be merged"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ScatterPlanner::ReadOrderBy() {
  for (const pg_query::Node& o : s_.sort_clause()) {
    if (!o.has_sort_by()) continue;
    const pg_query::SortBy& sb = o.sort_by();
    if (sb.sortby_dir() == pg_query::SORTBY_USING) {
      return absl::InvalidArgumentError("ORDER BY ... USING over sharded tables is not supported");
    }
    absl::StatusOr<int> i = TargetFor(sb.node(), true);
    if (!i.ok()) return i.status();
    if (aggregate_ && *i >= 0 && targets_[*i].hidden && targets_[*i].op == MergeOp::kKeep &&
        std::find(group_index_.begin(), group_index_.end(), *i) == group_index_.end()) {
      return absl::InvalidArgumentError(
          "ORDER BY over sharded tables with aggregates must name an aggregate or a GROUP BY "
          "expression");
    }
    order_index_.emplace_back(*i, &sb);
  }
  return absl::OkStatus();
}

void ScatterPlanner::AddAvgParts() {
  // AVG is merged from hidden SUM and COUNT of the same argument (on
  // SQLite total(), which like avg() never fails on integer overflow).
  avg_parts_index_.assign(targets_.size(), {-1, -1});
  const size_t before_avg = targets_.size();
  for (size_t i = 0; i < before_avg; ++i) {
    if (targets_[i].op != MergeOp::kAvg) continue;
    for (const char* name : {"sum", "count"}) {
      const bool sum = name[0] == 's';
      Target x;
      x.val = targets_[i].val;
      pg_query::FuncCall* f = x.val.mutable_func_call();
      f->clear_funcname();
      f->add_funcname()->mutable_string()->set_sval(sum && sqlite_ ? "total" : name);
      x.op = sum ? MergeOp::kSum : MergeOp::kCount;
      x.hidden = true;
      targets_.push_back(std::move(x));
      (sum ? avg_parts_index_[i].first : avg_parts_index_[i].second) =
          static_cast<int>(targets_.size() - 1);
    }
  }
}

int ScatterPlanner::Meta(pg_query::Node val) {
  std::string fp = Fingerprint(val);
  auto it = meta_index_.find(fp);
  if (it != meta_index_.end()) return it->second;
  Target x;
  x.val = std::move(val);
  x.hidden = true;
  x.meta = true;
  targets_.push_back(std::move(x));
  int i = static_cast<int>(targets_.size() - 1);
  meta_index_.emplace(fp, i);
  return i;
}

std::string ScatterPlanner::Describe(int i, const pg_query::Node& n) const {
  if (i >= 0 && i < static_cast<int>(visible_) && !targets_[i].name.empty()) {
    return absl::StrCat("column ", targets_[i].name);
  }
  if (std::optional<Column> c = ColumnOf(Peeled(n)); c.has_value()) {
    return absl::StrCat("column ", c->qualifier.empty() ? "" : c->qualifier + ".", c->name);
  }
  if (i >= 0 && i < static_cast<int>(visible_)) return absl::StrCat("select list item ", i + 1);
  return "an ORDER BY or GROUP BY expression";
}

absl::StatusOr<ScatterPlanner::Pending> ScatterPlanner::CollationOf(int i,
                                                                    const pg_query::Node* by_name,
                                                                    bool folding) {
  Pending p;
  const pg_query::Node& expr = i >= 0 ? targets_[i].val : *by_name;
  p.source.what = Describe(i, expr);
  p.by_name = by_name;
  MergeOp op = i >= 0 ? targets_[i].op : MergeOp::kKeep;
  if (op == MergeOp::kCount || op == MergeOp::kSum || op == MergeOp::kAvg) return p;  // numbers
  if (!sqlite_) {
    // As text, so that it answers for every type; the merge heeds it
    // only for the text types (Connection::Execute tells which).
    p.reported = Meta(Call("pg_collation_for", AsText(expr)));
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
    p.declared = &peeled == &expr ? i : Meta(peeled);
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
}

absl::Status ScatterPlanner::FindCollations() {
  for (const auto& [i, sb] : order_index_) {
    absl::StatusOr<Pending> p = CollationOf(i, &sb->node(), false);
    if (!p.ok()) return p.status();
    order_collations_.push_back(*std::move(p));
  }
  for (size_t g = 0; g < group_index_.size(); ++g) {
    absl::StatusOr<Pending> p =
        CollationOf(group_index_[g], &s_.group_clause(static_cast<int>(g)), false);
    if (!p.ok()) return p.status();
    group_collations_.push_back(*std::move(p));
  }
  if (plan_->distinct) {
    if (star_ && !sqlite_) {
      return absl::InvalidArgumentError(
          "SELECT DISTINCT * over sharded PostgreSQL tables is not merged (each column's "
          "collation must be asked for); name the columns");
    }
    for (size_t i = 0; i < visible_; ++i) {
      if (star_ && targets_[i].val.has_column_ref()) continue;  // the *, or a column beside it
      absl::StatusOr<Pending> p = CollationOf(static_cast<int>(i), nullptr, false);
      if (!p.ok()) return p.status();
      if (star_ && (!p->source.named.empty() || p->declared >= 0)) {
        return absl::InvalidArgumentError(
            "SELECT DISTINCT * with COLLATE or CAST beside the * over sharded tables is not "
            "merged; name the columns");
      }
      if (!star_) distinct_collations_.push_back(*std::move(p));
    }
  }
  before_meta_ = targets_.size();
  for (size_t i = 0; i < before_meta_; ++i) {
    if (targets_[i].op != MergeOp::kMin && targets_[i].op != MergeOp::kMax) continue;
    absl::StatusOr<Pending> p = CollationOf(static_cast<int>(i), nullptr, true);
    if (!p.ok()) return p.status();
    op_collations_.emplace_back(static_cast<int>(i), *std::move(p));
  }
  return absl::OkStatus();
}

void ScatterPlanner::AddSumTypes() {
  // PostgreSQL sums are read as exact text, with their type beside them.
  sum_type_index_.assign(targets_.size(), -1);
  if (!sqlite_) {
    for (size_t i = 0; i < before_meta_; ++i) {
      if (targets_[i].op == MergeOp::kSum)
        sum_type_index_[i] = Meta(Call("pg_typeof", targets_[i].val));
    }
  }
}

absl::Status ScatterPlanner::FinishTargets() {
  total_ = static_cast<int>(targets_.size());
  plan_->aggregate = aggregate_;
  plan_->hidden = total_ - static_cast<int>(visible_);
  if (plan_->distinct) {
    for (int i = static_cast<int>(visible_); i < total_; ++i) {
      if (!targets_[i].meta) {
        return absl::InvalidArgumentError(
            "SELECT DISTINCT over sharded tables must select every ORDER BY and GROUP BY "
            "expression");
      }
    }
  }
  for (const auto& [i, sb] : order_index_) {
    if (star_ && i > first_star_ && i < last_star_ && targets_[i].name.empty()) {
      return absl::InvalidArgumentError(
          "over sharded tables, an expression between two * that ORDER BY names needs a name "
          "(AS ...)");
    }
  }
  return absl::OkStatus();
}

ColumnRef ScatterPlanner::Ref(int i, const pg_query::Node& n) const {
  ColumnRef r;
  if (i < 0) {
    r.name = ColumnOf(n)->name;
  } else if (star_) {
    if (i > last_star_) {
      r.from_end = total_ - i;
    } else if (i < first_star_) {
      r.index = i;
    } else {
      r.name = targets_[i].name;
    }
  } else {
    r.index = i;
  }
  return r;
}

CollationSource ScatterPlanner::Resolved(const Pending& p) const {
  static const pg_query::Node kNone;
  const pg_query::Node& by_name = p.by_name != nullptr ? *p.by_name : kNone;
  CollationSource out = p.source;
  if (p.declared >= -1) out.declared = Ref(p.declared, by_name);
  if (p.reported >= 0) out.reported = Ref(p.reported, by_name);
  return out;
}

void ScatterPlanner::FillPlan() {
  if (aggregate_) {
    plan_->ops.resize(total_);
    plan_->avg_parts.resize(total_);
    plan_->sum_types.resize(total_);
    plan_->op_collations.resize(total_);
    for (int i = 0; i < total_; ++i) {
      plan_->ops[i] = targets_[i].op;
      if (targets_[i].op == MergeOp::kAvg) {
        plan_->avg_parts[i] = {total_ - avg_parts_index_[i].first,
                               total_ - avg_parts_index_[i].second};
      }
      if (i < static_cast<int>(sum_type_index_.size()) && sum_type_index_[i] >= 0) {
        plan_->sum_types[i] = total_ - sum_type_index_[i];
      }
    }
    for (const auto& [i, p] : op_collations_) plan_->op_collations[i] = Resolved(p);
    for (size_t g = 0; g < group_index_.size(); ++g) {
      plan_->group_by.push_back(Ref(group_index_[g], s_.group_clause(static_cast<int>(g))));
      plan_->group_collations.push_back(Resolved(group_collations_[g]));
    }
  }
  for (const Pending& p : distinct_collations_) plan_->distinct_collations.push_back(Resolved(p));
  for (size_t k = 0; k < order_index_.size(); ++k) {
    const auto& [i, sb] = order_index_[k];
    SortKey key;
    key.column = Ref(i, sb->node());
    key.descending = sb->sortby_dir() == pg_query::SORTBY_DESC;
    if (sb->sortby_nulls() == pg_query::SORTBY_NULLS_FIRST) key.nulls_first = true;
    if (sb->sortby_nulls() == pg_query::SORTBY_NULLS_LAST) key.nulls_first = false;
    key.collation = Resolved(order_collations_[k]);
    plan_->order_by.push_back(key);
  }
}

absl::StatusOr<std::optional<Bound>> ScatterPlanner::BoundOf(const pg_query::Node& n,
                                                             const char* what) {
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
}

absl::Status ScatterPlanner::ReadBounds() {
  absl::StatusOr<std::optional<Bound>> limit = BoundOf(s_.limit_count(), "LIMIT");
  if (!limit.ok()) return limit.status();
  absl::StatusOr<std::optional<Bound>> offset = BoundOf(s_.limit_offset(), "OFFSET");
  if (!offset.ok()) return offset.status();
  plan_->limit = *limit;
  plan_->offset = *offset;
  return absl::OkStatus();
}

pg_query::Node ScatterPlanner::ShardVal(int i) const {
  return sum_type_index_.size() > static_cast<size_t>(i) && sum_type_index_[i] >= 0
             ? AsText(targets_[i].val)
             : targets_[i].val;
}

absl::Status ScatterPlanner::WriteShardStatement(Analysis* a) {
  // The statement each shard runs.
  a->scatter_tree = a->tree;
  pg_query::SelectStmt* out =
      a->scatter_tree.mutable_stmts(0)->mutable_stmt()->mutable_select_stmt();
  int item = 0;
  for (pg_query::Node& t : *out->mutable_target_list()) {
    if (!t.has_res_target()) continue;
    *t.mutable_res_target()->mutable_val() = ShardVal(item++);
  }
  for (int i = static_cast<int>(visible_); i < total_; ++i) {
    pg_query::ResTarget* rt = out->add_target_list()->mutable_res_target();
    rt->set_name(absl::StrCat(kHiddenPrefix, i - visible_ + 1));
    *rt->mutable_val() = ShardVal(i);
  }
  if (aggregate_) {
    out->clear_sort_clause();
    out->clear_limit_count();
    out->clear_limit_offset();
  } else if (plan_->limit.has_value() || plan_->offset.has_value()) {
    a->limit_per_call = (plan_->limit.has_value() && plan_->limit->param != 0) ||
                        (plan_->offset.has_value() && plan_->offset->param != 0);
    if (!a->limit_per_call) {
      absl::Status st = SetShardLimit(out, *plan_, {});
      if (!st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PlanScatter(const RouterConfig& config, Analysis* a) {
  return ScatterPlanner(config, a->tree.stmts(0).stmt().select_stmt()).Plan(a);
}

absl::Status SetShardLimit(pg_query::SelectStmt* s, const MergePlan& plan,
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

}  // namespace formica::dds
