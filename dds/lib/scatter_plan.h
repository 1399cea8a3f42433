// Planning a read that runs on several shards' tables: whether its shards'
// answers can be merged into the one answer a single database would give,
// the MergePlan that does it, and the statement each shard runs (hidden
// columns added for sort and group keys, AVG's parts, collations and sum
// types; LIMIT raised to offset+limit). Stateless; thread-safe.
#pragma once

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "analysis.h"
#include "formica/dds/value.h"
#include "merge.h"
#include "pg_query/pg_query.pb.h"
#include "router.h"

namespace formica::dds {

// Plans the scatter of the SELECT in a->tree: sets a->merge, a->scatter_tree
// and a->limit_per_call, or returns INVALID_ARGUMENT naming why the read
// cannot run over several shards (it then needs the shard key).
absl::Status PlanScatter(const RouterConfig& config, Analysis* a);

// Each shard returns up to offset+limit rows, from its first (all of
// them when that passes what a LIMIT constant holds, or with no LIMIT).
// INVALID_ARGUMENT for a LIMIT or OFFSET parameter that is not an integer.
absl::Status SetShardLimit(pg_query::SelectStmt* s, const MergePlan& plan,
                           absl::Span<const Value> params);

}  // namespace formica::dds
