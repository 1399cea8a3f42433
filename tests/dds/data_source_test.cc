// ShardedDataSource end to end on real databases: SQLite files, and a
// private PostgreSQL server started from the distribution's binaries. The
// differential tests run one random workload on a plain database and on
// the sharded one over 4 databases and require the same answers.
#include "formica/dds/data_source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "backend.h"
#include "differential.h"
#include "postgres.h"
#include "process.h"

namespace formica::dds {
namespace {

using ::formica::testing::PostgresServer;
using ::formica::testing::TempDir;
using ::testing::HasSubstr;

DataSourceConfig FundConfig(DatabaseKind kind, const std::vector<std::string>& targets) {
  DataSourceConfig c;
  for (size_t i = 0; i < targets.size(); ++i) {
    DatabaseConfig d;
    d.name = absl::StrCat("db", i);
    d.kind = kind;
    d.target = targets[i];
    d.pool = 4;
    c.databases.push_back(d);
  }
  c.sharded_tables = {{"accounts", "user_id"}, {"orders", "user_id"}};
  c.binding_groups = {{"accounts", "orders"}};
  c.broadcast_tables = {"funds"};
  return c;
}

std::unique_ptr<ShardedDataSource> OpenOrDie(DataSourceConfig c) {
  auto ds = ShardedDataSource::Open(std::move(c));
  EXPECT_TRUE(ds.ok()) << ds.status();
  return ds.ok() ? *std::move(ds) : nullptr;
}

void CreateSchema(ShardedDataSource* ds, Connection* plain) {
  for (const std::string& sql : dds::testing::FundSchema()) {
    auto r = ds->Execute(sql);
    ASSERT_TRUE(r.ok()) << sql << ": " << r.status();
    if (plain != nullptr) {
      auto p = plain->Execute(sql, {});
      ASSERT_TRUE(p.ok()) << sql << ": " << p.status();
    }
  }
}

int64_t Int(const absl::StatusOr<ResultSet>& r, int row = 0, int col = 0) {
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok() || r->rows.size() <= static_cast<size_t>(row)) return -1;
  const Value& v = r->rows[row][col];
  if (const int64_t* i = std::get_if<int64_t>(&v)) return *i;
  ADD_FAILURE() << "not an integer: " << ToString(v);
  return -1;
}

TEST(ShardedDataSource, MatchesOneSqliteDatabaseOnARandomWorkload) {
  TempDir dir;
  auto plain = NewSqliteBackend()->Connect("plain", dir.File("plain.db"), false);
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto ds = OpenOrDie(FundConfig(DatabaseKind::kSqlite, {dir.File("s0.db"), dir.File("s1.db"),
                                                         dir.File("s2.db"), dir.File("s3.db")}));
  ASSERT_NE(ds, nullptr);
  CreateSchema(ds.get(), plain->get());
  for (uint32_t seed : {1u, 2u}) {
    auto stats = dds::testing::RunDifferential(plain->get(), ds.get(), 1500, seed);
    ASSERT_TRUE(stats.ok()) << "seed " << seed << ": " << stats.status();
    EXPECT_GT(stats->scatters, 200);
    EXPECT_GT(stats->rows_compared, 5000);
  }
  // The rows really are spread: every database holds some orders.
  for (int db = 0; db < 4; ++db) {
    auto c = NewSqliteBackend()->Connect("check", dir.File(absl::StrCat("s", db, ".db")), true);
    ASSERT_TRUE(c.ok());
    int64_t n = 0;
    for (int s = db * 25; s < db * 25 + 25; ++s) {
      n += Int((*c)->Execute(absl::StrFormat("SELECT count(*) FROM orders_%02d", s), {}));
    }
    EXPECT_GT(n, 0) << "database " << db;
  }
}

TEST(ShardedDataSource, MatchesOnePostgresDatabaseOnARandomWorkload) {
  auto pg = PostgresServer::Start();
  ASSERT_TRUE(pg.ok()) << pg.status();
  for (const char* name : {"plain", "shard0", "shard1", "shard2", "shard3"}) {
    ASSERT_TRUE((*pg)->CreateDatabase(name).ok());
  }
  auto plain = NewPostgresBackend()->Connect("plain", (*pg)->Dsn("plain"), false);
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto ds =
      OpenOrDie(FundConfig(DatabaseKind::kPostgres, {(*pg)->Dsn("shard0"), (*pg)->Dsn("shard1"),
                                                     (*pg)->Dsn("shard2"), (*pg)->Dsn("shard3")}));
  ASSERT_NE(ds, nullptr);
  CreateSchema(ds.get(), plain->get());
  auto stats = dds::testing::RunDifferential(plain->get(), ds.get(), 800, 7);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->scatters, 100);
  // A syntax error carries PostgreSQL's parser's message and position.
  auto bad = ds->Execute("SELECT * FORM orders");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("at character 10"));
}

class SqliteFund : public ::testing::Test {
 protected:
  void SetUp() override {
    ds_ = OpenOrDie(FundConfig(DatabaseKind::kSqlite, {dir_.File("a.db"), dir_.File("b.db")}));
    ASSERT_NE(ds_, nullptr);
    CreateSchema(ds_.get(), nullptr);
  }
  int64_t Balance(int64_t user) {
    return Int(ds_->Execute("SELECT balance FROM accounts WHERE user_id = $1", {user}));
  }
  TempDir dir_;
  std::unique_ptr<ShardedDataSource> ds_;
};

TEST_F(SqliteFund, TransactionsCommitAndRollBackOnTheirShard) {
  ASSERT_TRUE(ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (101, 'a', 500), "
                           "(201, 'b', 500), (299, 'c', 500)")
                  .ok());
  {
    auto tx = ds_->Begin(int64_t{101});
    ASSERT_TRUE(tx.ok()) << tx.status();
    EXPECT_EQ((*tx)->shard(), 1);
    EXPECT_EQ((*tx)->database(), "db0");
    ASSERT_TRUE(
        (*tx)->Execute("UPDATE accounts SET balance = balance - 100 WHERE user_id = 101").ok());
    ASSERT_TRUE(
        (*tx)->Execute("UPDATE accounts SET balance = balance + 100 WHERE user_id = 201").ok());
    // Reads inside see the transaction's own writes.
    EXPECT_EQ(
        Int((*tx)->Execute("SELECT balance FROM accounts WHERE user_id = $1", {int64_t{101}})),
        400);
    // Broadcast tables are read on the transaction's database.
    EXPECT_TRUE((*tx)->Execute("SELECT * FROM funds").ok());
    // user 299 lives in database db1: refused, and the transaction goes on.
    auto other = (*tx)->Execute("UPDATE accounts SET balance = 0 WHERE user_id = 299");
    EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(other.status().message()), HasSubstr("database db1 (shard 99)"));
    ASSERT_TRUE((*tx)->Commit().ok());
    EXPECT_FALSE((*tx)->Commit().ok());
  }
  EXPECT_EQ(Balance(101), 400);
  EXPECT_EQ(Balance(201), 600);
  EXPECT_EQ(Balance(299), 500);
  {
    auto tx = ds_->Begin(std::string("101"));
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE((*tx)->Execute("UPDATE accounts SET balance = 0 WHERE user_id = 101").ok());
    ASSERT_TRUE((*tx)->Rollback().ok());
  }
  EXPECT_EQ(Balance(101), 400);
  {
    auto tx = ds_->Begin(int64_t{101});
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE((*tx)->Execute("UPDATE accounts SET balance = 0 WHERE user_id = 101").ok());
    // dropped without Commit: rolled back
  }
  EXPECT_EQ(Balance(101), 400);
  EXPECT_FALSE(ds_->Begin(std::string("no-digits")).ok());
}

TEST_F(SqliteFund, ConcurrentTransfersWithinAShardKeepTheMoney) {
  std::vector<int64_t> users = {101, 201, 301, 401, 501, 601};  // all shard 1
  for (int64_t u : users) {
    ASSERT_TRUE(
        ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES ($1, 'u', 1000)", {u})
            .ok());
  }
  std::atomic<int> committed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        int64_t from = users[(t + i) % 6], to = users[(t + i + 1) % 6];
        auto tx = ds_->Begin(from);
        if (!tx.ok()) continue;
        auto debit = (*tx)->Execute(
            "UPDATE accounts SET balance = balance - 7 WHERE user_id = $1 AND balance >= 7",
            {from});
        if (!debit.ok() || debit->rows_affected != 1) continue;  // rolled back by the destructor
        if (!(*tx)
                 ->Execute("UPDATE accounts SET balance = balance + 7 WHERE user_id = $1", {to})
                 .ok()) {
          continue;
        }
        if ((*tx)->Commit().ok()) committed++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(committed.load(), 200);
  EXPECT_EQ(Int(ds_->Execute("SELECT sum(balance) FROM accounts")), 6000);
}

TEST_F(SqliteFund, BadStatementsAreRefusedAndChangeNothing) {
  auto syntax = ds_->Execute("SELECT * FORM orders");
  EXPECT_EQ(syntax.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(syntax.status().message(), "syntax error at or near \"FORM\" (at character 10)");
  EXPECT_THAT(std::string(ds_->Execute("SELECT * FROM nosuch").status().message()),
              HasSubstr("unknown table 'nosuch'"));
  EXPECT_THAT(std::string(ds_->Execute("DELETE FROM orders WHERE amount > 5").status().message()),
              HasSubstr("without its shard key"));
  // One bad key in a multi-row insert: no row of it is written anywhere.
  auto bad_row = ds_->Execute(
      "INSERT INTO accounts (user_id, name, balance) VALUES (101, 'a', 1), (202, 'b', 1), ($1, "
      "'c', 1)",
      {std::string("x")});
  EXPECT_THAT(std::string(bad_row.status().message()), HasSubstr("does not end in two digits"));
  EXPECT_EQ(Int(ds_->Execute("SELECT count(*) FROM accounts")), 0);
  EXPECT_THAT(std::string(ds_->Execute("SELECT * FROM accounts WHERE user_id = $2", {int64_t{1}})
                              .status()
                              .message()),
              HasSubstr("uses $2; parameters given: 1"));
  EXPECT_THAT(
      std::string(
          ds_->Execute("UPDATE accounts SET user_id = 5 WHERE user_id = 4").status().message()),
      HasSubstr("may not change the shard column"));
  EXPECT_THAT(std::string(ds_->Execute("SELECT * FROM accounts LIMIT $1", {std::string("many")})
                              .status()
                              .message()),
              HasSubstr("LIMIT must be an integer, got $1 = many"));
}

TEST_F(SqliteFund, AWriteThatFailsOnOneShardNamesTheShardsItChanged) {
  ASSERT_TRUE(
      ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (299, 'z', 1)").ok());
  auto r = ds_->Execute(
      "INSERT INTO accounts (user_id, name, balance) VALUES (101, 'a', 1), (299, 'dup', 1)");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("the statement ran on shard 1 but failed on shard 99"));
  EXPECT_EQ(Balance(101), 1);
}

TEST(ShardedDataSource, ReadsGoToReplicasUnlessAskedOrInATransaction) {
  TempDir dir;
  // The "replica" is a copy kept apart so a read shows where it went.
  {
    auto replica = OpenOrDie(FundConfig(DatabaseKind::kSqlite, {dir.File("replica.db")}));
    ASSERT_NE(replica, nullptr);
    CreateSchema(replica.get(), nullptr);
  }
  DataSourceConfig c = FundConfig(DatabaseKind::kSqlite, {dir.File("primary.db")});
  c.databases[0].replicas = {dir.File("replica.db")};
  auto ds = OpenOrDie(c);
  ASSERT_NE(ds, nullptr);
  CreateSchema(ds.get(), nullptr);
  ASSERT_TRUE(ds->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (7, 'p', 1)").ok());
  const std::string q = "SELECT count(*) FROM accounts WHERE user_id = 7";
  EXPECT_EQ(Int(ds->Execute(q)), 0);                                       // the replica
  EXPECT_EQ(Int(ds->Execute(q, {}, ExecuteOptions{.primary = true})), 1);  // the primary
  EXPECT_EQ(Int(ds->Execute(q + " FOR UPDATE")), 1);
  auto tx = ds->Begin(int64_t{7});
  ASSERT_TRUE(tx.ok());
  EXPECT_EQ(Int((*tx)->Execute(q)), 1);
  ASSERT_TRUE((*tx)->Commit().ok());
  // Writes go to the primary, never to the (read-only) replica.
  auto write = ds->Execute("UPDATE accounts SET balance = 2 WHERE user_id = 7");
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->rows_affected, 1);
}

TEST(ShardedDataSource, LoadsItsYamlConfig) {
  TempDir dir;
  std::string path = dir.File("dds.yaml");
  std::ofstream(path) << "dds:\n"
                         "  databases:\n"
                         "    east:\n"
                         "      sqlite: "
                      << dir.File("east.db")
                      << "\n"
                         "      shards: 0-49\n"
                         "      pool: 2\n"
                         "    west:\n"
                         "      sqlite: "
                      << dir.File("west.db")
                      << "\n"
                         "      shards: [50-89, 90-99]\n"
                         "  sharded_tables:\n"
                         "    accounts: user_id\n"
                         "    orders: user_id\n"
                         "  binding_tables:\n"
                         "    fund: [accounts, orders]\n"
                         "  broadcast_tables: [funds]\n"
                         "  fanout: 4\n";
  auto config = LoadDataSourceConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  auto ds = OpenOrDie(*config);
  ASSERT_NE(ds, nullptr);
  EXPECT_EQ(ds->DatabaseOf(49), "east");
  EXPECT_EQ(ds->DatabaseOf(95), "west");
  CreateSchema(ds.get(), nullptr);
  ASSERT_TRUE(ds->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (1049, 'a', 1), "
                          "(1050, 'b', 2)")
                  .ok());
  EXPECT_EQ(Int(ds->Execute("SELECT sum(balance) FROM accounts")), 3);
}

TEST(ShardedDataSource, RefusesConfigsThatCannotWork) {
  auto unknown = ParseDataSourceConfig(
      "dds:\n  databases:\n    a:\n      sqlite: /tmp/x.db\n  sharded_table:\n    t: id\n",
      "dds.yaml");
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("dds.sharded_table"));
  auto unsplit = ParseDataSourceConfig(
      "dds:\n  databases:\n    a:\n      sqlite: a.db\n    b:\n      sqlite: b.db\n"
      "  sharded_tables:\n    t: id\n");
  EXPECT_THAT(std::string(unsplit.status().message()), HasSubstr("name the shards"));
  auto both = ParseDataSourceConfig(
      "dds:\n  databases:\n    a:\n      sqlite: a.db\n      postgres: host=x\n"
      "  sharded_tables:\n    t: id\n");
  EXPECT_THAT(std::string(both.status().message()), HasSubstr("exactly one of sqlite"));
  auto overlap = ParseDataSourceConfig(
      "dds:\n  databases:\n    a:\n      sqlite: a.db\n      shards: 0-50\n"
      "    b:\n      sqlite: b.db\n      shards: 50-99\n  sharded_tables:\n    t: id\n");
  ASSERT_TRUE(overlap.ok()) << overlap.status();
  EXPECT_THAT(std::string(ShardedDataSource::Open(*overlap).status().message()),
              HasSubstr("shard 50 is listed by databases 'a' and 'b'"));
  auto function = ParseDataSourceConfig(
      "dds:\n  databases:\n    a:\n      sqlite: a.db\n  shard_function: hash\n"
      "  sharded_tables:\n    t: id\n");
  EXPECT_THAT(std::string(function.status().message()), HasSubstr("'hash' is not"));
}

TEST(ShardedDataSource, AnUnreachableDatabaseIsUnavailableAtOpen) {
  int port = formica::testing::PickFreePort();
  auto ds = ShardedDataSource::Open(FundConfig(
      DatabaseKind::kPostgres, {absl::StrCat("host=127.0.0.1 port=", port, " connect_timeout=2")}));
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(ds.status().message()), HasSubstr("database db0: cannot connect"));
}

}  // namespace
}  // namespace formica::dds
