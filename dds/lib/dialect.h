// What SQLite reads differently from the PostgreSQL the parser and the
// deparser speak: the router checks a statement's casts once, when it
// analyses it, and rewrites casts and parameters whenever it writes a
// statement out for SQLite. Stateless; thread-safe.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pg_query/pg_query.pb.h"

namespace formica::dds {

// A cast's type as SQLite is to read it in CAST(x AS type). SQLite takes
// any name and gives it an affinity by the words in it (INT: integer;
// CHAR, CLOB, TEXT: text; BLOB: none; REAL, FLOA, DOUB: real; else
// numeric); PostgreSQL's parser renamed the standard types (INTEGER is
// pg_catalog.int4), which are written back as the words a user writes,
// so the affinity is the one the statement's own words give on SQLite.
// Length and precision are dropped: SQLite ignores them.
// INVALID_ARGUMENT for an array or set type, or a name SQLite cannot take.
absl::StatusOr<std::string> SqliteTypeName(const pg_query::TypeName& t);

// The first cast in `tree` (parsed from `sql`) SQLite cannot run:
// INVALID_ARGUMENT for a type it cannot cast to (see SqliteTypeName) or a
// typed literal (DATE '2026-01-01'); OK when there is none.
absl::Status CheckSqliteCasts(const pg_query::ParseResult& tree, const std::string& sql);

// Rewrites node `n` of a tree about to be deparsed for SQLite: a parameter
// $n becomes the marker marker('p', n), which is to be written ?n; a cast
// x::T becomes a call marker('c', k)(x, marker('a', k)), to be written
// CAST(x AS T) where T is (*types)[k], appended. Other nodes are left alone.
// INVALID_ARGUMENT for a cast SQLite cannot read (the node is then left as is).
absl::Status RewriteForSqlite(pg_query::Node* n,
                              const std::function<std::string(char, size_t)>& marker,
                              std::vector<std::string>* types);

}  // namespace formica::dds
