// dts::Participant's SQLite pieces: its tables and a prepared statement.
#pragma once

#include <sqlite3.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace formica::dts {

inline constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS formica_dts_barrier ("
    " activity_id TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " phase TEXT NOT NULL,"  // try, confirm or cancel
    " at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (activity_id, action, phase)) WITHOUT ROWID";

// Tries of activities whose initiator made their id (they carry their
// deadline) and that are not confirmed or cancelled yet: the payload phase
// two hands to the step, and when to ask dtsd for the outcome.
inline constexpr char kPendingSchema[] =
    "CREATE TABLE IF NOT EXISTS formica_dts_pending ("
    " activity_id TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " deadline_ms INTEGER NOT NULL,"
    " PRIMARY KEY (activity_id, action)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS formica_dts_pending_by_deadline"
    " ON formica_dts_pending (deadline_ms)";

// One prepared statement, reset after each use.
class Statement {
 public:
  Statement() = default;
  ~Statement() { Finalize(); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  void Finalize() {
    sqlite3_finalize(stmt_);
    stmt_ = nullptr;
  }
  absl::Status Prepare(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      return absl::InternalError(absl::StrCat("barrier table: ", sqlite3_errmsg(db)));
    }
    return absl::OkStatus();
  }
  sqlite3_stmt* get() { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

}  // namespace formica::dts
