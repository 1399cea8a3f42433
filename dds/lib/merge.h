// Merging what each shard answered to one scattered SELECT into the answer
// one database holding every row would have given. The router writes the
// plan (and the statements that make it possible: hidden columns for sort
// and group keys, for AVG's SUM and COUNT, and for what the database tells
// of collations and sum types; LIMIT raised to offset+limit); Merge carries
// it out, comparing text by the collation the database compares it by and
// adding in the database's arithmetic, or refuses what it cannot merge
// exactly.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "formica/dds/value.h"

namespace formica::dds {

// A column of the shards' results: by position, by position from the end
// (hidden columns), or by name (a plain column under SELECT *).
struct ColumnRef {
  int index = -1;
  int from_end = 0;
  std::string name;
  bool set() const { return index >= 0 || from_end > 0 || !name.empty(); }
};

enum class MergeOp { kKeep, kCount, kSum, kMin, kMax, kAvg };

// How text compares. Numbers and NULLs compare alike under each.
enum class Collation {
  kBinary,  // bytewise: SQLite's BINARY, PostgreSQL's "C", "POSIX" and ucs_basic
  kNoCase,  // SQLite's NOCASE: ASCII letters folded to lower case, then bytewise
  kRTrim,   // SQLite's RTRIM: trailing spaces ignored, then bytewise
};

// Where the collation of a compared column is found; none set: bytewise
// (an expression the database compares bytewise).
struct CollationSource {
  std::string named;   // SQLite: COLLATE <name> in the statement
  ColumnRef declared;  // SQLite: the collation the table declares for this result column
  ColumnRef reported;  // PostgreSQL: a hidden column holding pg_collation_for(expression)
  std::string what;    // the expression, for messages
};

struct SortKey {
  ColumnRef column;
  bool descending = false;
  std::optional<bool> nulls_first;  // unset: the backend's default
  CollationSource collation;
};

// LIMIT or OFFSET: a constant or the value of parameter $param.
struct Bound {
  int64_t constant = 0;
  int param = 0;  // 1-based; 0: the constant
};

enum class Dialect { kSqlite, kPostgres };

struct MergePlan {
  // Whose arithmetic, collations and LIMIT rules the merge follows.
  Dialect dialect = Dialect::kSqlite;
  // Aggregates or GROUP BY: rows with equal group keys are folded with ops.
  bool aggregate = false;
  std::vector<MergeOp> ops;  // per column, hidden ones included (aggregate only)
  // For a kAvg column i: the hidden SUM and COUNT columns (from the end).
  std::vector<std::pair<int, int>> avg_parts;  // indexed like ops; {0, 0} elsewhere
  // PostgreSQL: a kSum column comes as the exact text of each shard's sum,
  // and sum_types[i] is the hidden column (from the end) holding its type
  // (pg_typeof); indexed like ops, 0 elsewhere.
  std::vector<int> sum_types;
  // kMin and kMax columns compare by these; indexed like ops.
  std::vector<CollationSource> op_collations;
  std::vector<ColumnRef> group_by;
  std::vector<CollationSource> group_collations;  // indexed like group_by
  std::vector<SortKey> order_by;
  bool distinct = false;
  // DISTINCT compares visible column i by distinct_collations[i]; empty
  // (SQLite's SELECT DISTINCT *): each by the collation its table declares.
  std::vector<CollationSource> distinct_collations;
  std::optional<Bound> limit, offset;
  int hidden = 0;  // trailing columns the caller did not ask for
};

// One shard's answer to its statement.
struct ShardAnswer {
  ResultSet result;
  // What the database tells of how each column compares (see
  // Connection::Execute).
  std::vector<std::string> collations;
};

// What the merge needs to know of the databases.
struct MergeContext {
  // How the backend orders NULLs by default (PostgreSQL: larger than any
  // value; SQLite: smaller).
  bool nulls_largest = false;
  // PostgreSQL: the default collation every database shares ("C",
  // "en_US.UTF-8"); "" when they differ. SQLite: unused.
  std::string default_collation;
};

absl::StatusOr<ResultSet> Merge(const MergePlan& plan, std::vector<ShardAnswer> parts,
                                absl::Span<const Value> params, const MergeContext& context);

// Total order used for sorting and grouping: NULL, then numbers (integers
// and reals compared by value), then text (by `collation`). NULL placement
// is the caller's.
int Compare(const Value& a, const Value& b, Collation collation = Collation::kBinary);

// The rows a LIMIT and OFFSET select, by the backend's rules: SQLite takes
// a negative LIMIT as none and a negative OFFSET as 0; PostgreSQL refuses
// both, and takes NULL as no LIMIT and OFFSET 0. INVALID_ARGUMENT for a
// value that is not an integer or a missing parameter.
struct RowWindow {
  int64_t offset = 0;
  std::optional<int64_t> count;  // unset: every row from the offset on
};
absl::StatusOr<RowWindow> RowsWanted(const MergePlan& plan, absl::Span<const Value> params);

}  // namespace formica::dds
