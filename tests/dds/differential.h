// The differential workload: the same random statements on one plain
// database holding the logical tables and on a ShardedDataSource; every
// answer must match. Shared by the SQLite and PostgreSQL tests.
#pragma once

#include <string>
#include <vector>

#include "backend.h"
#include "formica/dds/data_source.h"

namespace formica::dds::testing {

// The fund's schema, as run through DDS (and on the plain database as is).
// orders.tag is declared with a collation of the backend's: NOCASE on
// SQLite, "POSIX" on PostgreSQL.
std::vector<std::string> FundSchema(DatabaseKind kind = DatabaseKind::kSqlite);

struct DifferentialStats {
  int statements = 0;
  int scatters = 0;  // reads that ran on more than one shard
  int rows_compared = 0;
  int refused = 0;  // statements both refused alike
};

// Runs `steps` random statements (seeded) on both; stops at the first
// difference and returns it as an error naming the statement. A statement
// the plain database refuses must be refused alike: same code, and the
// plain database's message (without its database name) in the sharded one.
absl::StatusOr<DifferentialStats> RunDifferential(Connection* plain, ShardedDataSource* sharded,
                                                  int steps, uint32_t seed,
                                                  DatabaseKind kind = DatabaseKind::kSqlite);

// Equal results: same columns, same rows (in order when `ordered`), numbers
// equal to 1e-9 relative, integers and reals compared by value. `fold_case`:
// text equal ignoring ASCII case (where the database may answer any of the
// values its NOCASE collation holds equal). `exact`: every value of the
// same kind (integer, real, text) and equal.
absl::Status SameResult(const ResultSet& want, const ResultSet& got, bool ordered,
                        bool fold_case = false, bool exact = false);

}  // namespace formica::dds::testing
