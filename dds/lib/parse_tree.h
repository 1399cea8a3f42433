// Reading and building pieces of pg_query's parse tree, for the router:
// walking a tree, column references, operators, aggregates, type names and
// the few nodes the router writes itself (constants, calls, casts).
// Stateless; every function is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "merge.h"
#include "pg_query/pg_query.pb.h"

namespace formica::dds {

// Calls `visit` on every message in `m`'s tree, parents first.
void Walk(google::protobuf::Message* m,
          const std::function<void(google::protobuf::Message*)>& visit);

// Calls `visit` on every message of type T in `m`'s tree, parents first.
template <typename T>
void ForEach(const google::protobuf::Message& m, const std::function<void(const T&)>& visit) {
  Walk(const_cast<google::protobuf::Message*>(&m), [&](google::protobuf::Message* x) {
    if (x->GetDescriptor() == T::descriptor()) visit(*static_cast<const T*>(x));
  });
}

// An expression with its source positions cleared, for comparing two.
std::string Fingerprint(const pg_query::Node& n);

// A column reference: its qualifier (may be empty) and its name.
struct Column {
  std::string qualifier;
  std::string name;
};

std::optional<Column> ColumnOf(const pg_query::Node& n);

bool IsOperator(const pg_query::A_Expr& e, const char* op);

// The conjuncts of a condition (a AND b AND c -> a, b, c).
void Conjuncts(const pg_query::Node& n, std::vector<const pg_query::Node*>* out);

// The merge of count, sum, min, max or avg called at the top of `n`.
std::optional<MergeOp> AggregateOf(const pg_query::Node& n);

// A call of count, sum, min, max or avg (any arguments).
bool IsAggregateName(const pg_query::FuncCall& f);

// Aggregates whose per-shard results cannot be combined (or that the
// merge does not know): refused over several shards.
bool IsUnmergeableAggregate(const pg_query::FuncCall& f);

// The last part of a type's name, lower case ("int4" for pg_catalog.int4).
std::string TypeNameOf(const pg_query::TypeName& t);

bool IsIntegerType(const std::string& name);
bool IsTextType(const std::string& name);

// An integer constant.
pg_query::Node IntConst(int64_t v);

// The expression under CASTs and unary pluses, which SQLite looks through
// for a column's collation.
const pg_query::Node& Peeled(const pg_query::Node& n);

// The collation a COLLATE names, "" for none.
std::string CollationName(const pg_query::CollateClause& c);

bool IsPlainColumn(const pg_query::Node& n);

// function(arg), as the parser would have read it.
pg_query::Node Call(const char* function, const pg_query::Node& arg);

// arg::text.
pg_query::Node AsText(const pg_query::Node& arg);

}  // namespace formica::dds
