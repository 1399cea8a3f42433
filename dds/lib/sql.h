// SQL for DDS, read with PostgreSQL's own parser (libpg_query): a statement
// becomes pg_query's parse tree as protobuf messages, the router reads and
// rewrites it (table names, shard keys), and it is turned back into SQL.
//
//   absl::StatusOr<Statement> st = Parse("SELECT * FROM orders WHERE user_id = $1");
//   st->tree ... ;  Deparse(st->tree)
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "pg_query/pg_query.pb.h"

namespace formica::dds {

struct Statement {
  pg_query::ParseResult tree;  // one statement (Parse refuses several)
};

// INVALID_ARGUMENT with the parser's message and the 1-based character
// position, e.g. "syntax error at or near \"FORM\" (at character 10)";
// for text that is not UTF-8 or holds a NUL, naming the byte offset.
absl::StatusOr<Statement> Parse(const std::string& sql);

// The statement as SQL text (PostgreSQL's spelling of it).
absl::StatusOr<std::string> Deparse(const pg_query::ParseResult& tree);

}  // namespace formica::dds
