// ShardedDataSource end to end on real databases: SQLite files, and a
// private PostgreSQL server started from the distribution's binaries. The
// differential tests run one random workload on a plain database and on
// the sharded one over 4 databases and require the same answers.
#include "formica/dds/data_source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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

void CreateSchema(ShardedDataSource* ds, Connection* plain,
                  DatabaseKind kind = DatabaseKind::kSqlite) {
  for (const std::string& sql : dds::testing::FundSchema(kind)) {
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
    EXPECT_GT(stats->refused, 0);  // sums past 64 bits fail as SQLite's do
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
  CreateSchema(ds.get(), plain->get(), DatabaseKind::kPostgres);
  auto stats =
      dds::testing::RunDifferential(plain->get(), ds.get(), 800, 7, DatabaseKind::kPostgres);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->scatters, 100);
  // Casts stay PostgreSQL's own; a cast key routes; a same-user subquery runs.
  auto cast = ds->Execute(
      "SELECT count(*), max(amount::text) FROM orders o WHERE o.user_id = CAST($1 AS BIGINT) "
      "AND o.amount >= (SELECT min(p.amount) FROM orders p WHERE p.user_id = CAST($1 AS BIGINT))",
      {std::string("12")});
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_EQ(cast->rows[0][0], Value(int64_t{0}));
  EXPECT_GT(stats->refused, 0);  // negative LIMIT and OFFSET, as PostgreSQL refuses them
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

// Writers of one SQLite file take turns in this process: each waits for
// the one before it (not SQLite's sleeping retries), transactions and
// writes of their own alike, and all of them commit.
TEST_F(SqliteFund, ConcurrentWritersOfOneFileTakeTurnsAndAllCommit) {
  std::vector<int64_t> users = {101, 201, 301, 401};  // all shard 1, file a.db
  for (int64_t u : users) {
    ASSERT_TRUE(
        ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES ($1, 'u', 1000)", {u})
            .ok());
  }
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        int64_t from = users[(t + i) % 4], to = users[(t + i + 1) % 4];
        if (i % 5 == 4) {  // a write of its own, outside any transaction
          if (!ds_->Execute("UPDATE accounts SET name = 'v' WHERE user_id = $1", {from}).ok()) {
            failed++;
          }
          continue;
        }
        auto tx = ds_->Begin(from);
        bool ok =
            tx.ok() &&
            (*tx)
                ->Execute("UPDATE accounts SET balance = balance - 1 WHERE user_id = $1", {from})
                .ok() &&
            (*tx)
                ->Execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = $1", {to})
                .ok() &&
            (*tx)->Commit().ok();
        if (!ok) failed++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(Int(ds_->Execute("SELECT sum(balance) FROM accounts")), 4000);
}

// A writer that finds the file taken for longer than SQLite's busy timeout
// (5 s) is refused as SQLite would refuse it, and the file is free again
// once the transaction holding it ends.
TEST_F(SqliteFund, AWriterKeptWaitingTooLongIsRefusedAndTheFileIsFreedAfter) {
  ASSERT_TRUE(ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (101, 'a', 5), "
                           "(201, 'b', 5)")
                  .ok());
  auto tx = ds_->Begin(int64_t{101});
  ASSERT_TRUE(tx.ok()) << tx.status();
  ASSERT_TRUE((*tx)->Execute("UPDATE accounts SET balance = 6 WHERE user_id = 101").ok());
  absl::Time t0 = absl::Now();
  auto blocked = ds_->Execute("UPDATE accounts SET balance = 7 WHERE user_id = 201");
  EXPECT_EQ(blocked.status().code(), absl::StatusCode::kAborted) << blocked.status();
  EXPECT_THAT(std::string(blocked.status().message()), HasSubstr("database is locked"));
  EXPECT_GE(absl::Now() - t0, absl::Seconds(4));
  ASSERT_TRUE((*tx)->Commit().ok());
  EXPECT_TRUE(ds_->Execute("UPDATE accounts SET balance = 7 WHERE user_id = 201").ok());
  EXPECT_EQ(Balance(101), 6);
  EXPECT_EQ(Balance(201), 7);
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

TEST_F(SqliteFund, AnEmptyStatementIsRefused) {
  // The text is a view: an empty one may point at nothing at all.
  for (absl::string_view sql : {absl::string_view(), absl::string_view("")}) {
    auto r = ds_->Execute(sql);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), "expected one SQL statement, got 0");
  }
}

TEST_F(SqliteFund, AMissingParameterIsRefusedBeforeAnyShardRuns) {
  // Two rows for shards 5 and 30 (databases db0 and db1), the last value missing.
  std::vector<Value> params = {int64_t{105}, std::string("a"), int64_t{1}, int64_t{230},
                               std::string("b")};
  auto r = ds_->Execute(
      "INSERT INTO accounts (user_id, name, balance) VALUES ($1, $2, $3), ($4, $5, $6)", params);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "the statement uses $6; parameters given: 5");
  EXPECT_EQ(Int(ds_->Execute("SELECT count(*) FROM accounts")), 0);
  // The same for an UPDATE over two shards and a read whose LIMIT is missing.
  ASSERT_TRUE(ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (105, 'a', 1), "
                           "(230, 'b', 1)")
                  .ok());
  auto update = ds_->Execute("UPDATE accounts SET balance = $3 WHERE user_id IN ($1, $2)",
                             {int64_t{105}, int64_t{230}});
  EXPECT_EQ(update.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(update.status().message(), "the statement uses $3; parameters given: 2");
  EXPECT_EQ(Int(ds_->Execute("SELECT sum(balance) FROM accounts")), 2);
  auto read = ds_->Execute("SELECT * FROM accounts ORDER BY user_id LIMIT $1 OFFSET $3", {});
  EXPECT_EQ(read.status().message(), "the statement uses $1 (and up to $3); parameters given: 0");
}

TEST_F(SqliteFund, SqlTextThatIsNotUtf8IsRefusedNamingTheByte) {
  auto bad = ds_->Execute("SELECT * FROM accounts WHERE name = 'caf\xe9'");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(),
            "the SQL text is not valid UTF-8 at byte offset 40 (from 0): byte 0xe9; send SQL in "
            "UTF-8");
  auto nul = ds_->Execute(std::string("SELECT * FROM accounts WHERE user_id = 1\0 OR 1 = 1", 50));
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(nul.status().message(), "the SQL text holds a NUL byte at byte offset 40 (from 0)");
  // Valid UTF-8 of every length passes.
  auto good = ds_->Execute("SELECT * FROM accounts WHERE name = 'caf\u00e9 \u4e2d \U0001F600'");
  EXPECT_TRUE(good.ok()) << good.status();
}

TEST_F(SqliteFund, CastsRunOnSqliteAndACastKeyRoutes) {
  ASSERT_TRUE(ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (105, 'a', 7), "
                           "(230, 'b', 12)")
                  .ok());
  auto one = ds_->Execute(
      "SELECT CAST(balance AS TEXT), balance::real / 2 FROM accounts WHERE user_id = "
      "CAST($1 AS INTEGER)",
      {std::string("105")});
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->rows.size(), 1u);
  EXPECT_EQ(one->rows[0][0], Value(std::string("7")));
  EXPECT_EQ(one->rows[0][1], Value(3.5));
  auto all = ds_->Execute(
      "SELECT user_id, CAST(balance AS VARCHAR(1)) FROM accounts ORDER BY CAST(balance AS TEXT)");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows.size(), 2u);
  EXPECT_EQ(all->rows[0][1], Value(std::string("12")));  // SQLite ignores the length
  auto literal = ds_->Execute("SELECT * FROM accounts WHERE name > DATE '2026-01-01'");
  EXPECT_EQ(literal.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(literal.status().message(),
            "SQLite has no typed literals (date '...'); write CAST('...' AS DATE)");
  auto array = ds_->Execute("SELECT CAST(balance AS INTEGER[]) FROM accounts WHERE user_id = 105");
  EXPECT_EQ(array.status().message(), "SQLite has no array or set types: cannot cast to int4[]");
}

TEST_F(SqliteFund, StarWithAnExpressionSortsAcrossShards) {
  ASSERT_TRUE(ds_->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (105, 'a', 7), "
                           "(230, 'b', 12), (299, 'c', 3), (301, 'd', 9)")
                  .ok());
  auto unnamed =
      ds_->Execute("SELECT *, balance * 2 FROM accounts ORDER BY balance * 2 DESC, user_id");
  ASSERT_TRUE(unnamed.ok()) << unnamed.status();
  ASSERT_EQ(unnamed->rows.size(), 4u);
  ASSERT_EQ(unnamed->columns.size(), 4u);
  std::vector<Value> order;
  for (const auto& row : unnamed->rows) order.push_back(row[0]);
  EXPECT_EQ(order, (std::vector<Value>{int64_t{230}, int64_t{301}, int64_t{105}, int64_t{299}}));
  EXPECT_EQ(unnamed->rows[0][3], Value(int64_t{24}));
  auto aliased =
      ds_->Execute("SELECT *, -balance AS neg FROM accounts ORDER BY neg LIMIT 2 OFFSET 1");
  ASSERT_TRUE(aliased.ok()) << aliased.status();
  ASSERT_EQ(aliased->rows.size(), 2u);
  EXPECT_EQ(aliased->rows[0][0], Value(int64_t{301}));
  EXPECT_EQ(aliased->rows[1][0], Value(int64_t{105}));
  auto before = ds_->Execute("SELECT balance % 5, * FROM accounts ORDER BY balance % 5, user_id");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->rows.size(), 4u);
  order.clear();
  for (const auto& row : before->rows) order.push_back(row[1]);
  EXPECT_EQ(order, (std::vector<Value>{int64_t{105}, int64_t{230}, int64_t{299}, int64_t{301}}));
}

TEST_F(SqliteFund, AKeyInListOfTenThousandParametersReadsAndWritesEveryShardItNames) {
  // 200 accounts over every shard; the list names them and 9,800 ids that
  // hold no row.
  std::vector<std::string> rows;
  for (int i = 0; i < 200; ++i) rows.push_back(absl::StrCat("(", 1000 + i, ", 'u', 1)"));
  ASSERT_TRUE(ds_->Execute(absl::StrCat("INSERT INTO accounts (user_id, name, balance) VALUES ",
                                        absl::StrJoin(rows, ", ")))
                  .ok());
  std::vector<std::string> list;
  std::vector<Value> params;
  for (int i = 0; i < 10000; ++i) {
    list.push_back(absl::StrCat("$", i + 1));
    params.emplace_back(std::in_place_type<int64_t>, i < 200 ? 1000 + i : 50000 + i);
  }
  const std::string in = absl::StrCat("(", absl::StrJoin(list, ", "), ")");
  // Each statement took 20 to 50 seconds (and ran out of pooled
  // connections) while the time went quadratic; it takes about one now.
  absl::Time start = absl::Now();
  auto read = ds_->Execute(
      absl::StrCat("SELECT count(*), sum(balance) FROM accounts WHERE user_id IN ", in), params);
  EXPECT_EQ(Int(read, 0, 0), 200);
  EXPECT_EQ(Int(read, 0, 1), 200);
  auto write = ds_->Execute(
      absl::StrCat("UPDATE accounts SET balance = balance + 1 WHERE user_id IN ", in), params);
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->rows_affected, 200);
  EXPECT_LT(absl::Now() - start, absl::Seconds(40));
  EXPECT_EQ(Int(ds_->Execute("SELECT sum(balance) FROM accounts")), 400);
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

TEST(ShardedDataSource, AWriteOverSeveralDatabasesTakesItsConnectionsBeforeWriting) {
  TempDir dir;
  DataSourceConfig c = FundConfig(DatabaseKind::kSqlite, {dir.File("a.db"), dir.File("b.db")});
  for (DatabaseConfig& d : c.databases) d.pool = 1;
  c.pool_wait = absl::Milliseconds(300);
  auto ds = OpenOrDie(c);
  ASSERT_NE(ds, nullptr);
  CreateSchema(ds.get(), nullptr);
  // Users of shards 5 (database db0) and 99 (db1).
  ASSERT_TRUE(
      ds->Execute("INSERT INTO accounts (user_id, name, balance) VALUES (105, 'a', 1), (299, "
                  "'b', 1)")
          .ok());
  const std::string update = "UPDATE accounts SET balance = balance + 1 WHERE user_id IN ($1, $2)";
  {
    auto tx = ds->Begin(int64_t{299});  // holds db1's only connection past the wait
    ASSERT_TRUE(tx.ok()) << tx.status();
    auto r = ds->Execute(update, {int64_t{105}, int64_t{299}});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(r.status().message()),
                HasSubstr("database db1: all 1 connections stayed busy for 300ms; nothing was "
                          "written"));
    ASSERT_TRUE((*tx)->Rollback().ok());
  }
  EXPECT_EQ(Int(ds->Execute("SELECT sum(balance) FROM accounts")), 2);
  // A connection freed within the wait is waited for, and every shard runs.
  auto tx = ds->Begin(int64_t{299});
  ASSERT_TRUE(tx.ok()) << tx.status();
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (void)(*tx)->Commit();
  });
  auto r = ds->Execute(update, {int64_t{105}, int64_t{299}});
  release.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 2);
  EXPECT_EQ(Int(ds->Execute("SELECT sum(balance) FROM accounts")), 4);
}

TEST(SqliteBackend, BindsQuestionMarksInOrderAndDollarsByNumber) {
  TempDir dir;
  auto c = NewSqliteBackend()->Connect("t", dir.File("t.db"), false);
  ASSERT_TRUE(c.ok()) << c.status();
  auto marks = (*c)->Execute("SELECT ?, ?, ?", {int64_t{1}, std::string("x"), Value()});
  ASSERT_TRUE(marks.ok()) << marks.status();
  EXPECT_EQ(ToString(marks->rows[0][0]), "1");
  EXPECT_EQ(ToString(marks->rows[0][1]), "x");
  EXPECT_EQ(ToString(marks->rows[0][2]), "NULL");
  auto dollars = (*c)->Execute("SELECT $2, $1, '$', ?", {int64_t{1}, int64_t{2}, int64_t{3}});
  ASSERT_TRUE(dollars.ok()) << dollars.status();
  EXPECT_EQ(ToString(dollars->rows[0][0]), "2");
  EXPECT_EQ(ToString(dollars->rows[0][1]), "1");
  EXPECT_EQ(ToString(dollars->rows[0][2]), "$");
  EXPECT_EQ(ToString(dollars->rows[0][3]), "3");
  auto missing = (*c)->Execute("SELECT ?, ?", {int64_t{1}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(missing.status().message(),
            "database t: the statement uses parameter 2; parameters given: 1");
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

// ---- merging exactly: collations, sums, LIMIT and OFFSET -----------------

// One plain database and a data source over `databases` sharded ones, both
// holding the same `items` (sharded by user_id), to compare answers.
DataSourceConfig ItemsConfig(DatabaseKind kind, const std::vector<std::string>& targets) {
  DataSourceConfig c = FundConfig(kind, targets);
  c.sharded_tables = {{"items", "user_id"}};
  c.binding_groups.clear();
  c.broadcast_tables.clear();
  return c;
}

// Runs `sql` on both; both must answer alike (rows in order).
void ExpectSameAnswer(Connection* plain, ShardedDataSource* ds, const std::string& sql,
                      const std::vector<Value>& params = {}) {
  SCOPED_TRACE(sql);
  auto want = plain->Execute(sql, params);
  ASSERT_TRUE(want.ok()) << want.status();
  auto got = ds->Execute(sql, params);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(dds::testing::SameResult(*want, *got, true).ok())
      << dds::testing::SameResult(*want, *got, true);
}

// Each row's text folded to lower case: answers whose representative of
// equal-by-NOCASE values is any of them.
std::vector<std::string> Folded(const ResultSet& r) {
  std::vector<std::string> out;
  for (const auto& row : r.rows) {
    std::string line;
    for (const Value& v : row) absl::StrAppend(&line, absl::AsciiStrToLower(ToString(v)), "|");
    out.push_back(line);
  }
  std::sort(out.begin(), out.end());
  return out;
}

class SqliteItems : public ::testing::Test {
 protected:
  void SetUp() override {
    auto plain = NewSqliteBackend()->Connect("plain", dir_.File("plain.db"), false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    plain_ = *std::move(plain);
    ds_ = OpenOrDie(ItemsConfig(DatabaseKind::kSqlite, {dir_.File("s0.db"), dir_.File("s1.db"),
                                                        dir_.File("s2.db"), dir_.File("s3.db")}));
    ASSERT_NE(ds_, nullptr);
    Both(
        "CREATE TABLE items (id bigint PRIMARY KEY, user_id bigint NOT NULL, note text, "
        "code text COLLATE NOCASE, amount bigint NOT NULL)");
  }
  void Both(const std::string& sql, const std::vector<Value>& params = {}) {
    auto p = plain_->Execute(sql, params);
    ASSERT_TRUE(p.ok()) << sql << ": " << p.status();
    auto d = ds_->Execute(sql, params);
    ASSERT_TRUE(d.ok()) << sql << ": " << d.status();
  }
  // `n` items over every shard: codes of 5 letters in mixed case, notes in
  // mixed case with trailing spaces, amounts 1..1000.
  void Fill(int n) {
    static const char* kCodes[] = {"alpha", "Alpha", "ALPHA", "beta",    "Beta",   "gamma",
                                   "GAMMA", "delta", "Delta", "epsilon", "EPSILON"};
    static const char* kNotes[] = {"apple",  "Apple ", "banana", "BANANA", "cherry  ",
                                   "Cherry", "_under", "zebra",  "Zebra",  "apple"};
    for (int start = 0; start < n; start += 100) {
      std::string sql = "INSERT INTO items (id, user_id, note, code, amount) VALUES ";
      std::vector<Value> params;
      for (int i = start; i < std::min(n, start + 100); ++i) {
        int b = static_cast<int>(params.size());
        absl::StrAppend(&sql, i == start ? "" : ", ", "($", b + 1, ", $", b + 2, ", $", b + 3,
                        ", $", b + 4, ", $", b + 5, ")");
        params.push_back(int64_t{i});
        params.push_back(int64_t{1000 + i * 7});
        params.push_back(std::string(kNotes[(i * 7) % 10]));
        params.push_back(std::string(kCodes[(i * 3) % 11]));
        params.push_back(int64_t{1 + (i * 37) % 1000});
      }
      Both(sql, params);
    }
  }
  TempDir dir_;
  std::unique_ptr<Connection> plain_;
  std::unique_ptr<ShardedDataSource> ds_;
};

TEST_F(SqliteItems, TextMergesByTheCollationOfTheStatementOrTheColumn) {
  Fill(300);
  for (int64_t offset : {0, 7, 20, 140, 290}) {
    ExpectSameAnswer(
        plain_.get(), ds_.get(),
        "SELECT id, note FROM items ORDER BY note COLLATE NOCASE, id LIMIT 20 OFFSET $1", {offset});
    ExpectSameAnswer(plain_.get(), ds_.get(),
                     "SELECT id, note FROM items ORDER BY note COLLATE RTRIM DESC, id LIMIT 20 "
                     "OFFSET $1",
                     {offset});
  }
  // A column declared COLLATE NOCASE sorts, groups and is DISTINCT by it,
  // selected, hidden, aliased or under SELECT *.
  ExpectSameAnswer(plain_.get(), ds_.get(), "SELECT id, code FROM items ORDER BY code, id");
  ExpectSameAnswer(plain_.get(), ds_.get(), "SELECT id FROM items ORDER BY code DESC, id LIMIT 30");
  ExpectSameAnswer(plain_.get(), ds_.get(), "SELECT id, code AS c FROM items ORDER BY c, id");
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT id, +code AS c FROM items ORDER BY c, id LIMIT 40");
  ExpectSameAnswer(plain_.get(), ds_.get(), "SELECT * FROM items ORDER BY code, id LIMIT 25");
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT id, code FROM items ORDER BY code COLLATE \"BINARY\", id LIMIT 50");
  for (const char* sql : {"SELECT DISTINCT code FROM items", "SELECT DISTINCT * FROM items",
                          "SELECT code, count(*), sum(amount) FROM items GROUP BY code",
                          "SELECT min(code), max(code), min(note), max(note) FROM items",
                          "SELECT DISTINCT note COLLATE NOCASE AS n FROM items"}) {
    SCOPED_TRACE(sql);
    auto want = plain_->Execute(sql, {});
    auto got = ds_->Execute(sql);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Folded(*got), Folded(*want));
  }
  EXPECT_EQ(ds_->Execute("SELECT DISTINCT code FROM items")->rows.size(), 5u);
  // Shards whose tables declare different collations are not merged by either.
  {
    auto shard = NewSqliteBackend()->Connect("s0", dir_.File("s0.db"), false);
    ASSERT_TRUE(shard.ok()) << shard.status();
    ASSERT_TRUE((*shard)->Execute("DROP TABLE items_00", {}).ok());
    ASSERT_TRUE((*shard)
                    ->Execute("CREATE TABLE items_00 (id bigint PRIMARY KEY, user_id bigint NOT "
                              "NULL, note text, code text, amount bigint NOT NULL)",
                              {})
                    .ok());
  }
  auto drifted = ds_->Execute("SELECT id, code FROM items ORDER BY code, id");
  EXPECT_EQ(drifted.status().code(), absl::StatusCode::kFailedPrecondition) << drifted.status();
  EXPECT_THAT(std::string(drifted.status().message()),
              HasSubstr("the shards' tables differ in how column code compares"));
  // What SQLite would compare by a collation it cannot be asked for is refused.
  auto inner = ds_->Execute("SELECT id FROM items ORDER BY lower(note COLLATE NOCASE), id");
  EXPECT_EQ(inner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(inner.status().message()),
              HasSubstr("the collation SQLite compares an ORDER BY or GROUP BY expression by"));
}

TEST_F(SqliteItems, SumsFailOnIntegerOverflowAsSqliteDoes) {
  Fill(300);
  for (const char* sql : {"SELECT sum(amount * 300000000000000) FROM items",
                          "SELECT code, sum(amount * 300000000000000) FROM items GROUP BY code"}) {
    SCOPED_TRACE(sql);
    auto want = plain_->Execute(sql, {});
    ASSERT_FALSE(want.ok());
    EXPECT_THAT(std::string(want.status().message()), HasSubstr("integer overflow"));
    auto got = ds_->Execute(sql);
    EXPECT_EQ(got.status().code(), want.status().code()) << got.status();
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("integer overflow"));
  }
  // Below the overflow sums stay integers; avg, like SQLite's, never overflows.
  auto big = ds_->Execute("SELECT sum(amount * 30000000000000) FROM items WHERE amount < 10");
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_TRUE(std::holds_alternative<int64_t>(big->rows[0][0])) << ToString(big->rows[0][0]);
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT sum(amount * 30000000000000) FROM items WHERE amount < 10");
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT note, sum(amount), count(*) FROM items GROUP BY note ORDER BY note");
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT avg(amount * 300000000000000), sum(amount * 1.5) FROM items");
}

TEST_F(SqliteItems, LimitAndOffsetNeverWrapAndFollowSqlite) {
  Fill(2006);
  auto all = ds_->Execute("SELECT id FROM items ORDER BY id LIMIT $1 OFFSET 5",
                          {std::numeric_limits<int64_t>::max()});
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows.size(), 2001u);
  for (size_t r = 0; r < all->rows.size(); ++r) {
    ASSERT_EQ(std::get<int64_t>(all->rows[r][0]), static_cast<int64_t>(r + 5));
  }
  for (std::vector<Value> bounds :
       {std::vector<Value>{std::numeric_limits<int64_t>::max(), int64_t{5}},
        {std::numeric_limits<int64_t>::max() - 3, std::numeric_limits<int64_t>::max() - 3},
        {int64_t{-1}, int64_t{10}},  // no limit
        {int64_t{3}, int64_t{-4}},   // offset 0
        {int64_t{2147483647}, int64_t{1}}}) {
    ExpectSameAnswer(plain_.get(), ds_.get(), "SELECT id FROM items ORDER BY id LIMIT $1 OFFSET $2",
                     bounds);
  }
  ExpectSameAnswer(plain_.get(), ds_.get(),
                   "SELECT id FROM items ORDER BY id LIMIT -1 OFFSET 2000");
}

// PostgreSQL: sums are exact (numeric), text is merged only by bytewise
// collations and refused by others.
class PostgresItems : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = PostgresServer::Start();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = *std::move(pg);
    auto admin = NewPostgresBackend()->Connect("admin", pg_->Dsn("postgres"), false);
    ASSERT_TRUE(admin.ok()) << admin.status();
    for (const char* name : {"plain", "c0", "c1", "icu0", "icu1"}) {
      bool icu = std::string(name).rfind("icu", 0) == 0;
      auto r = (*admin)->Execute(
          absl::StrCat("CREATE DATABASE ", name,
                       icu ? " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und'" : ""),
          {});
      ASSERT_TRUE(r.ok()) << r.status();
    }
    auto plain = NewPostgresBackend()->Connect("plain", pg_->Dsn("plain"), false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    plain_ = *std::move(plain);
  }
  std::unique_ptr<ShardedDataSource> Open(const std::vector<std::string>& names) {
    std::vector<std::string> dsns;
    for (const std::string& n : names) dsns.push_back(pg_->Dsn(n));
    return OpenOrDie(ItemsConfig(DatabaseKind::kPostgres, dsns));
  }
  static constexpr char kSchema[] =
      "CREATE TABLE items (id bigint PRIMARY KEY, user_id bigint NOT NULL, note text, "
      "code text COLLATE \"und-x-icu\", amount bigint NOT NULL, price numeric(14, 2) NOT NULL)";
  // Rows whose per-shard sums, read as reals and added, are not the sum.
  void Fill(ShardedDataSource* ds, bool plain) {
    std::vector<std::string> rows = {
        "(1, 101, 'apple', 'b', 9000000000000000000, 0.10)",
        "(2, 202, 'Apple', 'B', 9000000000000000000, 0.20)",
        "(3, 303, 'banana', 'a', 9000000000000000001, 0.10)",
        "(4, 404, '_under', 'A', 4611686018427389952, 1.10)",
        "(5, 505, 'Zebra', 'c', 1, 2.20)",
        "(6, 606, 'zebra', 'C', 7, 3.30)",
    };
    for (const std::string& row : rows) {
      std::string sql =
          absl::StrCat("INSERT INTO items (id, user_id, note, code, amount, price) VALUES ", row);
      auto r = ds->Execute(sql);
      ASSERT_TRUE(r.ok()) << r.status();
      if (plain) {
        ASSERT_TRUE(plain_->Execute(sql, {}).ok());
      }
    }
  }
  std::unique_ptr<PostgresServer> pg_;
  std::unique_ptr<Connection> plain_;
};

TEST_F(PostgresItems, SumsAreExactAndTextMergesOnlyByBytewiseCollations) {
  auto ds = Open({"c0", "c1"});
  ASSERT_NE(ds, nullptr);
  ASSERT_TRUE(ds->Execute(kSchema).ok());
  ASSERT_TRUE(plain_->Execute(kSchema, {}).ok());
  Fill(ds.get(), true);
  // sum(bigint) is numeric: past 64 bits, read as the real nearest the
  // exact sum; sum(numeric) to the cent. Shard by shard as reals, neither is.
  for (const char* sql : {"SELECT sum(amount) FROM items", "SELECT sum(price) FROM items",
                          "SELECT sum(price), sum(amount), count(*) FROM items WHERE id < 4",
                          "SELECT note, sum(price) FROM items GROUP BY note ORDER BY note",
                          "SELECT sum(CAST(price AS real)), sum(CAST(price AS float8)) FROM items",
                          "SELECT avg(price), avg(amount) FROM items"}) {
    SCOPED_TRACE(sql);
    auto want = plain_->Execute(sql, {});
    auto got = ds->Execute(sql);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->rows.size(), want->rows.size());
    for (size_t r = 0; r < want->rows.size(); ++r) {
      for (size_t c = 0; c < want->rows[r].size(); ++c) {
        if (std::string(sql).find("avg") != std::string::npos) continue;  // a quotient
        EXPECT_EQ(got->rows[r][c], want->rows[r][c])
            << "row " << r << " column " << c << ": want " << ToString(want->rows[r][c]) << " got "
            << ToString(got->rows[r][c]);
      }
    }
  }
  auto cents = ds->Execute("SELECT sum(price) FROM items WHERE id < 3");
  ASSERT_TRUE(cents.ok()) << cents.status();
  EXPECT_EQ(cents->rows[0][0], Value(0.3));
  // The databases' default collation is C: bytewise, merged.
  ExpectSameAnswer(plain_.get(), ds.get(), "SELECT id, note FROM items ORDER BY note, id");
  ExpectSameAnswer(plain_.get(), ds.get(), "SELECT DISTINCT note FROM items ORDER BY note");
  ExpectSameAnswer(plain_.get(), ds.get(), "SELECT max(note), min(note) FROM items");
  // A column declared with an ICU collation is refused, naming both.
  for (const char* sql :
       {"SELECT id, code FROM items ORDER BY code, id", "SELECT DISTINCT code FROM items",
        "SELECT min(code) FROM items", "SELECT code, count(*) FROM items GROUP BY code",
        "SELECT id, CAST(code AS varchar(10)) AS v FROM items ORDER BY v, id",
        "SELECT lower(code) AS l FROM items ORDER BY l"}) {
    SCOPED_TRACE(sql);
    auto r = ds->Execute(sql);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("by collation \"und-x-icu\""));
  }
  ExpectSameAnswer(plain_.get(), ds.get(),
                   "SELECT id, code FROM items ORDER BY code COLLATE \"C\", id");
  // Types with comparisons of their own, and sums DDS cannot add, are refused.
  auto array = ds->Execute("SELECT id, ARRAY[note] AS notes FROM items ORDER BY notes, id");
  EXPECT_EQ(array.status().code(), absl::StatusCode::kUnimplemented) << array.status();
  EXPECT_THAT(std::string(array.status().message()), HasSubstr("its type text[] compares"));
  auto money = ds->Execute("SELECT sum(price::money) FROM items");
  EXPECT_EQ(money.status().code(), absl::StatusCode::kUnimplemented) << money.status();
  EXPECT_THAT(std::string(money.status().message()), HasSubstr("it is of type money"));
  // LIMIT and OFFSET as PostgreSQL takes them.
  ExpectSameAnswer(plain_.get(), ds.get(), "SELECT id FROM items ORDER BY id LIMIT $1 OFFSET 1",
                   {std::numeric_limits<int64_t>::max()});
  ExpectSameAnswer(plain_.get(), ds.get(), "SELECT id FROM items ORDER BY id LIMIT $1 OFFSET $2",
                   {Value(), Value()});
  for (const char* sql : {"SELECT id FROM items ORDER BY id LIMIT $1",
                          "SELECT id FROM items ORDER BY id OFFSET $1"}) {
    auto want = plain_->Execute(sql, {int64_t{-1}});
    auto got = ds->Execute(sql, {int64_t{-1}});
    ASSERT_FALSE(want.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(want.status().message()), HasSubstr(got.status().message()));
  }
}

TEST_F(PostgresItems, ANonBytewiseDefaultCollationIsRefusedNotMergedBytewise) {
  auto ds = Open({"icu0", "icu1"});
  ASSERT_NE(ds, nullptr);
  ASSERT_TRUE(ds->Execute(kSchema).ok());
  Fill(ds.get(), false);
  auto text = ds->Execute("SELECT id, note FROM items ORDER BY note, id");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kUnimplemented) << text.status();
  EXPECT_THAT(std::string(text.status().message()),
              HasSubstr("cannot merge column note across shards by collation \"icu\" (the "
                        "databases' default)"));
  // Numbers need no collation; COLLATE "C" is bytewise.
  auto numbers = ds->Execute("SELECT id FROM items ORDER BY amount, id");
  ASSERT_TRUE(numbers.ok()) << numbers.status();
  EXPECT_EQ(numbers->rows.size(), 6u);
  for (const char* bytewise : {"\"C\"", "\"POSIX\"", "ucs_basic"}) {
    auto r = ds->Execute(
        absl::StrCat("SELECT note FROM items ORDER BY note COLLATE ", bytewise, " LIMIT 3"));
    ASSERT_TRUE(r.ok()) << bytewise << ": " << r.status();
  }
  auto c = ds->Execute("SELECT note FROM items ORDER BY note COLLATE \"C\" LIMIT 3");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->rows.size(), 3u);
  EXPECT_EQ(c->rows[0][0], Value(std::string("Apple")));
  EXPECT_EQ(c->rows[1][0], Value(std::string("Zebra")));
  EXPECT_EQ(c->rows[2][0], Value(std::string("_under")));
}

}  // namespace
}  // namespace formica::dds
