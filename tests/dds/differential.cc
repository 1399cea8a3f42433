#include "differential.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "merge.h"

namespace formica::dds::testing {
namespace {

bool SameValue(const Value& a, const Value& b, bool fold_case, bool exact) {
  if (exact) return a == b;
  bool an = a.index() == 0, bn = b.index() == 0;
  if (an || bn) return an && bn;
  bool as = a.index() == 3, bs = b.index() == 3;
  if (as || bs) {
    if (!as || !bs) return false;
    const std::string& x = std::get<std::string>(a);
    const std::string& y = std::get<std::string>(b);
    return fold_case ? absl::AsciiStrToLower(x) == absl::AsciiStrToLower(y) : x == y;
  }
  double x = a.index() == 1 ? static_cast<double>(std::get<int64_t>(a)) : std::get<double>(a);
  double y = b.index() == 1 ? static_cast<double>(std::get<int64_t>(b)) : std::get<double>(b);
  return std::fabs(x - y) <= 1e-9 * std::max(1.0, std::fabs(x));
}

std::string RowText(const std::vector<Value>& row) {
  std::vector<std::string> parts;
  for (const Value& v : row) parts.push_back(ToString(v));
  return absl::StrCat("(", absl::StrJoin(parts, ", "), ")");
}

struct Step {
  std::string sql;
  std::vector<Value> params;
  bool ordered = false;
  bool write = false;
  bool fold_case = false;  // see SameResult
  bool exact = false;
};

// A refusal's words without the database that said them ("database db1: ",
// PostgreSQL's "ERROR:  ").
std::string Refusal(const absl::Status& st) {
  absl::string_view m = st.message();
  if (absl::ConsumePrefix(&m, "database ")) {
    size_t colon = m.find(": ");
    if (colon != absl::string_view::npos) m.remove_prefix(colon + 2);
  }
  absl::ConsumePrefix(&m, "ERROR:  ");
  return std::string(m);
}

class Workload {
 public:
  // Ids of different seeds never meet, so seeds can run one after another.
  Workload(uint32_t seed, DatabaseKind kind)
      : rng_(seed),
        sqlite_(kind == DatabaseKind::kSqlite),
        base_(int64_t{seed} * 1000000),
        next_order_(int64_t{seed} * 1000000) {}

  Step Next() {
    int pick = Uniform(0, 99);
    if (pick >= 85 && users_.size() >= 12) return Merged();
    if (users_.size() < 12 || pick < 10) return NewAccount();
    if (++steps_ % 250 == 0) return HugeInList();
    if (pick < 28) return NewOrders();
    if (pick < 34) return {"SELECT * FROM accounts WHERE user_id = $1", {User()}, true};
    if (pick < 40) {
      return {"SELECT id, fund, amount, status FROM orders WHERE user_id = $1 ORDER BY id",
              {User()},
              true};
    }
    if (pick < 46) {
      return {"UPDATE accounts SET balance = balance + $2 WHERE user_id = $1",
              {User(), int64_t{Uniform(-500, 500)}},
              false,
              true};
    }
    if (pick < 51) return orders_.empty() ? NewOrders() : OrderWrite();
    if (pick < 55) {
      return {"SELECT count(*), sum(amount) FROM orders WHERE user_id IN ($1, $2, $3)",
              {User(), User(), User()},
              true};
    }
    switch (pick % 19) {
      case 0:
        return {
            "SELECT id, user_id, amount FROM orders ORDER BY amount DESC, id LIMIT $1 OFFSET $2",
            {int64_t{Uniform(1, 12)}, int64_t{Uniform(0, 8)}},
            true};
      case 1:
        return {
            "SELECT count(*), sum(amount), min(amount), max(amount), avg(amount) FROM orders "
            "WHERE status = $1",
            {Status()},
            true};
      case 2:
        return {
            "SELECT fund, count(*), sum(amount), avg(amount) FROM orders GROUP BY fund "
            "ORDER BY fund",
            {},
            true};
      case 3:
        return {
            "SELECT status, sum(amount) FROM orders GROUP BY status ORDER BY sum(amount) DESC, "
            "status LIMIT 2",
            {},
            true};
      case 4:
        return {"SELECT sum(amount) FROM orders GROUP BY fund ORDER BY fund", {}, true};
      case 5:
        return {
            "SELECT o.id, f.name FROM orders o JOIN funds f ON f.code = o.fund "
            "WHERE o.amount > $1 ORDER BY o.id LIMIT 20",
            {int64_t{Uniform(0, 900)}},
            true};
      case 6:
        return {
            "SELECT a.name, sum(o.amount), count(*) FROM accounts a JOIN orders o "
            "ON o.user_id = a.user_id GROUP BY a.name ORDER BY a.name",
            {},
            true};
      case 7:
        return {"SELECT DISTINCT fund FROM orders ORDER BY fund", {}, true};
      case 8:
        return {"SELECT * FROM orders ORDER BY created DESC, id LIMIT 5", {}, true};
      case 9:
        return {"SELECT id, status FROM orders ORDER BY status, id LIMIT 10", {}, true};
      case 10:
        return {"SELECT user_id, name FROM accounts WHERE balance > $1",
                {int64_t{Uniform(0, 2000)}},
                false};
      case 11:
        return {"SELECT code, name, rate FROM funds ORDER BY code", {}, true};
      case 12:
        return {"UPDATE funds SET rate = $1 WHERE code = $2",
                {Uniform(1, 400) / 100.0, Fund()},
                false,
                true};
      case 13:
        return {"SELECT max(balance), min(name), count(*) FROM accounts", {}, true};
      case 14:  // a cast key, given as text, and casts in the select list
        return {
            "SELECT id, CAST(amount AS TEXT) AS a, CAST(amount AS REAL) / 4 AS q FROM orders "
            "WHERE user_id = CAST($1 AS BIGINT) ORDER BY id",
            {ToString(User())},
            true};
      case 15:
        return {
            "SELECT id, CAST(amount AS REAL) / 8 AS e, CAST(created AS TEXT) AS c FROM orders "
            "WHERE user_id IN ($1, $2) ORDER BY id",
            {User(), User()},
            true};
      case 16:  // a subquery on the same user by the same parameter
        return {
            "SELECT o.id, o.amount FROM orders o WHERE o.user_id = $1 AND o.amount > "
            "(SELECT avg(p.amount) FROM orders p WHERE p.user_id = $1) ORDER BY o.id",
            {User()},
            true};
      case 17:  // correlated, on every shard
        return {
            "SELECT o.id, o.user_id FROM orders o WHERE o.amount >= (SELECT max(p.amount) FROM "
            "orders p WHERE p.user_id = o.user_id) ORDER BY o.id LIMIT 30",
            {},
            true};
      default:  // correlated, in the select list, on one shard
        return {
            "SELECT a.user_id, a.balance, (SELECT count(*) FROM orders p WHERE p.user_id = "
            "a.user_id) AS n, (SELECT sum(q.amount) FROM orders q WHERE q.user_id = $1) AS s FROM "
            "accounts a "
            "WHERE a.user_id = $1",
            {User()},
            true};
    }
  }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  Value User() { return users_[Uniform(0, static_cast<int>(users_.size()) - 1)]; }
  Value Fund() { return std::string(1, static_cast<char>('A' + Uniform(0, 3))); }
  Value Status() {
    static const char* kStatus[] = {"paid", "pending", "refunded"};
    return std::string(kStatus[Uniform(0, 2)]);
  }
  // Mixed case, and trailing spaces, which RTRIM ignores.
  Value Note() {
    static const char* kNotes[] = {"apple",  "Apple", "APPLE ", "banana", "Banana  ", "cherry",
                                   "_first", "zebra", "Zebra",  "apple ", "Öl",       "öl"};
    return std::string(kNotes[Uniform(0, 11)]);
  }
  // Five words in several cases: five values by NOCASE.
  Value Tag() {
    static const char* kTags[] = {"red",  "Red",  "RED",  "green", "Green", "blue",
                                  "BLUE", "gray", "Gray", "white", "WHITE"};
    return std::string(kTags[Uniform(0, 10)]);
  }

  // Shapes whose merge depends on the backend's collations, arithmetic
  // and LIMIT rules.
  Step Merged() {
    const std::string nocase = sqlite_ ? "NOCASE" : "\"C\"";
    const std::string rtrim = sqlite_ ? "RTRIM" : "\"POSIX\"";
    // Products fit in 64 bits (a product past them is a real in SQLite, and a
    // sum of integers and reals overflows or not by the order rows come in).
    const Value multiplier = std::vector<Value>{int64_t{1}, int64_t{3000000000000},
                                                int64_t{9000000000000000}}[Uniform(0, 2)];
    const bool fold = sqlite_;  // NOCASE answers any of the values it holds equal
    switch (Uniform(0, 11)) {
      case 0:
        return {absl::StrCat("SELECT id, note FROM orders ORDER BY note COLLATE ", nocase,
                             ", id LIMIT 20 OFFSET $1"),
                {int64_t{Uniform(0, 60)}},
                true};
      case 1:
        return {"SELECT id, tag FROM orders ORDER BY tag, id LIMIT $1",
                {int64_t{Uniform(1, 40)}},
                true};
      case 2: {
        Step s{"SELECT DISTINCT tag FROM orders", {}, false};
        s.fold_case = fold;
        return s;
      }
      case 3: {
        Step s{"SELECT tag, count(*), sum(amount) FROM orders GROUP BY tag", {}, false};
        s.fold_case = fold;
        return s;
      }
      case 4: {
        Step s{"SELECT min(tag), max(tag), min(note), max(note) FROM orders", {}, true};
        s.fold_case = fold;
        return s;
      }
      case 5:
        return {absl::StrCat("SELECT id, note FROM orders ORDER BY note COLLATE ", rtrim,
                             " DESC, id LIMIT 15"),
                {},
                true};
      case 6: {
        Step s{"SELECT sum(amount * $1) AS total, count(*) AS n FROM orders", {multiplier}, true};
        s.exact = true;
        return s;
      }
      case 7: {
        Step s{"SELECT fund, sum(amount * $1) AS total FROM orders GROUP BY fund ORDER BY fund",
               {multiplier},
               true};
        s.exact = true;
        return s;
      }
      case 8: {
        const Value limits[] = {std::numeric_limits<int64_t>::max(),
                                std::numeric_limits<int64_t>::max() - 2,
                                int64_t{-1},
                                int64_t{3},
                                Value(),
                                std::string("7")};
        return {"SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2",
                {limits[Uniform(0, 5)], int64_t{Uniform(-1, 10)}},
                true};
      }
      case 9: {
        Step s{
            absl::StrCat("SELECT DISTINCT note COLLATE ", nocase, " AS n FROM orders"), {}, false};
        s.fold_case = fold;
        return s;
      }
      case 10:
        return {"SELECT id, tag, note FROM orders ORDER BY tag DESC, note, id LIMIT 25", {}, true};
      default: {
        Step s{"SELECT status, tag, count(*) FROM orders GROUP BY status, tag ORDER BY status, tag",
               {},
               true};
        s.fold_case = fold;
        return s;
      }
    }
  }

  Step NewAccount() {
    int64_t id = (base_ + Uniform(1000, 99999)) * 100 + Uniform(0, 99);
    while (std::find(users_.begin(), users_.end(), Value(id)) != users_.end()) ++id;
    users_.push_back(id);
    return {"INSERT INTO accounts (user_id, name, balance) VALUES ($1, $2, $3)",
            {id, absl::StrCat("user", Uniform(0, 30)), int64_t{Uniform(0, 3000)}},
            false,
            true};
  }

  Step NewOrders() {
    int rows = Uniform(1, 4);
    Step s;
    s.write = true;
    std::vector<std::string> values;
    for (int r = 0; r < rows; ++r) {
      int64_t id = next_order_++;
      orders_.push_back(id);
      int b = static_cast<int>(s.params.size());
      values.push_back(absl::StrCat("($", b + 1, ", $", b + 2, ", $", b + 3, ", $", b + 4, ", $",
                                    b + 5, ", $", b + 6, ", $", b + 7, ", $", b + 8, ")"));
      Value user = User();
      order_user_[id] = user;
      s.params.push_back(id);
      s.params.push_back(user);
      s.params.push_back(Fund());
      s.params.push_back(int64_t{Uniform(1, 1000)});
      s.params.push_back(Uniform(0, 4) == 0 ? Value() : Status());
      s.params.push_back(int64_t{Uniform(0, 50)});
      s.params.push_back(Note());
      s.params.push_back(Tag());
    }
    s.sql = absl::StrCat(
        "INSERT INTO orders (id, user_id, fund, amount, status, created, note, tag) VALUES ",
        absl::StrJoin(values, ", "));
    return s;
  }

  // A key IN list of thousands of parameters (known users and ids that hold
  // no rows), read and written.
  Step HugeInList() {
    const int n = Uniform(2000, 6000);
    Step s;
    std::vector<std::string> list;
    for (int i = 0; i < n; ++i) {
      list.push_back(absl::StrCat("$", i + 1));
      s.params.push_back(i % 3 == 0 ? User() : Value(int64_t{base_ + i}));
    }
    std::string in = absl::StrCat("(", absl::StrJoin(list, ", "), ")");
    if (Uniform(0, 1) == 0) {
      s.sql =
          absl::StrCat("SELECT count(*), sum(amount), min(id) FROM orders WHERE user_id IN ", in);
      s.ordered = true;
    } else {
      s.sql = absl::StrCat("UPDATE accounts SET balance = balance + 1 WHERE user_id IN ", in);
      s.write = true;
    }
    return s;
  }

  Step OrderWrite() {
    int64_t id = orders_[Uniform(0, static_cast<int>(orders_.size()) - 1)];
    Value user = order_user_[id];
    if (Uniform(0, 3) == 0) {
      return {"DELETE FROM orders WHERE user_id = $1 AND id = $2", {user, id}, false, true};
    }
    return {"UPDATE orders SET status = $3 WHERE user_id = $1 AND id = $2",
            {user, id, Status()},
            false,
            true};
  }

  std::mt19937 rng_;
  int steps_ = 0;
  const bool sqlite_;
  std::vector<Value> users_;
  std::vector<int64_t> orders_{};
  std::map<int64_t, Value> order_user_;
  const int64_t base_;
  int64_t next_order_;
};

}  // namespace

std::vector<std::string> FundSchema(DatabaseKind kind) {
  return {
      "CREATE TABLE accounts (user_id bigint PRIMARY KEY, name text NOT NULL, balance bigint "
      "NOT NULL)",
      absl::StrCat("CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, fund "
                   "text NOT NULL, amount bigint NOT NULL, status text, created bigint NOT NULL, "
                   "note text, tag text COLLATE ",
                   kind == DatabaseKind::kSqlite ? "NOCASE" : "\"POSIX\"", ")"),
      "CREATE INDEX orders_by_user ON orders (user_id)",
      "CREATE TABLE funds (code text PRIMARY KEY, name text NOT NULL, rate double precision NOT "
      "NULL)",
      "INSERT INTO funds (code, name, rate) VALUES ('A', 'Money Market A', 2.1), "
      "('B', 'Bond B', 3.4), ('C', 'Cash C', 1.2), ('D', 'Deposit D', 1.9)",
  };
}

absl::Status SameResult(const ResultSet& want, const ResultSet& got, bool ordered, bool fold_case,
                        bool exact) {
  if (want.columns != got.columns) {
    return absl::InternalError(absl::StrCat("columns differ: want ",
                                            absl::StrJoin(want.columns, ","), " got ",
                                            absl::StrJoin(got.columns, ",")));
  }
  if (want.rows.size() != got.rows.size()) {
    return absl::InternalError(
        absl::StrCat("want ", want.rows.size(), " rows, got ", got.rows.size()));
  }
  std::vector<std::vector<Value>> a = want.rows, b = got.rows;
  if (!ordered) {
    auto less = [&](const std::vector<Value>& x, const std::vector<Value>& y) {
      for (size_t i = 0; i < x.size(); ++i) {
        int c = Compare(x[i], y[i], fold_case ? Collation::kNoCase : Collation::kBinary);
        if (c != 0) return c < 0;
      }
      return false;
    };
    std::sort(a.begin(), a.end(), less);
    std::sort(b.begin(), b.end(), less);
  }
  for (size_t r = 0; r < a.size(); ++r) {
    for (size_t c = 0; c < a[r].size(); ++c) {
      if (!SameValue(a[r][c], b[r][c], fold_case, exact)) {
        return absl::InternalError(
            absl::StrCat("row ", r + 1, " differs: want ", RowText(a[r]), " got ", RowText(b[r])));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DifferentialStats> RunDifferential(Connection* plain, ShardedDataSource* sharded,
                                                  int steps, uint32_t seed, DatabaseKind kind) {
  DifferentialStats stats;
  Workload w(seed, kind);
  for (int i = 0; i < steps; ++i) {
    Step s = w.Next();
    absl::StatusOr<ResultSet> want = plain->Execute(s.sql, s.params);
    absl::StatusOr<ResultSet> got = sharded->Execute(s.sql, s.params);
    std::string where =
        absl::StrCat("step ", i + 1, ": ", s.sql, " with (", RowText(s.params), ")");
    if (!want.ok()) {
      // Refused alike, or it is a difference.
      if (got.ok() || got.status().code() != want.status().code() ||
          !absl::StrContains(Refusal(got.status()), Refusal(want.status()))) {
        return absl::InternalError(absl::StrCat(where, ": plain: ", want.status().ToString(),
                                                "; sharded: ", got.status().ToString()));
      }
      ++stats.refused;
      ++stats.statements;
      continue;
    }
    if (!got.ok())
      return absl::InternalError(absl::StrCat(where, ": sharded: ", got.status().message()));
    if (s.write) {
      if (want->rows_affected != got->rows_affected) {
        return absl::InternalError(absl::StrCat(where, ": plain changed ", want->rows_affected,
                                                " rows, sharded ", got->rows_affected));
      }
    } else {
      absl::Status same = SameResult(*want, *got, s.ordered, s.fold_case, s.exact);
      if (!same.ok()) return absl::InternalError(absl::StrCat(where, ": ", same.message()));
      stats.rows_compared += static_cast<int>(want->rows.size());
      if (s.sql.find("user_id = $1") == std::string::npos &&
          s.sql.find("funds ORDER") == std::string::npos) {
        ++stats.scatters;
      }
    }
    ++stats.statements;
  }
  return stats;
}

}  // namespace formica::dds::testing
