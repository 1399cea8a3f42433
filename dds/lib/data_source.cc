// ShardedDataSource: the router's statements run on pooled connections,
// scatters fanned out on a bounded set of threads and merged.
#include "formica/dds/data_source.h"

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "backend.h"
#include "dds_metrics.h"
#include "merge.h"
#include "router.h"

namespace formica::dds {
namespace {

// A fixed set of threads that run the statements of scatters; at most
// `threads` run at once whatever the number of callers.
class FanOut {
 public:
  explicit FanOut(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~FanOut() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  // Runs every task and returns when all are done.
  void Run(std::vector<std::function<void()>> tasks) {
    absl::BlockingCounter done(static_cast<int>(tasks.size()));
    {
      absl::MutexLock lock(&mu_);
      for (auto& t : tasks) {
        queue_.push_back([t = std::move(t), &done] {
          t();
          done.DecrementCount();
        });
      }
    }
    done.Wait();
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](FanOut* f)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(f->mu_) { return f->stop_ || !f->queue_.empty(); },
            this));
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

struct Database {
  std::string name;
  std::unique_ptr<ConnectionPool> primary;
  std::vector<std::unique_ptr<ConnectionPool>> replicas;
  std::atomic<uint64_t> next_replica{0};
};

class DataSourceImpl;

class TransactionImpl : public Transaction {
 public:
  TransactionImpl(DataSourceImpl* ds, int shard, int database, ConnectionPool::Lease lease)
      : ds_(ds), shard_(shard), database_(database), lease_(std::move(lease)) {}
  ~TransactionImpl() override {
    if (open_) (void)lease_->Rollback();
    lease_ = ConnectionPool::Lease();
    passes_.clear();
  }
  absl::StatusOr<ResultSet> Execute(absl::string_view sql, absl::Span<const Value> params) override;
  absl::Status Commit() override {
    if (!open_) return absl::FailedPreconditionError("the transaction has already ended");
    open_ = false;
    absl::Status st = lease_->Commit();
    if (!st.ok()) (void)lease_->Rollback();
    lease_ = ConnectionPool::Lease();
    passes_.clear();
    return st;
  }
  absl::Status Rollback() override {
    if (!open_) return absl::FailedPreconditionError("the transaction has already ended");
    open_ = false;
    absl::Status st = lease_->Rollback();
    lease_ = ConnectionPool::Lease();
    passes_.clear();
    return st;
  }
  int shard() const override { return shard_; }
  const std::string& database() const override;

 private:
  DataSourceImpl* const ds_;
  const int shard_, database_;
  ConnectionPool::Lease lease_;
  bool open_ = true;
  std::map<int, std::unique_ptr<WriteGate::Pass>> passes_;  // by shard, until the end
};

class DataSourceImpl : public ShardedDataSource {
 public:
  DataSourceImpl(DataSourceConfig config, std::unique_ptr<Router> router,
                 std::unique_ptr<Backend> backend)
      : config_(std::move(config)),
        router_(std::move(router)),
        backend_(std::move(backend)),
        fanout_(config_.fanout) {
    merge_context_.nulls_largest = backend_->nulls_largest();
  }

  absl::Status Connect() {
    for (const DatabaseConfig& d : config_.databases) {
      auto db = std::make_unique<Database>();
      db->name = d.name;
      db->primary = std::make_unique<ConnectionPool>(backend_.get(), d.name, d.target, false,
                                                     d.pool, config_.pool_wait);
      for (size_t i = 0; i < d.replicas.size(); ++i) {
        db->replicas.push_back(std::make_unique<ConnectionPool>(
            backend_.get(), absl::StrCat(d.name, " replica ", i + 1), d.replicas[i], true, d.pool,
            config_.pool_wait));
      }
      // Reach every database (and replica) now, not at the first statement.
      absl::StatusOr<ConnectionPool::Lease> l = db->primary->Acquire();
      if (!l.ok()) return l.status();
      // Text merged across shards compares by the databases' default
      // collation only when they share one.
      const std::string& collation = (*l)->default_collation();
      if (databases_.empty()) {
        merge_context_.default_collation = collation;
      } else if (merge_context_.default_collation != collation) {
        merge_context_.default_collation.clear();
      }
      for (auto& r : db->replicas) {
        absl::StatusOr<ConnectionPool::Lease> rl = r->Acquire();
        if (!rl.ok()) return rl.status();
      }
      databases_.push_back(std::move(db));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ResultSet> Execute(absl::string_view sql, absl::Span<const Value> params,
                                    const ExecuteOptions& options) override {
    absl::StatusOr<Routing> routing = router_->Route(sql, params);
    CountStatement(routing.ok() ? &*routing : nullptr, routing.status());
    if (!routing.ok()) return routing.status();
    std::map<int, std::unique_ptr<WriteGate::Pass>> passes;  // held while the write runs
    if (absl::Status st = AdmitWrites(*routing, false, &passes); !st.ok()) return st;
    std::map<int, std::string> elsewhere;
    if (absl::Status st = AdmitReads(*routing, &elsewhere); !st.ok()) return st;
    absl::StatusOr<ResultSet> result = ExecuteRouted(*std::move(routing), params, options);
    if (result.ok()) result->read_elsewhere = std::move(elsewhere);
    return result;
  }

  absl::StatusOr<ResultSet> ExecuteRouted(Routing routed, absl::Span<const Value> params,
                                          const ExecuteOptions& options) {
    std::optional<Routing> routing(std::move(routed));
    bool replica = routing->kind == StatementKind::kRead && !routing->locking && !options.primary;
    if (routing->any_database) {
      routing->statements[0].database =
          static_cast<int>(next_database_.fetch_add(1) % databases_.size());
    }
    const auto& statements = routing->statements;
    if (statements.size() == 1) {
      return RunOne(statements[0], params, replica);
    }
    if (routing->kind != StatementKind::kRead) return RunWrite(*routing, params);
    std::vector<absl::StatusOr<ResultSet>> results(statements.size());
    std::vector<std::vector<std::string>> collations(statements.size());
    std::vector<std::function<void()>> tasks;
    for (size_t i = 0; i < statements.size(); ++i) {
      tasks.push_back(
          [&, i] { results[i] = RunOne(statements[i], params, replica, &collations[i]); });
    }
    fanout_.Run(std::move(tasks));
    return Combine(*routing, std::move(results), std::move(collations), params);
  }

  // `collations`: how each result's columns compare (Connection::Execute).
  absl::StatusOr<ResultSet> Combine(const Routing& routing,
                                    std::vector<absl::StatusOr<ResultSet>> results,
                                    std::vector<std::vector<std::string>> collations,
                                    absl::Span<const Value> params) {
    std::vector<ShardAnswer> parts;
    std::vector<std::string> written, failed;
    absl::Status first;
    for (size_t i = 0; i < results.size(); ++i) {
      const RoutedStatement& s = routing.statements[i];
      std::string where = s.shard >= 0 ? absl::StrCat("shard ", s.shard)
                                       : absl::StrCat("database ", databases_[s.database]->name);
      if (results[i].ok()) {
        written.push_back(where);
        parts.push_back(ShardAnswer{*std::move(results[i]), std::move(collations[i])});
      } else {
        failed.push_back(where);
        if (first.ok()) first = results[i].status();
      }
    }
    if (!first.ok()) {
      if (routing.kind == StatementKind::kRead || written.empty()) return first;
      return absl::Status(
          first.code(),
          absl::StrCat("the statement ran on ", absl::StrJoin(written, ", "), " but failed on ",
                       absl::StrJoin(failed, ", "), ": ", first.message()));
    }
    if (routing.merge != nullptr) {
      return Merge(*routing.merge, std::move(parts), params, merge_context_);
    }
    ResultSet out;
    if (routing.statements[0].shard < 0) {
      // A broadcast table's copies: each database changed the same rows.
      return std::move(parts[0].result);
    }
    for (ShardAnswer& answer : parts) {
      ResultSet& p = answer.result;
      if (out.columns.empty()) out.columns = p.columns;
      out.rows_affected += p.rows_affected;
      for (auto& row : p.rows) out.rows.push_back(std::move(row));
    }
    return out;
  }

  // A write over several tables outside a transaction takes one connection
  // to each database it writes before any statement runs (in database
  // order, so two such writes never wait on each other crosswise; each wait
  // bounded by pool_wait): none is given up midway for want of a connection.
  // Then each database's statements run in turn, databases at once.
  absl::StatusOr<ResultSet> RunWrite(const Routing& routing, absl::Span<const Value> params) {
    const auto& statements = routing.statements;
    std::map<int, std::vector<size_t>> by_database;
    for (size_t i = 0; i < statements.size(); ++i) {
      by_database[statements[i].database].push_back(i);
    }
    std::vector<ConnectionPool::Lease> leases;
    for (const auto& [database, indexes] : by_database) {
      absl::StatusOr<ConnectionPool::Lease> lease = databases_[database]->primary->Acquire();
      if (!lease.ok()) {
        return absl::Status(
            lease.status().code(),
            absl::StrCat(lease.status().message(),
                         "; nothing was written (a write over several shards takes a connection "
                         "to each of its databases before it starts)"));
      }
      leases.push_back(*std::move(lease));
    }
    std::vector<absl::StatusOr<ResultSet>> results(statements.size());
    std::vector<std::vector<std::string>> collations(statements.size());
    std::vector<std::function<void()>> tasks;
    size_t n = 0;
    for (const auto& entry : by_database) {
      tasks.push_back([&, indexes = &entry.second, lease = &leases[n++]] {
        std::vector<Value> ordered;
        for (size_t i : *indexes) {
          const RoutedStatement& s = statements[i];
          results[i] =
              (*lease)->Execute(*s.sql, ParamsOf(s, params, &ordered), s.id, &collations[i]);
        }
      });
    }
    fanout_.Run(std::move(tasks));
    return Combine(routing, std::move(results), std::move(collations), params);
  }

  absl::StatusOr<ResultSet> RunOne(const RoutedStatement& s, absl::Span<const Value> params,
                                   bool replica, std::vector<std::string>* collations = nullptr) {
    Database& db = *databases_[s.database];
    ConnectionPool* pool = db.primary.get();
    if (replica && !db.replicas.empty()) {
      pool = db.replicas[db.next_replica.fetch_add(1) % db.replicas.size()].get();
    }
    absl::StatusOr<ConnectionPool::Lease> lease = pool->Acquire();
    if (!lease.ok()) return lease.status();
    std::vector<Value> ordered;
    return (*lease)->Execute(*s.sql, ParamsOf(s, params, &ordered), s.id, collations);
  }

  absl::StatusOr<std::unique_ptr<Transaction>> Begin(const Value& shard_key) override {
    absl::StatusOr<int> shard = router_->ShardOf(shard_key);
    if (!shard.ok()) return shard.status();
    int database = router_->DatabaseOf(*shard);
    absl::StatusOr<ConnectionPool::Lease> lease = databases_[database]->primary->Acquire();
    if (!lease.ok()) return lease.status();
    absl::Status st = (*lease)->Begin();
    if (!st.ok()) return st;
    return std::unique_ptr<Transaction>(
        new TransactionImpl(this, *shard, database, *std::move(lease)));
  }

  absl::StatusOr<int> ShardOf(const Value& shard_key) const override {
    return router_->ShardOf(shard_key);
  }
  const std::string& DatabaseOf(int shard) const override {
    return databases_[router_->DatabaseOf(shard)]->name;
  }

  // Asks the write gate for every shard a write statement touches; the
  // passes go into `passes` (already held ones are kept).
  // `in_transaction`: the caller holds a connection and maybe locks, so the
  // gate must not wait (waiting could hold up what the gate waits for).
  absl::Status AdmitWrites(const Routing& routing, bool in_transaction,
                           std::map<int, std::unique_ptr<WriteGate::Pass>>* passes) {
    if (config_.write_gate == nullptr || routing.kind != StatementKind::kWrite) {
      return absl::OkStatus();
    }
    for (const RoutedStatement& s : routing.statements) {
      if (s.shard < 0 || passes->count(s.shard) > 0) continue;
      absl::StatusOr<std::unique_ptr<WriteGate::Pass>> pass =
          config_.write_gate->Admit(s.shard, !in_transaction);
      if (!pass.ok()) {
        return absl::Status(pass.status().code(), absl::StrCat("write refused, nothing written: ",
                                                               pass.status().message()));
      }
      (*passes)[s.shard] = *std::move(pass);
    }
    return absl::OkStatus();
  }

  // Asks the gate about every shard a read touches: `elsewhere` gets the
  // shards another zone owns (a cross-zone read), or the read is refused.
  absl::Status AdmitReads(const Routing& routing, std::map<int, std::string>* elsewhere) {
    if (config_.write_gate == nullptr || routing.kind != StatementKind::kRead) {
      return absl::OkStatus();
    }
    for (const RoutedStatement& s : routing.statements) {
      if (s.shard < 0 || elsewhere->count(s.shard) > 0) continue;
      absl::StatusOr<std::string> owner = config_.write_gate->AdmitRead(s.shard);
      if (!owner.ok()) {
        return absl::Status(owner.status().code(),
                            absl::StrCat("read refused: ", owner.status().message()));
      }
      if (!owner->empty()) (*elsewhere)[s.shard] = *owner;
    }
    return absl::OkStatus();
  }

  const std::string& NameOf(int database) const { return databases_[database]->name; }
  Router* router() { return router_.get(); }
  Backend* backend() { return backend_.get(); }

 private:
  const DataSourceConfig config_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<Database>> databases_;
  std::atomic<uint64_t> next_database_{0};
  MergeContext merge_context_;  // set by Connect
  FanOut fanout_;
};

const std::string& TransactionImpl::database() const { return ds_->NameOf(database_); }

absl::StatusOr<ResultSet> TransactionImpl::Execute(absl::string_view sql,
                                                   absl::Span<const Value> params) {
  if (!open_) return absl::FailedPreconditionError("the transaction has already ended");
  absl::StatusOr<Routing> routing = ds_->router()->Route(sql, params);
  CountStatement(routing.ok() ? &*routing : nullptr, routing.status());
  if (!routing.ok()) return routing.status();
  if (routing->any_database) routing->statements[0].database = database_;
  for (const RoutedStatement& s : routing->statements) {
    if (s.database != database_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the statement runs on database ", ds_->NameOf(s.database),
          s.shard >= 0 ? absl::StrCat(" (shard ", s.shard, ")") : std::string(),
          " but this transaction is on database ", ds_->NameOf(database_), " (shard ", shard_,
          "); a transaction stays on its shard's database, and writes across databases belong "
          "to DTS"));
    }
  }
  if (absl::Status st = ds_->AdmitWrites(*routing, true, &passes_); !st.ok()) return st;
  std::map<int, std::string> elsewhere;
  if (absl::Status st = ds_->AdmitReads(*routing, &elsewhere); !st.ok()) return st;
  std::vector<absl::StatusOr<ResultSet>> results;
  std::vector<Value> ordered;
  std::vector<std::vector<std::string>> collations(routing->statements.size());
  for (size_t i = 0; i < routing->statements.size(); ++i) {
    const RoutedStatement& s = routing->statements[i];
    results.push_back(lease_->Execute(*s.sql, ParamsOf(s, params, &ordered), s.id, &collations[i]));
    if (!results.back().ok()) return results.back().status();
  }
  absl::StatusOr<ResultSet> result =
      ds_->Combine(*routing, std::move(results), std::move(collations), params);
  if (result.ok()) result->read_elsewhere = std::move(elsewhere);
  return result;
}

absl::Status Validate(DataSourceConfig& c, RouterConfig* rc) {
  if (c.databases.empty()) return absl::InvalidArgumentError("the DDS config names no databases");
  if (c.fanout < 1 || c.fanout > 256) {
    return absl::InvalidArgumentError(absl::StrCat("fanout must be 1 to 256, not ", c.fanout));
  }
  if (c.shards < 1 || c.shards > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("shards must be 1 to 100000, not ", c.shards));
  }
  std::set<std::string> names;
  bool any_shards = false, all_shards = true;
  for (const DatabaseConfig& d : c.databases) {
    if (d.name.empty()) return absl::InvalidArgumentError("a database has no name");
    if (!names.insert(d.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("database '", d.name, "' is listed twice"));
    }
    if (d.target.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("database '", d.name, "' gives no SQLite file or PostgreSQL connection"));
    }
    if (d.kind != c.databases[0].kind) {
      return absl::InvalidArgumentError(
          absl::StrCat("database '", d.name, "' is of another kind than '", c.databases[0].name,
                       "'; every database of one data source is SQLite or every one PostgreSQL"));
    }
    if (d.pool < 1 || d.pool > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("database '", d.name, "': pool must be 1 to 1024, not ", d.pool));
    }
    any_shards = any_shards || !d.shards.empty();
    all_shards = all_shards && !d.shards.empty();
  }
  const int n = static_cast<int>(c.databases.size());
  if (n > c.shards) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " databases for ", c.shards, " shards: each database needs a shard"));
  }
  rc->shard_database.clear();
  if (any_shards) {
    if (!all_shards) {
      return absl::InvalidArgumentError(
          "give the shards of every database, or of none (then they are split evenly)");
    }
    rc->shard_database.assign(c.shards, -1);
    for (int i = 0; i < n; ++i) {
      for (int s : c.databases[i].shards) {
        if (s < 0 || s >= c.shards) {
          return absl::InvalidArgumentError(absl::StrCat("database '", c.databases[i].name,
                                                         "' lists shard ", s, ", outside 0..",
                                                         c.shards - 1));
        }
        if (rc->shard_database[s] >= 0) {
          return absl::InvalidArgumentError(absl::StrCat("shard ", s, " is listed by databases '",
                                                         c.databases[rc->shard_database[s]].name,
                                                         "' and '", c.databases[i].name, "'"));
        }
        rc->shard_database[s] = i;
      }
    }
    for (int s = 0; s < c.shards; ++s) {
      if (rc->shard_database[s] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("shard ", s, " is in no database; every shard needs one"));
      }
    }
  }
  rc->sharded_tables = c.sharded_tables;
  rc->binding_groups = c.binding_groups;
  rc->broadcast_tables = c.broadcast_tables;
  rc->shards = c.shards;
  rc->function = c.function;
  rc->ranges = c.ranges;
  rc->databases = n;
  rc->table_suffix = c.table_suffix;
  rc->writes_need_shard_key = c.writes_need_shard_key;
  rc->sqlite = c.databases[0].kind == DatabaseKind::kSqlite;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardedDataSource>> ShardedDataSource::Open(
    DataSourceConfig config) {
  RouterConfig rc;
  absl::Status st = Validate(config, &rc);
  if (!st.ok()) return st;
  if (config.write_gate != nullptr &&
      (config.function != ShardFunction::kLastTwoDigits || config.shards != 100)) {
    return absl::InvalidArgumentError(
        "a write gate (LDC) places users by the last two digits of their id: it needs the "
        "last_two_digits shard function and 100 shards");
  }
  absl::StatusOr<std::unique_ptr<Router>> router = Router::Create(rc);
  if (!router.ok()) return router.status();
  std::unique_ptr<Backend> backend =
      config.databases[0].kind == DatabaseKind::kSqlite ? NewSqliteBackend() : NewPostgresBackend();
  auto ds =
      std::make_unique<DataSourceImpl>(std::move(config), *std::move(router), std::move(backend));
  st = ds->Connect();
  if (!st.ok()) return st;
  return std::unique_ptr<ShardedDataSource>(std::move(ds));
}

}  // namespace formica::dds
