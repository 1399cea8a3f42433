#include "statement_writer.h"

#include <functional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "dialect.h"
#include "parse_tree.h"
#include "sql.h"

namespace formica::dds {

using google::protobuf::Message;

absl::StatusOr<Template> StatementWriter::Render(const pg_query::ParseResult& tree) const {
  // Markers stand for what the deparser cannot write: names filled in per
  // table, and for SQLite, casts and parameters. A marker the statement
  // itself happens to hold shows as one too many; another is chosen.
  for (int nonce = 0; nonce < 8; ++nonce) {
    pg_query::ParseResult copy = tree;
    const std::string prefix = absl::StrCat("__dds", nonce, "_");
    std::vector<std::string> names, types;
    size_t markers = 0;
    pg_query::Node* root = copy.mutable_stmts(0)->mutable_stmt();
    if (root->has_index_stmt() && root->index_stmt().access_method() == "btree") {
      root->mutable_index_stmt()->clear_access_method();  // the default; SQLite has no USING
    }
    if (sqlite_ && root->has_select_stmt()) {
      // SQLite locks the whole database for a transaction's writes.
      root->mutable_select_stmt()->clear_locking_clause();
    }
    const std::function<std::string(char, size_t)> marker = [&](char kind, size_t k) {
      ++markers;
      return absl::StrCat(prefix, std::string(1, kind), k, "__");
    };
    absl::Status bad;
    // A table a column names by the table's own name (orders.user_id)
    // keeps that name as its alias once renamed.
    std::set<std::string> qualifiers;
    ForEach<pg_query::ColumnRef>(copy, [&](const pg_query::ColumnRef& c) {
      if (c.fields_size() >= 2 && c.fields(c.fields_size() - 2).has_string()) {
        qualifiers.insert(c.fields(c.fields_size() - 2).string().sval());
      }
    });
    const pg_query::RangeVar* inserted =
        root->has_insert_stmt() ? &root->insert_stmt().relation() : nullptr;
    Walk(&copy, [&](Message* m) {
      if (m->GetDescriptor() == pg_query::RangeVar::descriptor()) {
        auto* rv = static_cast<pg_query::RangeVar*>(m);
        if (sharded_tables_.count(rv->relname()) > 0) {
          if (!rv->has_alias() && rv != inserted && qualifiers.count(rv->relname()) > 0) {
            rv->mutable_alias()->set_aliasname(rv->relname());
          }
          names.push_back(rv->relname());
          rv->set_relname(marker('t', names.size() - 1));
        }
      } else if (m->GetDescriptor() == pg_query::IndexStmt::descriptor()) {
        auto* ix = static_cast<pg_query::IndexStmt*>(m);
        if (!ix->idxname().empty() && sharded_tables_.count(ix->relation().relname()) > 0) {
          names.push_back(ix->idxname());
          ix->set_idxname(marker('t', names.size() - 1));
        }
      } else if (sqlite_ && m->GetDescriptor() == pg_query::Node::descriptor()) {
        absl::Status st = RewriteForSqlite(static_cast<pg_query::Node*>(m), marker, &types);
        if (!st.ok() && bad.ok()) bad = st;
      }
    });
    if (!bad.ok()) return bad;
    absl::StatusOr<std::string> text = Deparse(copy);
    if (!text.ok()) return text.status();
    absl::StatusOr<std::optional<Template>> t = Fill(*text, prefix, markers, names, types);
    if (!t.ok()) return t.status();
    if (t->has_value()) return **std::move(t);
  }
  return absl::InternalError("cannot write the statement out: its text holds the router's markers");
}

absl::StatusOr<std::optional<Template>> StatementWriter::Fill(
    const std::string& text, const std::string& prefix, size_t expected,
    const std::vector<std::string>& names, const std::vector<std::string>& types) {
  Template t;
  t.pieces.emplace_back();
  std::vector<int> order;
  size_t found = 0, at = 0;
  while (true) {
    size_t next = text.find(prefix, at);
    t.pieces.back().append(text, at, next == std::string::npos ? std::string::npos : next - at);
    if (next == std::string::npos) break;
    size_t p = next + prefix.size();
    size_t end = text.find("__", p + 1);
    uint64_t k;
    if (p >= text.size() || end == std::string::npos ||
        !absl::SimpleAtoi(absl::string_view(text).substr(p + 1, end - p - 1), &k)) {
      return std::optional<Template>();
    }
    ++found;
    std::string& piece = t.pieces.back();
    switch (text[p]) {
      case 't':
        if (k >= names.size()) return std::optional<Template>();
        t.holes.push_back(names[k]);
        t.pieces.emplace_back();
        break;
      case 'p':
        piece += "?";
        order.push_back(static_cast<int>(k));
        break;
      case 'c':
        if (k >= types.size()) return std::optional<Template>();
        piece += "CAST";
        break;
      case 'a':
        if (k >= types.size() || !absl::EndsWith(piece, ", ")) return std::optional<Template>();
        piece.resize(piece.size() - 2);
        absl::StrAppend(&piece, " AS ", types[k]);
        break;
      default:
        return std::optional<Template>();
    }
    at = end + 2;
  }
  if (found != expected) return std::optional<Template>();
  bool as_given = true;
  for (size_t i = 0; i < order.size(); ++i)
    as_given = as_given && order[i] == static_cast<int>(i) + 1;
  if (!as_given) t.order = std::make_shared<const std::vector<int>>(std::move(order));
  return std::optional<Template>(std::move(t));
}

std::string StatementWriter::Text(const Template& t, const std::string& suffix) const {
  std::string out = t.pieces[0];
  for (size_t i = 0; i < t.holes.size(); ++i) {
    out += Spelled(t.holes[i] + suffix);
    out += t.pieces[i + 1];
  }
  return out;
}

std::string StatementWriter::Spelled(const std::string& name) const {
  bool plain = !name.empty() && !absl::ascii_isdigit(static_cast<unsigned char>(name[0]));
  bool digit = false;
  for (char c : name) {
    if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      digit = true;
    } else if (!absl::ascii_islower(static_cast<unsigned char>(c)) && c != '_') {
      plain = false;
    }
  }
  if (plain && digit) return name;  // no keyword holds a digit
  std::lock_guard<std::mutex> lock(spelled_mu_);
  auto it = spelled_.find(name);
  if (it != spelled_.end()) return it->second;
  static const std::string kFrom = "SELECT 1 FROM ";
  absl::StatusOr<Statement> st = Parse(kFrom + "x");
  st->tree.mutable_stmts(0)
      ->mutable_stmt()
      ->mutable_select_stmt()
      ->mutable_from_clause(0)
      ->mutable_range_var()
      ->set_relname(name);
  absl::StatusOr<std::string> text = Deparse(st->tree);
  std::string out = text.ok() && absl::StartsWith(*text, kFrom) ? text->substr(kFrom.size())
                                                                : absl::StrCat("\"", name, "\"");
  spelled_.emplace(name, out);
  return out;
}

}  // namespace formica::dds
