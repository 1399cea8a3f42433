// A private PostgreSQL server for tests and benchmarks: the distribution's
// binaries (package postgresql), a fresh data directory, a loopback port,
// trust authentication for the user "formica". Stopped and removed on
// destruction; killed with the test if the test dies.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "process.h"

namespace formica::testing {

class PostgresServer {
 public:
  // FAILED_PRECONDITION naming the package when PostgreSQL is not installed.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  ~PostgresServer();

  int port() const { return port_; }
  // A libpq connection string for database `name`.
  std::string Dsn(const std::string& name) const;
  // CREATE DATABASE name.
  absl::Status CreateDatabase(const std::string& name);

 private:
  PostgresServer() = default;
  TempDir dir_;
  int port_ = 0;
  std::unique_ptr<Subprocess> server_;
};

}  // namespace formica::testing
