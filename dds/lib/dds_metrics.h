// The process's dds counters (docs/metrics.md), exported on every
// rpc::Server's metrics page through the process metrics sources: statements
// by kind and route, statements refused, and waits for a pooled connection.
// Counted without a lock but for the first wait of a database.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "router.h"

namespace formica::dds {

// A statement routed (`routing` set) or refused (`refusal`: why not).
void CountStatement(const Routing* routing, const absl::Status& refusal);
// A wait for a connection of `database`; `timed_out`: none came in time.
void CountPoolWait(const std::string& database, bool timed_out);

}  // namespace formica::dds
