// A physical database behind DDS, one interface with an implementation per
// kind (SQLite, PostgreSQL), and the pool of connections DDS keeps to each.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "formica/dds/value.h"

namespace formica::dds {

// Statement texts longer than this are not kept from one call to the next
// (analyses, rewritten texts, prepared statements): a key IN list of
// thousands, different at each call, would otherwise fill memory.
constexpr size_t kMaxKeptText = 64 * 1024;

// One connection; used by one thread at a time.
class Connection {
 public:
  virtual ~Connection() = default;
  // Runs one statement with $1, $2, ... bound to `params`. Errors name the
  // database: INVALID_ARGUMENT for SQL the database refuses (syntax, no such
  // table), FAILED_PRECONDITION for a broken constraint, ABORTED for a
  // conflict worth retrying, UNAVAILABLE when the database cannot be reached.
  // `id`, when not 0, names `sql` for the connection's statement cache (the
  // router's RoutedStatement::id): the same id always comes with the same text.
  // Parameters are $1, $2, ...; for SQLite also ? (the i-th binds params[i-1]),
  // which the router writes.
  // `collations`, when given, receives what the database tells of how each
  // result column compares. SQLite: the collation its table declares for a
  // table's column ("BINARY", "NOCASE"), "" for an expression. PostgreSQL:
  // "" for a type compared without a collation (numbers, dates), "text" for
  // text, varchar, char and name (compared by the collation the statement
  // derives, which pg_collation_for tells), "type <name>" for another
  // collatable type (its comparison has rules of its own: citext, arrays).
  virtual absl::StatusOr<ResultSet> Execute(const std::string& sql, absl::Span<const Value> params,
                                            uint64_t id = 0,
                                            std::vector<std::string>* collations = nullptr) = 0;
  // BEGIN, COMMIT, ROLLBACK.
  virtual absl::Status Begin() = 0;
  virtual absl::Status Commit() = 0;
  virtual absl::Status Rollback() = 0;
  // True after a failure that leaves the connection unusable; the pool
  // drops it instead of handing it out again.
  virtual bool broken() const = 0;
  // The collation text compares by where neither the statement nor the
  // column names one: SQLite "BINARY"; PostgreSQL the database's default,
  // "C" or a locale ("en_US.UTF-8"), or "icu" / "builtin" for a default of
  // those providers; "" if the database did not say.
  virtual const std::string& default_collation() const = 0;
};

// A PostgreSQL numeric's text as DDS reads it: an integer when it has no
// fraction and fits in 64 bits, else a real (NaN and infinities too).
Value NumericValue(const std::string& text);

class Backend {
 public:
  virtual ~Backend() = default;
  // `name` is the database's name in the config, for messages.
  virtual absl::StatusOr<std::unique_ptr<Connection>> Connect(const std::string& name,
                                                              const std::string& target,
                                                              bool read_only) = 0;
  // Where the database sorts NULLs by default: after every value
  // (PostgreSQL) or before (SQLite).
  virtual bool nulls_largest() const = 0;
};

std::unique_ptr<Backend> NewSqliteBackend();
std::unique_ptr<Backend> NewPostgresBackend();

// Up to `size` connections to one database, made on demand and reused.
// Thread-safe.
class ConnectionPool {
 public:
  ConnectionPool(Backend* backend, std::string name, std::string target, bool read_only, int size,
                 absl::Duration wait);
  ~ConnectionPool();

  // A connection that goes back to the pool when the lease ends.
  class Lease {
   public:
    Lease() = default;
    Lease(ConnectionPool* pool, std::unique_ptr<Connection> c) : pool_(pool), c_(std::move(c)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&& o) noexcept {
      Release();
      pool_ = o.pool_;
      c_ = std::move(o.c_);
      return *this;
    }
    ~Lease() { Release(); }
    Connection* operator->() const { return c_.get(); }
    Connection* get() const { return c_.get(); }

   private:
    void Release();
    ConnectionPool* pool_ = nullptr;
    std::unique_ptr<Connection> c_;
  };

  // RESOURCE_EXHAUSTED when none is free within the pool's wait.
  absl::StatusOr<Lease> Acquire();
  const std::string& name() const { return name_; }

 private:
  void Return(std::unique_ptr<Connection> c);
  Backend* const backend_;
  const std::string name_, target_;
  const bool read_only_;
  const int size_;
  const absl::Duration wait_;
  // std::mutex, not absl::Mutex: on every statement's path (see router.cc).
  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Connection>> idle_;  // guarded by mu_
  int open_ = 0;                                   // idle + leased + being made; guarded by mu_
  int waiting_ = 0;  // callers in Acquire waiting for one; guarded by mu_
};

}  // namespace formica::dds
