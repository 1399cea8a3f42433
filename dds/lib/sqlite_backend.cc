// SQLite behind DDS: one file per database, WAL, every commit synced.
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <map>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "backend.h"

namespace formica::dds {
namespace {

// How long a writer waits for the file's other writers, as SQLite's own
// busy timeout.
constexpr absl::Duration kWriterWait = absl::Seconds(5);

// The writers of one SQLite file in this process.
//
// Turns: one writer at a time, handed on the moment the last one ends.
// SQLite lets one connection write at a time and makes the others poll,
// sleeping 1 to 100 ms between tries (its busy handler): with a pool of
// connections writing at once, writers slept far longer than their writes
// took. Writers of other processes still meet the busy handler. Not tied
// to a thread: a transaction may end on another.
//
// Syncs: commits are written without a sync (synchronous=NORMAL) and the
// turn handed on; then the committer waits for an fdatasync of the WAL
// file that began after its commit was written, which one of the waiting
// committers runs for all of them (group commit). A commit is thus on disk
// before Commit returns, as with synchronous=FULL, at one sync per group
// instead of one per commit. (Another connection may read a commit during
// its sync; any commit that follows it in the log is durable only with it.)
class FileWriters {
 public:
  explicit FileWriters(std::string wal) : wal_(std::move(wal)) {}

  // False when the file stayed taken for `wait`.
  bool Enter(absl::Duration wait) {
    absl::MutexLock lock(&mu_);
    auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !held_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&free), wait)) return false;
    held_ = true;
    return true;
  }
  // Ends the turn. `wrote`: a commit was written in it; returns its ticket
  // for Synced (0 when nothing was written).
  int64_t Leave(bool wrote) {
    absl::MutexLock lock(&mu_);
    held_ = false;
    return wrote ? ++written_ : 0;
  }

  // Returns once the commit of `ticket` is on disk.
  absl::Status Synced(int64_t ticket) {
    if (ticket == 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    while (synced_ < ticket) {
      if (syncing_) {
        auto done = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !syncing_ || synced_ >= ticket;
        };
        mu_.Await(absl::Condition(&done));
        continue;
      }
      syncing_ = true;
      const int64_t covers = written_;
      mu_.Unlock();
      absl::Status st = SyncWal();
      mu_.Lock();
      syncing_ = false;
      if (!st.ok()) return st;
      synced_ = std::max(synced_, covers);
    }
    return absl::OkStatus();
  }

 private:
  absl::Status SyncWal() {
    int fd = ::open(wal_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fdatasync(fd) != 0) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      return absl::InternalError(absl::StrCat("cannot sync ", wal_, ": ", std::strerror(err),
                                              "; the last commits may not be on disk"));
    }
    ::close(fd);
    return absl::OkStatus();
  }

  const std::string wal_;
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;  // commits written (tickets handed out)
  int64_t synced_ ABSL_GUARDED_BY(mu_) = 0;   // of them, on disk
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;
};

// Prepared statements kept per connection: a service's statements times
// the tables they run on. Past it, one is dropped for each one added.
constexpr size_t kMaxStatements = 2048;

class SqliteConnection : public Connection {
 public:
  // `gate` is shared by the connections of one file; null for read-only ones.
  SqliteConnection(std::string name, sqlite3* db, std::shared_ptr<FileWriters> gate)
      : name_(std::move(name)), db_(db), gate_(std::move(gate)) {}
  ~SqliteConnection() override {
    if (in_gate_) gate_->Leave(false);  // closing rolls the transaction back
    for (auto& [id, p] : by_id_) sqlite3_finalize(p.stmt);
    for (auto& [sql, p] : by_text_) sqlite3_finalize(p.stmt);
    if (transient_.stmt != nullptr) sqlite3_finalize(transient_.stmt);
    sqlite3_close_v2(db_);
  }

  absl::StatusOr<ResultSet> Execute(const std::string& sql, absl::Span<const Value> params,
                                    uint64_t id, std::vector<std::string>* collations) override {
    absl::StatusOr<Prepared*> p = Prepare(sql, id);
    if (!p.ok()) return p.status();
    sqlite3_stmt* stmt = (*p)->stmt;
    const std::vector<int>& slots = (*p)->param_of_slot;
    for (size_t i = 0; i < slots.size(); ++i) {
      int slot = static_cast<int>(i) + 1;
      int k = slots[i];
      if (k > static_cast<int>(params.size())) {
        const char* name = sqlite3_bind_parameter_name(stmt, slot);
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
        return absl::InvalidArgumentError(
            absl::StrCat("database ", name_, ": the statement uses ",
                         name != nullptr ? std::string(name) : absl::StrCat("parameter ", slot),
                         "; parameters given: ", params.size()));
      }
      const Value& v = params[k - 1];
      switch (v.index()) {
        case 0:
          sqlite3_bind_null(stmt, slot);
          break;
        case 1:
          sqlite3_bind_int64(stmt, slot, std::get<int64_t>(v));
          break;
        case 2:
          sqlite3_bind_double(stmt, slot, std::get<double>(v));
          break;
        default: {
          const std::string& s = std::get<std::string>(v);
          sqlite3_bind_text(stmt, slot, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
        }
      }
    }
    // A write of its own (not in a transaction): through the gate.
    bool entered = false;
    if (gate_ != nullptr && !in_gate_ && !sqlite3_stmt_readonly(stmt)) {
      if (!gate_->Enter(kWriterWait)) {
        sqlite3_clear_bindings(stmt);
        return Busy();
      }
      entered = true;
    }
    ResultSet out;
    const int n = static_cast<int>((*p)->columns.size());
    out.columns = (*p)->columns;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      std::vector<Value>& row = out.rows.emplace_back();
      row.reserve(n);
      for (int c = 0; c < n; ++c) {
        // The column's value as SQLite holds it: one lookup instead of one
        // per sqlite3_column_* call. Safe unprotected: this connection is
        // used by one thread at a time.
        sqlite3_value* v = sqlite3_column_value(stmt, c);
        switch (sqlite3_value_type(v)) {
          case SQLITE_NULL:
            row.emplace_back();
            break;
          case SQLITE_INTEGER:
            row.emplace_back(static_cast<int64_t>(sqlite3_value_int64(v)));
            break;
          case SQLITE_FLOAT:
            row.emplace_back(sqlite3_value_double(v));
            break;
          default: {
            const void* data = sqlite3_value_blob(v);
            int len = sqlite3_value_bytes(v);
            row.emplace_back(std::string(static_cast<const char*>(data), data ? len : 0));
          }
        }
      }
    }
    absl::Status st;
    if (rc != SQLITE_DONE) st = Error(rc);
    if (st.ok() && collations != nullptr) {
      // Read after the steps: a schema changed since the statement was
      // prepared has prepared it again.
      collations->clear();
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        collations->push_back(DeclaredCollation(stmt, c));
      }
    }
    if (st.ok() && !sqlite3_stmt_readonly(stmt)) out.rows_affected = sqlite3_changes(db_);
    sqlite3_reset(stmt);  // every slot is bound again before the next step
    if (entered) {
      int64_t ticket = gate_->Leave(st.ok());
      if (st.ok()) st = gate_->Synced(ticket);
    }
    if (!st.ok()) return st;
    return out;
  }

  absl::Status Begin() override {
    if (gate_ != nullptr && !in_gate_) {
      if (!gate_->Enter(kWriterWait)) return Busy();
      in_gate_ = true;
    }
    absl::Status st = Exec("BEGIN IMMEDIATE");
    if (!st.ok()) LeaveGateIfEnded();
    return st;
  }
  absl::Status Commit() override {
    absl::Status st = Exec("COMMIT");
    int64_t ticket = LeaveGateIfEnded(st.ok());
    if (st.ok() && gate_ != nullptr) st = gate_->Synced(ticket);
    return st;
  }
  absl::Status Rollback() override {
    absl::Status st = sqlite3_get_autocommit(db_) ? absl::OkStatus()  // already rolled back
                                                  : Exec("ROLLBACK");
    LeaveGateIfEnded();
    return st;
  }
  bool broken() const override { return broken_; }
  const std::string& default_collation() const override {
    static const std::string binary = "BINARY";
    return binary;
  }

 private:
  struct Prepared {
    sqlite3_stmt* stmt = nullptr;
    std::vector<int> param_of_slot;  // slot i+1 binds $param_of_slot[i]
    std::vector<std::string> columns;
  };

  // The collation the table declares for result column c when the column is
  // a table's column (SQLite resolves it through aliases and subqueries).
  std::string DeclaredCollation(sqlite3_stmt* stmt, int c) {
    const char* database = sqlite3_column_database_name(stmt, c);
    const char* table = sqlite3_column_table_name(stmt, c);
    const char* column = sqlite3_column_origin_name(stmt, c);
    if (database == nullptr || table == nullptr || column == nullptr) return "";
    const char* collation = nullptr;
    if (sqlite3_table_column_metadata(db_, database, table, column, nullptr, &collation, nullptr,
                                      nullptr, nullptr) != SQLITE_OK ||
        collation == nullptr) {
      return "";
    }
    return collation;
  }

  absl::Status Exec(const char* sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return absl::OkStatus();
    std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    if (std::string(sql) == "ROLLBACK" || std::string(sql) == "COMMIT") {
      broken_ = !sqlite3_get_autocommit(db_);
    }
    return Classify(rc, msg);
  }

  absl::StatusOr<Prepared*> Prepare(const std::string& sql, uint64_t id) {
    if (id != 0) {
      auto it = by_id_.find(id);
      if (it != by_id_.end()) return &it->second;
    } else {
      auto it = by_text_.find(sql);
      if (it != by_text_.end()) return &it->second;
    }
    Prepared p;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &p.stmt, &tail);
    if (rc != SQLITE_OK) return Classify(rc, sqlite3_errmsg(db_));
    if (p.stmt == nullptr) return absl::InvalidArgumentError("the statement is empty");
    // Without a '$' in the text, slot i binds the i-th parameter: the
    // router writes parameters as ? in the order it binds them (SQLite
    // looks each named one up among all the others: a statement of many
    // was quadratic to prepare), and asking each slot's name would be
    // quadratic too. A text holding a '$' is mapped slot by slot.
    int slots = sqlite3_bind_parameter_count(p.stmt);
    bool numbered = sql.find('$') == std::string::npos;
    for (int i = 1; i <= slots; ++i) {
      if (numbered) {
        p.param_of_slot.push_back(i);
        continue;
      }
      const char* name = sqlite3_bind_parameter_name(p.stmt, i);
      int k = 0;
      if (name == nullptr) {
        k = i;  // ?: the i-th
      } else if (name[0] == '?' && absl::SimpleAtoi(name + 1, &k) && k == i) {
      } else if (name[0] != '$' || !absl::SimpleAtoi(name + 1, &k) || k < 1) {
        sqlite3_finalize(p.stmt);
        return absl::InvalidArgumentError(
            absl::StrCat("database ", name_, ": parameters are written $1, $2, ...; got ", name));
      }
      p.param_of_slot.push_back(k);
    }
    for (int c = 0; c < sqlite3_column_count(p.stmt); ++c) {
      p.columns.emplace_back(sqlite3_column_name(p.stmt, c));
    }
    if (id == 0 && sql.size() > kMaxKeptText) {
      if (transient_.stmt != nullptr) sqlite3_finalize(transient_.stmt);
      transient_ = std::move(p);
      return &transient_;
    }
    // Statements made for one call only (id 0) are few; keep a handful.
    if (id == 0 && by_text_.size() >= 64) {
      sqlite3_finalize(by_text_.begin()->second.stmt);
      by_text_.erase(by_text_.begin());
    }
    if (id != 0 && by_id_.size() >= kMaxStatements) {
      sqlite3_finalize(by_id_.begin()->second.stmt);
      by_id_.erase(by_id_.begin());
    }
    if (id != 0) return &by_id_.emplace(id, std::move(p)).first->second;
    return &by_text_.emplace(sql, std::move(p)).first->second;
  }

  absl::Status Error(int rc) { return Classify(rc, sqlite3_errmsg(db_)); }

  absl::Status Busy() {
    return absl::AbortedError(absl::StrCat("database ", name_, ": database is locked (another ",
                                           "writer held it for ", absl::FormatDuration(kWriterWait),
                                           ")"));
  }

  // After the transaction ended (committed, rolled back, or never begun),
  // the next writer may go.
  // `committed`: the transaction ended by a commit (the ticket to wait for).
  int64_t LeaveGateIfEnded(bool committed = false) {
    if (in_gate_ && sqlite3_get_autocommit(db_)) {
      in_gate_ = false;
      return gate_->Leave(committed);
    }
    return 0;
  }

  absl::Status Classify(int rc, const std::string& msg) {
    std::string text = absl::StrCat("database ", name_, ": ", msg);
    switch (rc & 0xff) {
      case SQLITE_CONSTRAINT:
        return absl::FailedPreconditionError(text);
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return absl::AbortedError(text);
      case SQLITE_ERROR:
      case SQLITE_RANGE:
      case SQLITE_MISMATCH:
      case SQLITE_READONLY:
        return absl::InvalidArgumentError(text);
      case SQLITE_CANTOPEN:
        return absl::UnavailableError(text);
      case SQLITE_FULL:
        return absl::ResourceExhaustedError(text);
      default:
        broken_ = true;
        return absl::InternalError(text);
    }
  }

  const std::string name_;
  sqlite3* const db_;
  absl::flat_hash_map<uint64_t, Prepared> by_id_;
  absl::flat_hash_map<std::string, Prepared> by_text_;
  Prepared transient_;  // the last text too long to keep (kMaxKeptText)
  bool broken_ = false;
  const std::shared_ptr<FileWriters> gate_;
  bool in_gate_ = false;  // this connection's transaction holds the gate
};

class SqliteBackend : public Backend {
 public:
  absl::StatusOr<std::unique_ptr<Connection>> Connect(const std::string& name,
                                                      const std::string& target,
                                                      bool read_only) override {
    sqlite3* db = nullptr;
    int flags = SQLITE_OPEN_NOMUTEX |
                (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(target.c_str(), &db, flags, nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
      sqlite3_close_v2(db);
      return absl::UnavailableError(
          absl::StrCat("database ", name, ": cannot open SQLite file ", target, ": ", msg));
    }
    sqlite3_busy_timeout(db, 5000);
    // A file of our own gets its commits synced by FileWriters; any other
    // target (":memory:", a URI) by SQLite.
    const bool file = target != ":memory:" && target.rfind("file:", 0) != 0;
    const char* setup = read_only ? "PRAGMA query_only = ON"
                        : file    ? "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL"
                                  : "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL";
    char* err = nullptr;
    if (sqlite3_exec(db, setup, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err != nullptr ? err : "unknown error";
      sqlite3_free(err);
      sqlite3_close_v2(db);
      return absl::UnavailableError(
          absl::StrCat("database ", name, ": cannot set up SQLite file ", target, ": ", msg));
    }
    std::shared_ptr<FileWriters> gate;
    if (!read_only && file) {
      absl::MutexLock lock(&mu_);
      std::shared_ptr<FileWriters>& g = gates_[target];
      if (g == nullptr) g = std::make_shared<FileWriters>(target + "-wal");
      gate = g;
    }
    return std::unique_ptr<Connection>(new SqliteConnection(name, db, std::move(gate)));
  }
  bool nulls_largest() const override { return false; }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<FileWriters>> gates_ ABSL_GUARDED_BY(mu_);  // by file
};

}  // namespace

std::unique_ptr<Backend> NewSqliteBackend() { return std::make_unique<SqliteBackend>(); }

}  // namespace formica::dds
