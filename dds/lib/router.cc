// The router's entry: a statement's analysis, made once per text and
// cached (shared, and per thread for the most recent), and each call's
// routing of it: the fast path of a statement keyed by one parameter,
// broadcast tables, INSERT rows split by shard, and everything else by the
// shards its keys name. The analysis itself is in analysis.cc, keys in
// shard_keys.cc, the scatter's merge plan in scatter_plan.cc, the texts in
// statement_writer.cc.
#include "router.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <shared_mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "analysis.h"
#include "backend.h"
#include "scatter_plan.h"
#include "shard_keys.h"
#include "shard_map.h"
#include "sql.h"
#include "statement_writer.h"

namespace formica::dds {
namespace {

constexpr size_t kMaxCached = 10000;

}  // namespace

class Router::Impl {
 public:
  Impl(RouterConfig c, ShardMap m)
      : config(std::move(c)), map(std::move(m)), writer(&config.sharded_tables, config.sqlite) {}

  const RouterConfig config;
  const ShardMap map;
  const StatementWriter writer;
  const uint64_t id = NextSerial();  // tells routers apart in per-thread caches

  mutable std::shared_mutex mu;  // see Analysis::mu
  mutable absl::flat_hash_map<std::string, std::shared_ptr<Analysis>> cache;

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
    a->error = Analyze(config, a.get());
    a->plain_statement.reset(new std::atomic<const RoutedStatement*>[map.target_shard.size()]());
    a->scatter_statement.reset(new std::atomic<const RoutedStatement*>[map.target_shard.size()]());
    return a;
  }

  // ---- per call ---------------------------------------------------------

  absl::StatusOr<Routing> Route(absl::string_view sql, absl::Span<const Value> params) const {
    absl::StatusOr<Analysis*> analyzed = Analyzed(sql);
    if (!analyzed.ok()) return analyzed.status();
    Analysis& a = **analyzed;
    if (!a.error.ok()) return a.error;
    if (absl::Status st = CheckParams(a, params); !st.ok()) return st;
    Routing out;
    out.kind = a.kind;
    out.locking = a.locking;
    const pg_query::Node& root = a.tree.stmts(0).stmt();
    if (a.key_param > 0 && a.key_param <= static_cast<int>(params.size()) && a.single &&
        !a.broadcast_only && a.kind != StatementKind::kDdl && !root.has_insert_stmt()) {
      // The common keyed statement: one shard's table, as the path below
      // would find it without the sets of shards and targets.
      absl::StatusOr<int> shard = map.ShardOf(params[a.key_param - 1]);
      if (!shard.ok()) return shard.status();
      absl::StatusOr<RoutedStatement> r = Cached(a, false, map.target_of[*shard]);
      if (!r.ok()) return r.status();
      out.statements.push_back(*std::move(r));
      return out;
    }
    if (a.broadcast_only) return RouteBroadcast(a, std::move(out));
    std::optional<ShardSet> shards;  // DDL: every table
    if (a.kind != StatementKind::kDdl) {
      if (root.has_insert_stmt()) return RouteInsert(a, params, std::move(out));
      absl::StatusOr<std::optional<ShardSet>> found = ShardsRead(a, params);
      if (!found.ok()) return found.status();
      shards = *std::move(found);
    }
    return RouteToTables(a, Targets(shards), params, std::move(out));
  }

  // Every parameter is checked before any shard's statement runs: a
  // statement split over shards must not run on some and fail on others.
  static absl::Status CheckParams(const Analysis& a, absl::Span<const Value> params) {
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
    return absl::OkStatus();
  }

  // A read of broadcast tables only goes to any one database, a write or DDL to all.
  absl::StatusOr<Routing> RouteBroadcast(const Analysis& a, Routing out) const {
    absl::StatusOr<Template> t = writer.Render(a.tree);
    if (!t.ok()) return t.status();
    out.any_database = a.kind == StatementKind::kRead;
    auto shared = std::make_shared<const std::string>(writer.Text(*t, map.suffix_of[0]));
    for (int db = 0; db < (out.any_database ? 1 : config.databases); ++db) {
      out.statements.push_back(RoutedStatement{-1, db, shared, 0, t->order});
    }
    return out;
  }

  // The shards a read, UPDATE or DELETE is confined to by its keys; nullopt:
  // every shard. INVALID_ARGUMENT for a write without the key that the
  // config requires, or groups of tables read on different shards.
  absl::StatusOr<std::optional<ShardSet>> ShardsRead(const Analysis& a,
                                                     absl::Span<const Value> params) const {
    const pg_query::Node& root = a.tree.stmts(0).stmt();
    std::optional<ShardSet> shards;
    const pg_query::Node* where = WhereOf(root);
    if (a.key_param > 0 && a.key_param <= static_cast<int>(params.size())) {
      absl::StatusOr<int> shard = map.ShardOf(params[a.key_param - 1]);
      if (!shard.ok()) return shard.status();
      shards = ShardSet{*shard};
    } else if (where != nullptr) {
      absl::StatusOr<std::optional<ShardSet>> k = ShardsOfWhere(map, a.key_columns, *where, params);
      if (!k.ok()) return k.status();
      shards = *k;
    }
    if (!a.single) {
      absl::StatusOr<std::optional<ShardSet>> checked = CheckGroups(map, a, shards, params);
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
    return shards;
  }

  // The physical tables of `shards` (nullopt: all), in order. Keys that
  // contradict each other (a = 1 AND a = 2) match no row; one table
  // answers (nothing) so that aggregates still answer.
  absl::InlinedVector<int, 4> Targets(const std::optional<ShardSet>& shards) const {
    absl::InlinedVector<int, 4> targets;
    if (!shards.has_value()) {
      targets.resize(map.target_shard.size());
      std::iota(targets.begin(), targets.end(), 0);
    } else if (shards->empty()) {
      targets.push_back(0);
    } else {
      for (int s : *shards) targets.push_back(map.target_of[s]);
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    }
    return targets;
  }

  // The statement on each of `targets`; a read on more than one is
  // scattered and comes with its merge plan.
  absl::StatusOr<Routing> RouteToTables(Analysis& a, absl::Span<const int> targets,
                                        absl::Span<const Value> params, Routing out) const {
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
      absl::StatusOr<Template> t = writer.Render(tree);
      if (!t.ok()) return t.status();
      per_call = *std::move(t);
    }
    for (int t : targets) {
      if (per_call.has_value()) {
        out.statements.push_back(Once(*per_call, map.target_shard[t]));
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
      absl::StatusOr<int> shard = map.ShardOf(**v);
      if (!shard.ok()) return shard.status();
      rows[map.target_of[*shard]].push_back(r);
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
        absl::StatusOr<Template> t = writer.Render(part);
        if (!t.ok()) return t.status();
        out.statements.push_back(Once(*t, map.target_shard[target]));
      }
    }
    return out;
  }

  // ---- statements' texts -------------------------------------------------

  // The cached text of the statement (plain or scattered) on a target.
  absl::StatusOr<RoutedStatement> Cached(Analysis& a, bool scatter, int target) const {
    std::atomic<const RoutedStatement*>& slot =
        (scatter ? a.scatter_statement : a.plain_statement)[target];
    if (const RoutedStatement* made = slot.load(std::memory_order_acquire)) return *made;
    int shard = map.target_shard[target];
    uint64_t id = (a.serial * 2 + (scatter ? 1 : 0)) * map.target_shard.size() + target + 1;
    std::shared_ptr<const Template> t;
    {
      std::lock_guard<std::mutex> lock(a.mu);
      t = scatter ? a.scatter_template : a.plain_template;
    }
    if (t == nullptr) {
      absl::StatusOr<Template> made = writer.Render(scatter ? a.scatter_tree : a.tree);
      if (!made.ok()) return made.status();
      t = std::make_shared<const Template>(*std::move(made));
    }
    if (a.sql.size() > kMaxKeptText) {  // texts for this call only
      std::lock_guard<std::mutex> lock(a.mu);
      (scatter ? a.scatter_template : a.plain_template) = t;
      return Once(*t, shard);
    }
    auto statement = std::make_unique<const RoutedStatement>(RoutedStatement{
        shard, map.database_of[shard],
        std::make_shared<const std::string>(writer.Text(*t, map.suffix_of[shard])), id, t->order});
    std::lock_guard<std::mutex> lock(a.mu);
    (scatter ? a.scatter_template : a.plain_template) = t;
    if (const RoutedStatement* made = slot.load(std::memory_order_acquire)) return *made;
    slot.store(statement.get(), std::memory_order_release);
    a.made.push_back(std::move(statement));
    return *a.made.back();
  }

  RoutedStatement Once(const Template& t, int shard) const {
    return RoutedStatement{
        shard, map.database_of[shard],
        std::make_shared<const std::string>(writer.Text(t, map.suffix_of[shard])), 0, t.order};
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
  absl::StatusOr<ShardMap> map = ShardMap::Create(config);
  if (!map.ok()) return map.status();
  auto impl = std::make_unique<Impl>(std::move(config), *std::move(map));
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() = default;

absl::StatusOr<Routing> Router::Route(absl::string_view sql, absl::Span<const Value> params) const {
  return impl_->Route(sql, params);
}

absl::StatusOr<int> Router::ShardOf(const Value& key) const { return impl_->map.ShardOf(key); }
int Router::DatabaseOf(int shard) const { return impl_->map.database_of[shard]; }

}  // namespace formica::dds
