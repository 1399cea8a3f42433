#include "sql.h"

#include <pg_query.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace formica::dds {

namespace {

// The offset of the first byte of `sql` that is a NUL or not part of valid
// UTF-8 (overlong forms, surrogates and code points past U+10FFFF are
// not), or npos.
size_t FirstBadByte(const std::string& sql) {
  size_t i = 0;
  const size_t n = sql.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(sql[i]);
    if (c < 0x80) {
      if (c == 0) return i;
      ++i;
      continue;
    }
    size_t len;
    uint32_t code, least;
    if ((c & 0xE0) == 0xC0) {
      len = 2, code = c & 0x1F, least = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, code = c & 0x0F, least = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, code = c & 0x07, least = 0x10000;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      unsigned char d = static_cast<unsigned char>(sql[i + k]);
      if ((d & 0xC0) != 0x80) return i;
      code = code << 6 | (d & 0x3F);
    }
    if (code < least || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}

}  // namespace

absl::StatusOr<Statement> Parse(const std::string& sql) {
  // The parser reads a C string, and its tree holds UTF-8 text only: a NUL
  // would cut the statement short, other bad bytes would make a tree that
  // cannot be read.
  if (size_t bad = FirstBadByte(sql); bad != std::string::npos) {
    if (sql[bad] == '\0') {
      return absl::InvalidArgumentError(
          absl::StrCat("the SQL text holds a NUL byte at byte offset ", bad, " (from 0)"));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "the SQL text is not valid UTF-8 at byte offset %d (from 0): byte 0x%02x; send SQL "
        "in UTF-8",
        bad, static_cast<unsigned char>(sql[bad])));
  }
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
