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
std::vector<std::string> FundSchema();

struct DifferentialStats {
  int statements = 0;
  int scatters = 0;  // reads that ran on more than one shard
  int rows_compared = 0;
};

// Runs `steps` random statements (seeded) on both; stops at the first
// difference and returns it as an error naming the statement.
absl::StatusOr<DifferentialStats> RunDifferential(Connection* plain, ShardedDataSource* sharded,
                                                  int steps, uint32_t seed);

// Equal results: same columns, same rows (in order when `ordered`), numbers
// equal to 1e-9 relative, integers and reals compared by value.
absl::Status SameResult(const ResultSet& want, const ResultSet& got, bool ordered);

}  // namespace formica::dds::testing
