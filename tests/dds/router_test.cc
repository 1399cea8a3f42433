// The DDS router against a corpus of statements (routing_cases.txt), each
// with the shards it must run on and the SQL it becomes there, plus the
// statements it must refuse and why.
#include "router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace formica::dds {
namespace {

std::unique_ptr<Router> FundRouter() {
  RouterConfig c;
  c.sharded_tables = {{"orders", "user_id"}, {"accounts", "user_id"}};
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
    auto routed = router->Route(c.sql, c.params);
    if (!c.error.empty()) {
      ASSERT_FALSE(routed.ok()) << "routed, but should be refused";
      EXPECT_EQ(routed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(routed.status().message()), ::testing::HasSubstr(c.error));
      continue;
    }
    ASSERT_TRUE(routed.ok()) << routed.status();
    std::vector<std::string> shards;
    for (const RoutedStatement& r : *routed) shards.push_back(std::to_string(r.shard));
    if (c.route == "all") {
      EXPECT_EQ(routed->size(), 100u);
    } else {
      EXPECT_EQ(absl::StrJoin(shards, ","), c.route);
    }
    for (const std::string& expected : c.rewritten) {
      std::pair<std::string, std::string> kv = absl::StrSplit(expected, absl::MaxSplits(": ", 1));
      int shard = std::stoi(kv.first);
      auto it = std::find_if(routed->begin(), routed->end(),
                             [&](const RoutedStatement& r) { return r.shard == shard; });
      ASSERT_NE(it, routed->end()) << "no statement for shard " << shard;
      EXPECT_EQ(it->sql, kv.second);
      EXPECT_EQ(it->database, shard * 4 / 100);
    }
  }
}

TEST(Router, ShardOfIsTheLastTwoDigits) {
  EXPECT_EQ(*ShardOf("20881234"), 34);
  EXPECT_EQ(*ShardOf("07"), 7);
  EXPECT_FALSE(ShardOf("7").ok());
  EXPECT_FALSE(ShardOf("user-ab").ok());
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
}

}  // namespace
}  // namespace formica::dds
