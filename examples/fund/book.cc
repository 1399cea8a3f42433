#include "book.h"

#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "store.h"

namespace fund {

namespace dds = formica::dds;
namespace dts = formica::dts;

absl::StatusOr<std::unique_ptr<Book>> Book::Open(BookOptions options, formica::rpc::Client* rpc,
                                                 dds::ShardedDataSource* ds) {
  std::unique_ptr<Book> book(new Book(std::move(options), ds));
  const BookOptions& o = book->options_;
  auto created = ds->Execute(absl::StrCat("CREATE TABLE IF NOT EXISTS ", o.table,
                                          " (user_id bigint PRIMARY KEY, ", o.column,
                                          " bigint NOT NULL, frozen bigint NOT NULL DEFAULT 0, "
                                          "incoming bigint NOT NULL DEFAULT 0)"));
  if (!created.ok()) return created.status();
  auto p = dts::ShardedParticipant::Open({o.participant}, rpc, ds);
  if (!p.ok()) return p.status();
  book->participant_ = std::move(*p);
  Book* b = book.get();
  const std::string& c = o.column;
  b->participant_->Declare(
      o.take_action,
      [b](dds::Transaction* tx, const dts::ActionCall& a) {
        return b->Step(tx, a.payload, "frozen = frozen - $2");
      },
      [b, c](dds::Transaction* tx, const dts::ActionCall& a) {
        return b->Step(tx, a.payload, absl::StrCat(c, " = ", c, " + $2, frozen = frozen - $2"));
      });
  b->participant_->Declare(
      o.give_action,
      [b, c](dds::Transaction* tx, const dts::ActionCall& a) {
        return b->Step(tx, a.payload, absl::StrCat(c, " = ", c, " + $2, incoming = incoming - $2"));
      },
      [b](dds::Transaction* tx, const dts::ActionCall& a) {
        return b->Step(tx, a.payload, "incoming = incoming - $2");
      });
  return book;
}

// Confirm and cancel: the payload is "<user> <amount>", as the try wrote it.
absl::Status Book::Step(dds::Transaction* tx, const std::string& payload, const std::string& set) {
  std::vector<std::string> parts = absl::StrSplit(payload, ' ');
  int64_t user = 0;
  int64_t amount = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &user) ||
      !absl::SimpleAtoi(parts[1], &amount)) {
    return absl::InvalidArgumentError(absl::StrCat("bad action payload '", payload, "'"));
  }
  auto r = tx->Execute(absl::StrCat("UPDATE ", options_.table, " SET ", set, " WHERE user_id = $1"),
                       {user, amount});
  if (!r.ok()) return r.status();
  if (r->rows_affected != 1) {
    return absl::NotFoundError(absl::StrCat("no ", options_.table, " row for user ", user));
  }
  return absl::OkStatus();
}

absl::Status Book::Take(int64_t user, int64_t amount) {
  const std::string& c = options_.column;
  return participant_->Try(
      user, options_.take_action, absl::StrCat(user, " ", amount),
      [&](dds::Transaction* tx) -> absl::Status {
        auto r = tx->Execute(
            absl::StrCat("UPDATE ", options_.table, " SET ", c, " = ", c,
                         " - $2, frozen = frozen + $2 WHERE user_id = $1 AND ", c, " >= $2"),
            {user, amount});
        if (!r.ok()) return r.status();
        if (r->rows_affected == 1) return absl::OkStatus();
        auto have = tx->Execute(
            absl::StrCat("SELECT ", c, " FROM ", options_.table, " WHERE user_id = $1"), {user});
        if (!have.ok()) return have.status();
        if (have->rows.empty()) {
          return absl::NotFoundError(absl::StrCat("user ", user, " has no ", options_.noun));
        }
        return absl::FailedPreconditionError(absl::StrCat("insufficient ", options_.noun, ": user ",
                                                          user, " has ", AsInt(have->rows[0][0]),
                                                          " available, needs ", amount));
      });
}

absl::Status Book::Give(int64_t user, int64_t amount) {
  return participant_->Try(
      user, options_.give_action, absl::StrCat(user, " ", amount),
      [&](dds::Transaction* tx) -> absl::Status {
        auto r = tx->Execute(absl::StrCat("UPDATE ", options_.table,
                                          " SET incoming = incoming + $2 WHERE user_id = $1"),
                             {user, amount});
        if (!r.ok()) return r.status();
        if (r->rows_affected == 1) return absl::OkStatus();
        return absl::NotFoundError(absl::StrCat("user ", user, " has no ", options_.noun));
      });
}

absl::StatusOr<int64_t> Book::Populate(int64_t users, int64_t initial,
                                       const std::function<bool(int shard)>& owns) {
  // Users by shard (the last two digits), then one transaction per shard.
  int64_t added = 0;
  constexpr int kRowsPerStatement = 400;
  for (int shard = 0; shard < 100; ++shard) {
    int64_t first = shard == 0 ? 100 : shard;
    if (first > users || (owns && !owns(shard))) continue;
    auto tx = ds_->Begin(first);
    if (!tx.ok()) return tx.status();
    std::vector<dds::Value> params;
    std::string sql;
    auto flush = [&]() -> absl::Status {
      if (params.empty()) return absl::OkStatus();
      auto r = (*tx)->Execute(
          absl::StrCat("INSERT INTO ", options_.table, " (user_id, ", options_.column,
                       ", frozen, incoming) VALUES ", sql, " ON CONFLICT DO NOTHING"),
          params);
      if (!r.ok()) return r.status();
      added += r->rows_affected;
      params.clear();
      sql.clear();
      return absl::OkStatus();
    };
    for (int64_t u = first; u <= users; u += 100) {
      if (!params.empty()) sql += ", ";
      absl::StrAppend(&sql, "($", params.size() + 1, ", $", params.size() + 2, ", 0, 0)");
      params.emplace_back(std::in_place_type<int64_t>, u);
      params.emplace_back(std::in_place_type<int64_t>, initial);
      if (params.size() >= 2 * kRowsPerStatement) {
        if (absl::Status st = flush(); !st.ok()) return st;
      }
    }
    if (absl::Status st = flush(); !st.ok()) return st;
    if (absl::Status st = (*tx)->Commit(); !st.ok()) return st;
  }
  return added;
}

absl::StatusOr<BookTotals> Book::Totals() {
  auto r = ds_->Execute(absl::StrCat("SELECT count(*), sum(", options_.column,
                                     "), sum(frozen), sum(incoming) FROM ", options_.table),
                        {}, {.primary = true});
  if (!r.ok()) return r.status();
  BookTotals t;
  if (!r->rows.empty()) {
    t.rows = AsInt(r->rows[0][0]);
    t.available = AsInt(r->rows[0][1]);
    t.frozen = AsInt(r->rows[0][2]);
    t.incoming = AsInt(r->rows[0][3]);
  }
  return t;
}

absl::StatusOr<BookTotals> Book::Of(int64_t user) {
  auto r = ds_->Execute(absl::StrCat("SELECT ", options_.column, ", frozen, incoming FROM ",
                                     options_.table, " WHERE user_id = $1"),
                        {user}, {.primary = true});
  if (!r.ok()) return r.status();
  if (r->rows.empty()) return absl::NotFoundError(absl::StrCat("no row for user ", user));
  BookTotals t;
  t.rows = 1;
  t.available = AsInt(r->rows[0][0]);
  t.frozen = AsInt(r->rows[0][1]);
  t.incoming = AsInt(r->rows[0][2]);
  return t;
}

}  // namespace fund
