// Test support for the DTS tests: what a bank participant's SQLite database
// (tests/dts/account_server.cc) holds: the sums of its accounts and the
// barrier's record of every try, confirm and cancel.
#pragma once

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>

namespace formica::dts {

// What one bank's database says.
struct Books {
  int64_t balance = 0;
  int64_t frozen = 0;
  int64_t incoming = 0;
  int64_t pending = 0;  // tries waiting for their outcome (see ReadBooks)
  // activity id -> phases recorded for it ("try", "confirm", "cancel")
  std::map<std::string, std::set<std::string>> barrier;
};

inline Books ReadBooks(const std::string& path) {
  Books b;
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK) << path;
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT SUM(balance), SUM(frozen), SUM(incoming) FROM accounts",
                               -1, &s, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  if (sqlite3_step(s) == SQLITE_ROW) {
    b.balance = sqlite3_column_int64(s, 0);
    b.frozen = sqlite3_column_int64(s, 1);
    b.incoming = sqlite3_column_int64(s, 2);
  }
  sqlite3_finalize(s);
  EXPECT_EQ(
      sqlite3_prepare_v2(db, "SELECT activity_id, phase FROM formica_dts_barrier", -1, &s, nullptr),
      SQLITE_OK);
  while (sqlite3_step(s) == SQLITE_ROW) {
    b.barrier[reinterpret_cast<const char*>(sqlite3_column_text(s, 0))].insert(
        reinterpret_cast<const char*>(sqlite3_column_text(s, 1)));
  }
  sqlite3_finalize(s);
  // Tries of activities begun without a round trip that no confirm or
  // cancel has reached yet (the table is made when the participant opens).
  if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM formica_dts_pending", -1, &s, nullptr) ==
          SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    b.pending = sqlite3_column_int64(s, 0);
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return b;
}

}  // namespace formica::dts
