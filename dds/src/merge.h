// Merging what each shard answered to one scattered SELECT into the answer
// one database holding every row would have given. The router writes the
// plan (and the statements that make it possible: hidden columns for sort
// and group keys and for AVG's SUM and COUNT, LIMIT raised to
// offset+limit); Merge carries it out.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formica/dds/data_source.h"

namespace formica::dds {

// A column of the shards' results: by position, by position from the end
// (hidden columns), or by name (a plain column under SELECT *).
struct ColumnRef {
  int index = -1;
  int from_end = 0;
  std::string name;
};

enum class MergeOp { kKeep, kCount, kSum, kMin, kMax, kAvg };

struct SortKey {
  ColumnRef column;
  bool descending = false;
  std::optional<bool> nulls_first;  // unset: the backend's default
};

// LIMIT or OFFSET: a constant or the value of parameter $param.
struct Bound {
  int64_t constant = 0;
  int param = 0;  // 1-based; 0: the constant
};

struct MergePlan {
  // Aggregates or GROUP BY: rows with equal group keys are folded with ops.
  bool aggregate = false;
  std::vector<MergeOp> ops;  // per column, hidden ones included (aggregate only)
  // For a kAvg column i: the hidden SUM and COUNT columns (from the end).
  std::vector<std::pair<int, int>> avg_parts;  // indexed like ops; {0, 0} elsewhere
  std::vector<ColumnRef> group_by;
  std::vector<SortKey> order_by;
  bool distinct = false;
  std::optional<Bound> limit, offset;
  int hidden = 0;  // trailing columns the caller did not ask for
};

// `nulls_largest`: how the backend orders NULLs by default (PostgreSQL:
// larger than any value; SQLite: smaller).
absl::StatusOr<ResultSet> Merge(const MergePlan& plan, std::vector<ResultSet> parts,
                                const std::vector<Value>& params, bool nulls_largest);

// Total order used for sorting and grouping: NULL, then numbers (integers
// and reals compared by value), then text (bytewise). NULL placement is
// the caller's.
int Compare(const Value& a, const Value& b);

// The integer a LIMIT or OFFSET resolves to; INVALID_ARGUMENT if negative
// or not an integer.
absl::StatusOr<int64_t> Resolve(const Bound& b, const std::vector<Value>& params);

}  // namespace formica::dds
