#include "sql.h"

#include <pg_query.h>

#include "absl/strings/str_cat.h"

namespace formica::dds {

absl::StatusOr<Statement> Parse(const std::string& sql) {
  PgQueryProtobufParseResult r = pg_query_parse_protobuf(sql.c_str());
  absl::Status st;
  Statement out;
  if (r.error != nullptr) {
    st = absl::InvalidArgumentError(
        r.error->cursorpos > 0
            ? absl::StrCat(r.error->message, " (at character ", r.error->cursorpos, ")")
            : std::string(r.error->message));
  } else if (!out.tree.ParseFromArray(r.parse_tree.data, static_cast<int>(r.parse_tree.len))) {
    st = absl::InternalError("cannot read the parse tree of the SQL parser");
  } else if (out.tree.stmts_size() != 1) {
    st = absl::InvalidArgumentError(
        absl::StrCat("expected one SQL statement, got ", out.tree.stmts_size()));
  }
  pg_query_free_protobuf_parse_result(r);
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<std::string> Deparse(const pg_query::ParseResult& tree) {
  std::string bytes;
  if (!tree.SerializeToString(&bytes)) return absl::InternalError("cannot encode a parse tree");
  PgQueryProtobuf pb;
  pb.len = bytes.size();
  pb.data = bytes.data();
  PgQueryDeparseResult r = pg_query_deparse_protobuf(pb);
  absl::StatusOr<std::string> out;
  if (r.error != nullptr) {
    out = absl::InvalidArgumentError(
        absl::StrCat("cannot write the statement back as SQL: ", r.error->message));
  } else {
    out = std::string(r.query);
  }
  pg_query_free_deparse_result(r);
  return out;
}

}  // namespace formica::dds
