// Writing a statement out for the backends: the parse tree (rewritten by
// the router) is deparsed once into a Template with a hole wherever a
// sharded table's (or index's) name goes, and the text for each physical
// table is the template with that table's names filled in. For SQLite,
// casts and parameters are written as SQLite reads them (see dialect.h).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "pg_query/pg_query.pb.h"

namespace formica::dds {

// A statement written out for a backend, with a hole wherever a sharded
// table's (or index's) name goes: pieces[0] holes[0] pieces[1] ... The
// holes hold the logical names; a physical table's text fills them.
struct Template {
  std::vector<std::string> pieces;  // one more than holes
  std::vector<std::string> holes;
  std::shared_ptr<const std::vector<int>> order;  // see RoutedStatement::order
};

// Thread-safe.
class StatementWriter {
 public:
  // `sharded_tables` (table -> shard column) is borrowed and must outlive
  // the writer; `sqlite`: statements are written for SQLite.
  StatementWriter(const std::map<std::string, std::string>* sharded_tables, bool sqlite)
      : sharded_tables_(*sharded_tables), sqlite_(sqlite) {}

  // The text of `tree` for the backend, with a hole for each sharded table's
  // (and index's) name. Written out once however many tables it runs on.
  absl::StatusOr<Template> Render(const pg_query::ParseResult& tree) const;

  // The text of a rendered statement for the tables whose names end in
  // `suffix` (a shard's).
  std::string Text(const Template& t, const std::string& suffix) const;

 private:
  // The deparsed text cut at its markers; nullopt if it holds other
  // markers than the `expected` ones made for it.
  static absl::StatusOr<std::optional<Template>> Fill(const std::string& text,
                                                      const std::string& prefix, size_t expected,
                                                      const std::vector<std::string>& names,
                                                      const std::vector<std::string>& types);

  // `name` as the deparser writes an identifier: as it is, or quoted.
  std::string Spelled(const std::string& name) const;

  const std::map<std::string, std::string>& sharded_tables_;
  const bool sqlite_;
  // Identifiers that the deparser quotes or might (see Spelled).
  mutable std::mutex spelled_mu_;
  mutable absl::flat_hash_map<std::string, std::string> spelled_;  // guarded by spelled_mu_
};

}  // namespace formica::dds
