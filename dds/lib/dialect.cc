#include "dialect.h"

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "parse_tree.h"

namespace formica::dds {

absl::StatusOr<std::string> SqliteTypeName(const pg_query::TypeName& t) {
  std::string name = TypeNameOf(t);
  if (t.array_bounds_size() > 0 || t.setof() || t.pct_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SQLite has no array or set types: cannot cast to ", name, "[]"));
  }
  bool catalog =
      t.names_size() == 2 && t.names(0).has_string() && t.names(0).string().sval() == "pg_catalog";
  if (catalog) {
    static const std::map<std::string, std::string> kWords = {
        {"int2", "SMALLINT"},       {"int4", "INTEGER"},      {"int8", "BIGINT"},
        {"float4", "REAL"},         {"float8", "REAL"},       {"numeric", "NUMERIC"},
        {"bool", "BOOLEAN"},        {"bpchar", "CHAR"},       {"varchar", "VARCHAR"},
        {"timestamp", "TIMESTAMP"}, {"time", "TIME"},         {"timestamptz", "TIMESTAMPTZ"},
        {"timetz", "TIMETZ"},       {"interval", "INTERVAL"}, {"bit", "BIT"},
        {"varbit", "VARBIT"}};
    auto it = kWords.find(name);
    if (it != kWords.end()) return it->second;
  } else if (t.names_size() == 1 && !name.empty() &&
             std::all_of(name.begin(), name.end(), [](char c) {
               return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
             })) {
    return absl::AsciiStrToUpper(name);
  }
  return absl::InvalidArgumentError(absl::StrCat("SQLite cannot cast to type ", name,
                                                 "; cast to INTEGER, REAL, TEXT, BLOB or NUMERIC"));
}

absl::Status CheckSqliteCasts(const pg_query::ParseResult& tree, const std::string& sql) {
  absl::Status cast;
  ForEach<pg_query::TypeCast>(tree, [&](const pg_query::TypeCast& c) {
    if (!cast.ok()) return;
    absl::StatusOr<std::string> type = SqliteTypeName(c.type_name());
    if (!type.ok()) {
      cast = type.status();
      return;
    }
    // CAST(x AS T) and x::T (located at CAST and at ::) are written as
    // CAST for SQLite; a typed literal (DATE '2026-01-01', located
    // nowhere) SQLite does not have.
    int at = c.location();
    absl::string_view from = at >= 0 && at < static_cast<int>(sql.size())
                                 ? absl::string_view(sql).substr(at)
                                 : absl::string_view();
    if (!absl::StartsWith(from, "::") && !absl::StartsWithIgnoreCase(from, "cast")) {
      cast = absl::InvalidArgumentError(absl::StrCat("SQLite has no typed literals (",
                                                     TypeNameOf(c.type_name()),
                                                     " '...'); write CAST('...' AS ", *type, ")"));
    }
  });
  return cast;
}

absl::Status RewriteForSqlite(pg_query::Node* n,
                              const std::function<std::string(char, size_t)>& marker,
                              std::vector<std::string>* types) {
  if (n->has_param_ref()) {
    // SQLite reads $n as a name, looked up among all the others (a
    // statement of many parameters took quadratic time); ?n is
    // parameter n.
    int k = n->param_ref().number();
    n->mutable_column_ref()->add_fields()->mutable_string()->set_sval(marker('p', k));
  } else if (n->has_type_cast()) {
    // x::T, which SQLite does not read, as CAST(x AS T): a call
    // whose name and last argument are markers.
    absl::StatusOr<std::string> type = SqliteTypeName(n->type_cast().type_name());
    if (!type.ok()) return type.status();
    types->push_back(*std::move(type));
    pg_query::Node arg = n->type_cast().arg();
    pg_query::FuncCall* call = n->mutable_func_call();
    call->add_funcname()->mutable_string()->set_sval(marker('c', types->size() - 1));
    *call->add_args() = std::move(arg);
    call->add_args()->mutable_column_ref()->add_fields()->mutable_string()->set_sval(
        marker('a', types->size() - 1));
    call->set_funcformat(pg_query::COERCE_EXPLICIT_CALL);
  }
  return absl::OkStatus();
}

}  // namespace formica::dds
