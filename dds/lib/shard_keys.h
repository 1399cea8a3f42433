// Finding the shard key in a statement: the values a WHERE clause gives the
// shard columns (col = v, col IN (...), AND, OR), read on each call with
// the call's parameters, and the check that every group of sharded tables
// a statement reads reads the one shard it runs on. Stateless; thread-safe.
#pragma once

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "analysis.h"
#include "formica/dds/value.h"
#include "parse_tree.h"
#include "pg_query/pg_query.pb.h"
#include "shard_map.h"

namespace formica::dds {

// The value of a constant or parameter (a cast to an integer or text type
// read as the cast reads it); nullopt for anything else. INVALID_ARGUMENT
// for a parameter not given.
absl::StatusOr<std::optional<Value>> ValueOf(const pg_query::Node& n,
                                             absl::Span<const Value> params);

// Whether `n` is a reference to one of the shard columns `keys`.
bool IsKeyColumn(const std::vector<Column>& keys, const pg_query::Node& n);

// n when the WHERE's conjuncts name a shard column in exactly one place,
// "key = $n"; else 0 (the tree is read for keys on each call).
int KeyParam(const std::vector<Column>& key_columns, const pg_query::Node& where);

// The shards a WHERE clause `n` confines the statement to, by the values it
// gives the shard columns `keys`; nullopt: any. Errors: a parameter not
// given, a key `map` does not place.
absl::StatusOr<std::optional<ShardSet>> ShardsOfWhere(const ShardMap& map,
                                                      const std::vector<Column>& keys,
                                                      const pg_query::Node& n,
                                                      absl::Span<const Value> params);

// For a statement whose groups are not all tied to one (see Analysis::
// single): the shard it runs on, if every group reads only that shard;
// else why it cannot run. `shards`: what the statement's own WHERE gives.
absl::StatusOr<std::optional<ShardSet>> CheckGroups(const ShardMap& map, const Analysis& a,
                                                    std::optional<ShardSet> shards,
                                                    absl::Span<const Value> params);

}  // namespace formica::dds
