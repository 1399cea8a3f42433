// DDS against the same SQLite database used directly, in one run.
//
// Point select and single-row update by user id: through a
// ShardedDataSource (one SQLite file holding the 100 shard tables
// accounts_00..accounts_99) and directly on that file with the sqlite3 API
// as a service would use it (one connection, a prepared statement per
// physical table, the row read into a struct). Same pragmas both ways (WAL,
// synchronous=FULL: every update is on disk when it returns). One thread,
// so the ratio is the cost DDS adds per statement.
//
// Scatter: SELECT ... ORDER BY amount DESC, id LIMIT 20 over 8 shards (8
// SQLite files, modulo 8, no index on amount) against the same query on
// one database holding all the rows: p50 latency.
//
//   ./formica bench dds [--quick] [--accounts N] [--orders N]
#include <sqlite3.h>

#include <cstdio>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "formica/dds/data_source.h"
#include "process.h"

namespace formica::bench {
namespace {

using formica::dds::DatabaseConfig;
using formica::dds::DataSourceConfig;
using formica::dds::ShardedDataSource;
using formica::dds::Value;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "bench_dds: %s\n", what.c_str());
    std::exit(1);
  }
}

void Check(const absl::Status& st, const std::string& what) {
  Check(st.ok(), absl::StrCat(what, ": ", st.ToString()));
}

sqlite3* OpenDirect(const std::string& path) {
  sqlite3* db = nullptr;
  Check(sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) == SQLITE_OK,
        "open " + path);
  Check(sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL", nullptr, nullptr,
                     nullptr) == SQLITE_OK,
        "pragmas");
  return db;
}

void Exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  Check(rc == SQLITE_OK, absl::StrCat(sql.substr(0, 60), ": ", err ? err : ""));
}

struct Account {
  int64_t user_id = 0;
  std::string name;
  int64_t balance = 0;
};

// Runs `op` `n` times; returns ops per second.
template <typename Op>
double Rate(int n, Op op) {
  absl::Time start = absl::Now();
  for (int i = 0; i < n; ++i) op(i);
  return n / absl::ToDoubleSeconds(absl::Now() - start);
}

// Runs `a` and `b` `n` times each, alternating batches of `batch` so that
// the machine's changing load (and, for writes, SQLite's WAL checkpoints)
// falls on both alike; returns their ops per second.
template <typename A, typename B>
std::pair<double, double> Interleaved(int n, int batch, A a, B b) {
  absl::Duration ta, tb;
  for (int start = 0, k = 0; start < n; start += batch, ++k) {
    int end = std::min(n, start + batch);
    auto run = [&](auto& op, absl::Duration* total) {
      absl::Time t0 = absl::Now();
      for (int i = start; i < end; ++i) op(i);
      *total += absl::Now() - t0;
    };
    if (k % 2 == 0) {  // each goes first half of the time
      run(a, &ta);
      run(b, &tb);
    } else {
      run(b, &tb);
      run(a, &ta);
    }
  }
  return {n / absl::ToDoubleSeconds(ta), n / absl::ToDoubleSeconds(tb)};
}

template <typename Op>
double MedianMs(int runs, Op op) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    absl::Time start = absl::Now();
    op();
    ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  return Percentile(ms, 50);
}

int Run(int argc, char** argv) {
  bool quick = false;
  int accounts = 20000, orders = 200000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
      accounts = 5000;
      orders = 40000;
    } else if (std::strcmp(argv[i], "--accounts") == 0 && i + 1 < argc) {
      accounts = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--orders") == 0 && i + 1 < argc) {
      orders = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_dds [--quick] [--accounts N] [--orders N]\n");
      return 2;
    }
  }
  const int selects = quick ? 50000 : 300000;
  const int updates = quick ? 1000 : 4000;
  formica::testing::TempDir dir;
  BenchReport report;

  // ---- point select and update: 100 shard tables in one file ----------
  std::string file = dir.File("fund.db");
  DataSourceConfig c;
  c.databases.push_back(DatabaseConfig{"fund", dds::DatabaseKind::kSqlite, file, {}, 1, {}});
  c.sharded_tables = {{"accounts", "user_id"}};
  auto ds = ShardedDataSource::Open(c);
  Check(ds.status(), "open the data source");
  Check((*ds)
            ->Execute("CREATE TABLE accounts (user_id bigint PRIMARY KEY, name text NOT NULL, "
                      "balance bigint NOT NULL)")
            .status(),
        "create accounts");
  std::mt19937_64 rng(42);
  std::vector<int64_t> users;
  {
    sqlite3* db = OpenDirect(file);
    Exec(db, "BEGIN");
    for (int i = 0; i < accounts; ++i) {
      int64_t id = 10000000 + static_cast<int64_t>(i) * 7919 % 89999999;
      users.push_back(id);
      Exec(db, absl::StrFormat("INSERT INTO accounts_%02d VALUES (%d, 'user%d', 1000)", id % 100,
                               id, i));
    }
    Exec(db, "COMMIT");
    sqlite3_close(db);
  }
  std::printf("point: %d accounts in 100 tables of one SQLite file (WAL, synchronous=FULL)\n",
              accounts);

  // Direct: one connection, one prepared statement per physical table.
  sqlite3* direct = OpenDirect(file);
  std::vector<sqlite3_stmt*> select_stmt(100), update_stmt(100);
  for (int s = 0; s < 100; ++s) {
    Check(sqlite3_prepare_v2(direct,
                             absl::StrFormat("SELECT user_id, name, balance FROM accounts_%02d "
                                             "WHERE user_id = ?1",
                                             s)
                                 .c_str(),
                             -1, &select_stmt[s], nullptr) == SQLITE_OK,
          "prepare select");
    Check(sqlite3_prepare_v2(direct,
                             absl::StrFormat("UPDATE accounts_%02d SET balance = balance + 1 WHERE "
                                             "user_id = ?1",
                                             s)
                                 .c_str(),
                             -1, &update_stmt[s], nullptr) == SQLITE_OK,
          "prepare update");
  }
  std::vector<int64_t> keys(selects);
  for (int64_t& k : keys) k = users[rng() % users.size()];
  int64_t checksum_direct = 0, checksum_dds = 0;
  auto direct_select = [&](int i) {
    int64_t id = keys[i];
    sqlite3_stmt* st = select_stmt[id % 100];
    sqlite3_bind_int64(st, 1, id);
    Account a;
    Check(sqlite3_step(st) == SQLITE_ROW, "direct select finds the row");
    a.user_id = sqlite3_column_int64(st, 0);
    a.name = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    a.balance = sqlite3_column_int64(st, 2);
    Check(sqlite3_step(st) == SQLITE_DONE, "direct select finds one row");
    sqlite3_reset(st);
    checksum_direct += a.balance + static_cast<int64_t>(a.name.size());
  };
  auto dds_select = [&](int i) {
    auto r = (*ds)->Execute("SELECT user_id, name, balance FROM accounts WHERE user_id = $1",
                            {Value(keys[i])});
    Check(r.ok() && r->rows.size() == 1, "dds select finds the row");
    Account a;
    a.user_id = std::get<int64_t>(r->rows[0][0]);
    a.name = std::get<std::string>(r->rows[0][1]);
    a.balance = std::get<int64_t>(r->rows[0][2]);
    checksum_dds += a.balance + static_cast<int64_t>(a.name.size());
  };
  // Warm both (page cache, statement caches), then run them interleaved.
  Rate(selects / 10, direct_select);
  Rate(selects / 10, dds_select);
  checksum_direct = checksum_dds = 0;
  auto [direct_sel, dds_sel] = Interleaved(selects, 500, direct_select, dds_select);
  Check(checksum_direct == checksum_dds, "both ways read the same rows");
  std::printf("point select: direct %.0f/s, DDS %.0f/s, ratio %.3f\n", direct_sel, dds_sel,
              dds_sel / direct_sel);

  auto direct_update = [&](int i) {
    int64_t id = keys[i];
    sqlite3_stmt* st = update_stmt[id % 100];
    sqlite3_bind_int64(st, 1, id);
    Check(sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(direct) == 1, "direct update");
    sqlite3_reset(st);
  };
  auto dds_update = [&](int i) {
    auto r = (*ds)->Execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
                            {Value(keys[i])});
    Check(r.ok() && r->rows_affected == 1, "dds update");
  };
  auto [direct_upd, dds_upd] = Interleaved(updates, 1, direct_update, dds_update);
  std::printf("update (each synced): direct %.0f/s, DDS %.0f/s, ratio %.3f\n", direct_upd, dds_upd,
              dds_upd / direct_upd);
  for (int s = 0; s < 100; ++s) {
    sqlite3_finalize(select_stmt[s]);
    sqlite3_finalize(update_stmt[s]);
  }
  sqlite3_close(direct);
  ds->reset();

  // ---- scatter over 8 shards vs one database -------------------------
  DataSourceConfig sc;
  for (int s = 0; s < 8; ++s) {
    sc.databases.push_back(DatabaseConfig{absl::StrCat("s", s),
                                          dds::DatabaseKind::kSqlite,
                                          dir.File(absl::StrCat("s", s, ".db")),
                                          {},
                                          2,
                                          {}});
  }
  sc.shards = 8;
  sc.function = dds::ShardFunction::kModulo;
  sc.sharded_tables = {{"orders", "user_id"}};
  auto scatter = ShardedDataSource::Open(sc);
  Check(scatter.status(), "open the 8-shard data source");
  const std::string schema =
      "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, amount bigint NOT "
      "NULL, status text)";
  Check((*scatter)->Execute(schema).status(), "create orders");
  sqlite3* single = OpenDirect(dir.File("single.db"));
  Exec(single, schema);
  std::vector<sqlite3*> shard_db;
  for (int s = 0; s < 8; ++s) {
    shard_db.push_back(OpenDirect(dir.File(absl::StrCat("s", s, ".db"))));
    Exec(shard_db[s], "BEGIN");
  }
  Exec(single, "BEGIN");
  for (int i = 0; i < orders; ++i) {
    int64_t user = 1000 + static_cast<int64_t>(rng() % 100000);
    int64_t amount = static_cast<int64_t>(rng() % 1000000);
    std::string values = absl::StrFormat("(%d, %d, %d, 'paid')", i, user, amount);
    Exec(single, "INSERT INTO orders VALUES " + values);
    Exec(shard_db[user % 8], absl::StrFormat("INSERT INTO orders_%02d VALUES ", user % 8) + values);
  }
  Exec(single, "COMMIT");
  for (sqlite3* db : shard_db) {
    Exec(db, "COMMIT");
    sqlite3_close(db);
  }
  const std::string query =
      "SELECT id, user_id, amount FROM orders ORDER BY amount DESC, id LIMIT 20";
  sqlite3_stmt* single_stmt = nullptr;
  Check(sqlite3_prepare_v2(single, query.c_str(), -1, &single_stmt, nullptr) == SQLITE_OK,
        "prepare the single query");
  std::vector<int64_t> single_ids, scatter_ids;
  auto run_single = [&] {
    single_ids.clear();
    while (sqlite3_step(single_stmt) == SQLITE_ROW) {
      single_ids.push_back(sqlite3_column_int64(single_stmt, 0));
    }
    sqlite3_reset(single_stmt);
  };
  auto run_scatter = [&] {
    auto r = (*scatter)->Execute(query);
    Check(r.ok(), "scatter query");
    scatter_ids.clear();
    for (const auto& row : r->rows) scatter_ids.push_back(std::get<int64_t>(row[0]));
  };
  const int runs = quick ? 10 : 40;
  run_single();
  run_scatter();
  double single_ms = MedianMs(runs, run_single);
  double scatter_ms = MedianMs(runs, run_scatter);
  Check(single_ids == scatter_ids && single_ids.size() == 20, "both give the same top 20");
  std::printf("scatter: %d orders, top 20 by amount: 8 shards %.2f ms, one database %.2f ms\n",
              orders, scatter_ms, single_ms);
  sqlite3_finalize(single_stmt);
  sqlite3_close(single);

  report.Set("point_select_ratio", dds_sel / direct_sel);
  report.Set("update_ratio", dds_upd / direct_upd);
  report.Set("scatter8_ms", scatter_ms);
  report.Set("single_db_ms", single_ms);
  report.Set("point_select_dds_per_s", dds_sel);
  report.Set("point_select_direct_per_s", direct_sel);
  report.Set("update_dds_per_s", dds_upd);
  report.Set("update_direct_per_s", direct_upd);
  report.SetSetup("accounts", accounts);
  report.SetSetup("orders", orders);
  report.Headline("dds point selects/s by user id (vs SQLite direct)", "point_select_dds_per_s",
                  "point_select_direct_per_s", "point_select_ratio", ">= 0.95 of direct");
  report.Headline("dds synced single-row updates/s (vs SQLite direct)", "update_dds_per_s",
                  "update_direct_per_s", "update_ratio", ">= 0.95 of direct");
  report.SetMachine(dir.path());
  report.SetSetup("threads", 1);
  report.SetSetup("storage", "SQLite WAL synchronous=FULL, one file / 8 files");
  report.SetSetup("peer_version",
                  absl::StrCat("SQLite ", sqlite3_libversion(), " (used directly)"));
  report.SetSetup("fsync", "both sides: SQLite WAL synchronous=FULL, each update synced");
  // Every check above ends the run (exit 1) when it fails, so reaching here is ok.
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
