// Instructions per point select by user id, DDS against the same SQLite file
// used directly, in one process: counted by callgrind, so the figure does not
// depend on the machine's load (bench_dds times them).
//
//   valgrind --tool=callgrind --callgrind-out-file=a.out bench_dds_profile 20000
//   valgrind --tool=callgrind --callgrind-out-file=b.out bench_dds_profile 40000
//   callgrind_annotate --inclusive=yes a.out   (and b.out)
//
// DdsSelects and DirectSelects each run 2,000 warm-up selects and then N;
// the difference between the two runs' inclusive counts divided by the
// difference in N is the per-statement cost without one-time work
// (parsing, preparing). The tables and keys are bench_dds's. With a second
// argument, "direct" or "dds", the N selects run one way only, for tools
// that count the whole process (/usr/bin/time, strace -c).
#include <sqlite3.h>

#include <cstdio>
#include <cstdlib>
#include <random>

#include "absl/strings/str_format.h"
#include "formica/dds/data_source.h"
#include "process.h"

using formica::dds::Value;

static sqlite3* OpenDirect(const std::string& path) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db,
                  SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL", nullptr, nullptr,
               nullptr);
  return db;
}

__attribute__((noinline)) int64_t DirectSelects(const std::vector<int64_t>& keys,
                                                std::vector<sqlite3_stmt*>& stmts) {
  int64_t sum = 0;
  for (int64_t id : keys) {
    sqlite3_stmt* st = stmts[id % 100];
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW) std::abort();
    int64_t uid = sqlite3_column_int64(st, 0);
    std::string name = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    int64_t balance = sqlite3_column_int64(st, 2);
    if (sqlite3_step(st) != SQLITE_DONE) std::abort();
    sqlite3_reset(st);
    sum += balance + static_cast<int64_t>(name.size()) + uid;
  }
  return sum;
}

__attribute__((noinline)) int64_t DdsSelects(const std::vector<int64_t>& keys,
                                             formica::dds::ShardedDataSource& ds) {
  int64_t sum = 0;
  for (int64_t id : keys) {
    auto r =
        ds.Execute("SELECT user_id, name, balance FROM accounts WHERE user_id = $1", {Value(id)});
    if (!r.ok() || r->rows.size() != 1) std::abort();
    int64_t uid = std::get<int64_t>(r->rows[0][0]);
    std::string name = std::get<std::string>(r->rows[0][1]);
    int64_t balance = std::get<int64_t>(r->rows[0][2]);
    sum += balance + static_cast<int64_t>(name.size()) + uid;
  }
  return sum;
}

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 20000;
  formica::testing::TempDir dir;
  std::string file = dir.File("fund.db");
  formica::dds::DataSourceConfig c;
  c.databases.push_back(
      formica::dds::DatabaseConfig{"fund", formica::dds::DatabaseKind::kSqlite, file, {}, 1, {}});
  c.sharded_tables = {{"accounts", "user_id"}};
  auto ds = formica::dds::ShardedDataSource::Open(c);
  if (!ds.ok()) return 1;
  (void)(*ds)->Execute(
      "CREATE TABLE accounts (user_id bigint PRIMARY KEY, name text NOT NULL, balance bigint NOT "
      "NULL)");
  std::vector<int64_t> users;
  sqlite3* db = OpenDirect(file);
  sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
  for (int i = 0; i < 5000; ++i) {
    int64_t id = 10000000 + static_cast<int64_t>(i) * 7919 % 89999999;
    users.push_back(id);
    sqlite3_exec(
        db,
        absl::StrFormat("INSERT INTO accounts_%02d VALUES (%d, 'user%d', 1000)", id % 100, id, i)
            .c_str(),
        nullptr, nullptr, nullptr);
  }
  sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  std::vector<sqlite3_stmt*> stmts(100);
  for (int s = 0; s < 100; ++s) {
    sqlite3_prepare_v2(
        db,
        absl::StrFormat("SELECT user_id, name, balance FROM accounts_%02d WHERE user_id = ?1", s)
            .c_str(),
        -1, &stmts[s], nullptr);
  }
  std::mt19937_64 rng(42);
  std::vector<int64_t> keys(n), warm(2000);
  for (auto& k : keys) k = users[rng() % users.size()];
  for (auto& k : warm) k = users[rng() % users.size()];
  // A second argument "direct" or "dds" runs the N selects one way only
  // (for perf stat and strace -c, which count the whole process).
  std::string only = argc > 2 ? argv[2] : "";
  int64_t a = DirectSelects(warm, stmts) - DdsSelects(warm, **ds);
  int64_t b = only == "dds" ? 0 : DirectSelects(keys, stmts);
  int64_t d = only == "direct" ? 0 : DdsSelects(keys, **ds);
  bool same = a == 0 && (b == d || !only.empty());
  std::printf("%d selects, both ways read %s\n", n, same ? "the same rows" : "DIFFERENT rows");
  for (auto* s : stmts) sqlite3_finalize(s);
  sqlite3_close(db);
  return same ? 0 : 1;
}
