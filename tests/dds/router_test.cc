// The DDS router against a corpus of statements (routing_cases.txt), each
// with the shards it must run on and the SQL it becomes there, plus the
// statements it must refuse and why.
#include "router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <limits>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace formica::dds {
namespace {

std::unique_ptr<Router> FundRouter() {
  RouterConfig c;
  c.sharded_tables = {{"orders", "user_id"}, {"accounts", "user_id"}, {"payments", "payer"}};
  c.binding_groups = {{"orders", "accounts"}};
  c.broadcast_tables = {"funds"};
  c.databases = 4;
  return std::move(*Router::Create(c));
}

struct Case {
  int line = 0;
  std::string sql;
  std::vector<std::string> params;
  std::string route;                   // "34", "12,34", "all" (a read of broadcast tables: "db0")
  std::vector<std::string> rewritten;  // expected SQL, one per routed statement (or the first)
  std::string error;                   // expected error substring
};

// Blocks separated by blank lines; "sql:", "params:" (comma separated),
// "route:", "sql@N:" (the statement for shard N) and "error:" lines.
std::vector<Case> LoadCases() {
  std::ifstream in(FORMICA_ROUTING_CASES);
  std::vector<Case> cases;
  Case c;
  std::string line;
  int n = 0;
  auto flush = [&] {
    if (!c.sql.empty()) cases.push_back(c);
    c = Case();
  };
  while (std::getline(in, line)) {
    ++n;
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty()) {
      flush();
      continue;
    }
    if (absl::StartsWith(l, "#")) continue;
    if (c.line == 0) c.line = n;
    if (absl::ConsumePrefix(&l, "sql:")) {
      c.sql = std::string(absl::StripAsciiWhitespace(l));
    } else if (absl::ConsumePrefix(&l, "params:")) {
      c.params = absl::StrSplit(absl::StripAsciiWhitespace(l), ',', absl::SkipEmpty());
    } else if (absl::ConsumePrefix(&l, "route:")) {
      c.route = std::string(absl::StripAsciiWhitespace(l));
    } else if (absl::ConsumePrefix(&l, "error:")) {
      c.error = std::string(absl::StripAsciiWhitespace(l));
    } else if (absl::ConsumePrefix(&l, "sql@")) {
      std::pair<std::string, std::string> kv = absl::StrSplit(l, absl::MaxSplits(':', 1));
      c.rewritten.push_back(kv.first + ": " + std::string(absl::StripAsciiWhitespace(kv.second)));
    }
  }
  flush();
  return cases;
}

TEST(Router, RoutesAndRewritesTheCorpus) {
  auto router = FundRouter();
  std::vector<Case> cases = LoadCases();
  ASSERT_GE(cases.size(), 20u);
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("routing_cases.txt:", c.line, ": ", c.sql));
    std::vector<Value> params(c.params.begin(), c.params.end());
    auto routed = router->Route(c.sql, params);
    if (!c.error.empty()) {
      ASSERT_FALSE(routed.ok()) << "routed, but should be refused";
      EXPECT_EQ(routed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(routed.status().message()), ::testing::HasSubstr(c.error));
      continue;
    }
    ASSERT_TRUE(routed.ok()) << routed.status();
    std::vector<std::string> shards;
    for (const RoutedStatement& r : routed->statements) {
      shards.push_back(r.shard >= 0 ? std::to_string(r.shard) : absl::StrCat("db", r.database));
    }
    if (c.route == "all") {
      EXPECT_EQ(routed->statements.size(), 100u);
    } else {
      EXPECT_EQ(absl::StrJoin(shards, ","), c.route);
    }
    for (const std::string& expected : c.rewritten) {
      std::pair<std::string, std::string> kv = absl::StrSplit(expected, absl::MaxSplits(": ", 1));
      const auto& st = routed->statements;
      if (absl::StartsWith(kv.first, "db")) {  // a broadcast table's database
        int db = std::stoi(kv.first.substr(2));
        auto it = std::find_if(st.begin(), st.end(),
                               [&](const RoutedStatement& r) { return r.database == db; });
        ASSERT_NE(it, st.end()) << "no statement for database " << db;
        EXPECT_EQ(*it->sql, kv.second);
        continue;
      }
      int shard = std::stoi(kv.first);
      auto it = std::find_if(st.begin(), st.end(),
                             [&](const RoutedStatement& r) { return r.shard == shard; });
      ASSERT_NE(it, st.end()) << "no statement for shard " << shard;
      EXPECT_EQ(*it->sql, kv.second);
      EXPECT_EQ(it->database, shard * 4 / 100);
    }
  }
}

TEST(Router, WritesCastsAndParametersAsSqliteReadsThem) {
  RouterConfig c;
  c.sharded_tables = {{"orders", "user_id"}};
  c.broadcast_tables = {"funds"};
  c.sqlite = true;
  auto router = std::move(*Router::Create(c));
  auto routed = router->Route(
      "SELECT CAST(amount AS TEXT), amount::bigint FROM orders WHERE user_id = CAST($2 AS "
      "INTEGER) AND status IN ($1, $2, $1)",
      {std::string("paid"), std::string("1234")});
  ASSERT_TRUE(routed.ok()) << routed.status();
  ASSERT_EQ(routed->statements.size(), 1u);
  const RoutedStatement& s = routed->statements[0];
  EXPECT_EQ(s.shard, 34);
  EXPECT_EQ(*s.sql,
            "SELECT CAST(amount AS TEXT), CAST(amount AS BIGINT) FROM orders_34 WHERE user_id = "
            "CAST(? AS INTEGER) AND status IN (?, ?, ?)");
  ASSERT_NE(s.order, nullptr);
  EXPECT_EQ(*s.order, (std::vector<int>{2, 1, 2, 1}));
  std::vector<Value> storage;
  EXPECT_EQ(ParamsOf(s, {std::string("paid"), std::string("1234")}, &storage),
            (std::vector<Value>{std::string("1234"), std::string("paid"), std::string("1234"),
                                std::string("paid")}));
  // Parameters in their own order need no reordering.
  auto plain = router->Route("SELECT * FROM orders WHERE user_id = $1 AND id > $2",
                             {int64_t{7}, int64_t{1}});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(*plain->statements[0].sql, "SELECT * FROM orders_07 WHERE user_id = ? AND id > ?");
  EXPECT_EQ(plain->statements[0].order, nullptr);
  // A key cast to an integer routes by the cast's value; a key cast to a
  // type the router cannot read is the database's to compare: every shard.
  auto text_key = router->Route("SELECT * FROM orders WHERE user_id = CAST($1 AS INTEGER)",
                                {std::string("0042")});
  ASSERT_TRUE(text_key.ok()) << text_key.status();
  EXPECT_EQ(text_key->statements[0].shard, 42);
  auto real_key = router->Route("SELECT * FROM orders WHERE user_id = CAST($1 AS INTEGER)",
                                {std::string("42.5")});
  ASSERT_TRUE(real_key.ok()) << real_key.status();
  EXPECT_EQ(real_key->statements.size(), 100u);
  // What SQLite cannot express is refused.
  auto literal = router->Route("SELECT * FROM orders WHERE created > DATE '2026-01-01'", {});
  EXPECT_THAT(std::string(literal.status().message()),
              ::testing::HasSubstr("SQLite has no typed literals"));
  auto odd = router->Route("SELECT CAST(amount AS \"my type\") FROM orders WHERE user_id = 1", {});
  EXPECT_EQ(odd.status().message(),
            "SQLite cannot cast to type my type; cast to INTEGER, REAL, TEXT, BLOB or NUMERIC");
  // Table names are filled in per table from one written statement, quoted
  // as the deparser quotes them.
  auto index = router->Route("CREATE INDEX \"ByUser\" ON orders (user_id)", {});
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(*index->statements[7].sql, "CREATE INDEX \"ByUser_07\" ON orders_07 (user_id)");
  // A statement holding the router's own marker text still comes out right.
  auto marker = router->Route("SELECT '__dds0_t0__' FROM orders WHERE user_id = 1", {});
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(*marker->statements[0].sql, "SELECT '__dds0_t0__' FROM orders_01 WHERE user_id = 1");
}

TEST(Router, ShardOfIsTheLastTwoDigits) {
  auto router = FundRouter();
  EXPECT_EQ(*router->ShardOf(std::string("20881234")), 34);
  EXPECT_EQ(*router->ShardOf(int64_t{20881234}), 34);
  EXPECT_EQ(*router->ShardOf(std::string("07")), 7);
  EXPECT_FALSE(router->ShardOf(std::string("7")).ok());
  EXPECT_FALSE(router->ShardOf(std::string("user-ab")).ok());
  EXPECT_FALSE(router->ShardOf(Value()).ok());
}

TEST(Router, ModuloAndRangeShardFunctions) {
  RouterConfig m;
  m.sharded_tables = {{"t", "id"}};
  m.shards = 8;
  m.function = ShardFunction::kModulo;
  m.databases = 2;
  auto modulo = std::move(*Router::Create(m));
  EXPECT_EQ(*modulo->ShardOf(int64_t{13}), 5);
  EXPECT_EQ(*modulo->ShardOf(int64_t{-3}), 5);
  EXPECT_EQ(modulo->DatabaseOf(5), 1);
  auto routed = modulo->Route("SELECT * FROM t WHERE id = 13", {});
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_EQ(*routed->statements[0].sql, "SELECT * FROM t_05 WHERE id = 13");

  RouterConfig r = m;
  r.shards = 2;
  r.databases = 1;
  r.function = ShardFunction::kRange;
  r.ranges = {{0, 999}, {1000, 1999}};
  auto range = std::move(*Router::Create(r));
  EXPECT_EQ(*range->ShardOf(int64_t{1500}), 1);
  EXPECT_THAT(std::string(range->ShardOf(int64_t{2000}).status().message()),
              ::testing::HasSubstr("in no shard's range"));
  r.ranges = {{0, 999}, {900, 1999}};
  EXPECT_THAT(std::string(Router::Create(r).status().message()), ::testing::HasSubstr("overlap"));
}

TEST(Router, AnEmptySuffixRunsOnceOnEachDatabase) {
  RouterConfig c;
  c.sharded_tables = {{"orders", "user_id"}};
  c.databases = 4;
  c.table_suffix = "";
  auto router = std::move(*Router::Create(c));
  auto routed = router->Route("SELECT count(*) FROM orders", {});
  ASSERT_TRUE(routed.ok()) << routed.status();
  ASSERT_EQ(routed->statements.size(), 4u);
  EXPECT_EQ(*routed->statements[1].sql, "SELECT count(*) FROM orders");
  EXPECT_NE(routed->merge, nullptr);
}

TEST(Router, BadConfigIsRefused) {
  RouterConfig none;
  EXPECT_FALSE(Router::Create(none).ok());
  RouterConfig both;
  both.sharded_tables = {{"t", "id"}};
  both.broadcast_tables = {"t"};
  EXPECT_THAT(std::string(Router::Create(both).status().message()),
              ::testing::HasSubstr("both sharded and broadcast"));
  RouterConfig many;
  many.sharded_tables = {{"t", "id"}};
  many.databases = 101;
  EXPECT_FALSE(Router::Create(many).ok());
  RouterConfig digits;
  digits.sharded_tables = {{"t", "id"}};
  digits.shards = 16;
  EXPECT_THAT(std::string(Router::Create(digits).status().message()),
              ::testing::HasSubstr("needs 100 shards"));
}

// On SQLite the merge reads collations SQLite declares for result columns:
// a column under a cast is selected bare beside it; avg's hidden sum is
// total(), which never fails on integer overflow; LIMIT+OFFSET saturates.
TEST(Router, SqliteScatterPlansAskSqliteForCollations) {
  RouterConfig c;
  c.sharded_tables = {{"orders", "user_id"}};
  c.databases = 4;
  c.sqlite = true;
  auto router = std::move(*Router::Create(c));
  struct Want {
    const char* sql;
    const char* on_shard_7;
  };
  for (const Want& w : std::vector<Want>{
           {"SELECT id, +code AS c FROM orders ORDER BY c, id",
            "SELECT id, + code AS c, code AS __dds_1 FROM orders_07 ORDER BY c, id"},
           {"SELECT id FROM orders ORDER BY note COLLATE nocase, id LIMIT 5",
            "SELECT id, note COLLATE nocase AS __dds_1 FROM orders_07 ORDER BY note COLLATE "
            "nocase, "
            "id LIMIT 5"},
           {"SELECT fund, avg(amount) FROM orders GROUP BY fund",
            "SELECT fund, avg(amount), total(amount) AS __dds_1, count(amount) AS __dds_2 FROM "
            "orders_07 GROUP BY fund"},
           {"SELECT min(code) FROM orders", "SELECT min(code), code AS __dds_1 FROM orders_07"},
       }) {
    SCOPED_TRACE(w.sql);
    auto routed = router->Route(w.sql, {});
    ASSERT_TRUE(routed.ok()) << routed.status();
    ASSERT_EQ(routed->statements.size(), 100u);
    EXPECT_EQ(*routed->statements[7].sql, w.on_shard_7);
  }
  auto huge = router->Route("SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2",
                            {std::numeric_limits<int64_t>::max(), int64_t{5}});
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_EQ(*huge->statements[7].sql, "SELECT id FROM orders_07 ORDER BY id");
  auto negative = router->Route("SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2",
                                {int64_t{-1}, int64_t{-3}});
  ASSERT_TRUE(negative.ok()) << negative.status();
  EXPECT_EQ(*negative->statements[7].sql, "SELECT id FROM orders_07 ORDER BY id");
  auto inner = router->Route("SELECT id FROM orders ORDER BY lower(note COLLATE nocase)", {});
  EXPECT_EQ(inner.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace formica::dds
