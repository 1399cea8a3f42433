// LDC rule sets and the Router over fixed rules: no daemon, milliseconds.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "formica/common/user_shard.h"
#include "formica/ldc/router.h"
#include "formica/ldc/rules.h"
#include "formica/registry/client.h"

namespace formica::ldc {
namespace {

using ::testing::HasSubstr;

constexpr char kTwoZones[] = R"(
ldc:
  zones:
    zone-a: {kind: rzone, data_center: dc-1, city: hangzhou, shards: "00-49"}
    zone-b: {kind: rzone, data_center: dc-2, city: shanghai, shards: "50-99"}
    global: {kind: gzone, data_center: dc-1, city: hangzhou}
    global-sh: {kind: czone, data_center: dc-2, city: shanghai}
)";

RuleSet TwoZones() { return ParseRules(kTwoZones).value(); }

std::string Message(const absl::Status& st) { return std::string(st.message()); }

TEST(UserShard, IsTheLastTwoDigits) {
  EXPECT_EQ(*UserShard("20881042"), 42);
  EXPECT_EQ(*UserShard("05"), 5);
  EXPECT_EQ(*UserShard(" 1299 "), 99);
  EXPECT_FALSE(UserShard("7").ok());
  EXPECT_THAT(Message(UserShard("user-ab").status()), HasSubstr("'user-ab'"));
}

TEST(LdcRules, ParsesZonesKindsAndOwners) {
  RuleSet rules = TwoZones();
  ASSERT_EQ(rules.zones.size(), 4u);
  EXPECT_EQ(rules.Owner(0)->name, "zone-a");
  EXPECT_EQ(rules.Owner(49)->name, "zone-a");
  EXPECT_EQ(rules.Owner(50)->name, "zone-b");
  EXPECT_EQ(rules.GlobalZone()->name, "global");
  EXPECT_EQ(rules.FindZone("global-sh")->kind, ZoneKind::kCZone);
  EXPECT_EQ(rules.FindZone("zone-b")->city, "shanghai");
  EXPECT_TRUE(rules.fenced.empty());
}

TEST(LdcRules, YamlRoundTrips) {
  RuleSet rules = TwoZones();
  rules.fenced = {10, 11, 12, 40};
  absl::StatusOr<RuleSet> back = ParseRules(RulesToYaml(rules));
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << RulesToYaml(rules);
  EXPECT_TRUE(*back == rules) << RulesToYaml(*back);
}

TEST(LdcRules, ShardRangesAreCompact) {
  EXPECT_EQ(FormatShards({0, 1, 2, 3, 7, 9, 10}), "00-03,07,09-10");
  EXPECT_EQ(FormatShards({}), "");
  EXPECT_EQ(*ParseShards("00-02, 07"), (std::set<int>{0, 1, 2, 7}));
  EXPECT_THAT(Message(ParseShards("40-100").status()), HasSubstr("'40-100'"));
  EXPECT_THAT(Message(ParseShards("9-3").status()), HasSubstr("low to high"));
  EXPECT_THAT(Message(ParseShards("x").status()), HasSubstr("'x'"));
}

// Each bad rule set is refused naming the shard or zone at fault.
TEST(LdcRules, RefusesBadSetsNamingTheFault) {
  struct Case {
    std::string yaml;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {R"(ldc: {zones: {a: {shards: "00-49"}, g: {kind: gzone}}})", "shard 50 has no owner"},
      {R"(ldc: {zones: {a: {shards: "00-60"}, b: {shards: "50-99"}, g: {kind: gzone}}})",
       "shard 50 is owned by both a and b"},
      {R"(ldc: {zones: {a: {shards: "00-99"}}})", "no gzone"},
      {R"(ldc: {zones: {a: {shards: "00-99"}, g: {kind: gzone}, h: {kind: gzone}}})",
       "gzones g and h"},
      {R"(ldc: {zones: {a: {shards: "00-89"}, g: {kind: gzone, shards: "90-99"}}})",
       "shard 90 is owned by gzone 'g'"},
      {R"(ldc: {zones: {a: {shards: "00-99"}, g: {kind: gzone}, c: {kind: czone}}})",
       "czone 'c' has no city"},
      {R"(ldc: {zones: {a: {shards: "00-99", kind: qzone}, g: {kind: gzone}}})",
       "'qzone' is not rzone, gzone or czone"},
      {R"(ldc: {zones: {"a b": {shards: "00-99"}, g: {kind: gzone}}})", "zone name 'a b'"},
      {R"(ldc: {zones: {a: {shards: "00-99", colour: red}, g: {kind: gzone}}})",
       "ldc.zones.a.colour: unknown key"},
      {R"(ldc: {zones: {a: {shards: "00-99"}, g: {kind: gzone}}, fenced: "1-200"})", "'1-200'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<RuleSet> rules = ParseRules(c.yaml, "rules.yaml");
    ASSERT_FALSE(rules.ok()) << c.yaml;
    EXPECT_EQ(rules.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(rules.status()), HasSubstr(c.expect)) << c.yaml;
  }
}

TEST(LdcRules, ValidateRefusesAnOwnerThatIsNotListed) {
  RuleSet rules = TwoZones();
  rules.owner[77] = "zone-x";
  EXPECT_THAT(Message(Validate(rules)),
              HasSubstr("shard 77 is owned by zone 'zone-x', which is not listed"));
}

TEST(LdcRouter, RoutesAUserToTheOwnerOfItsShard) {
  auto router = Router::ForRules(TwoZones(), 7, "zone-a").value();
  Route route = router->RouteUser("20881042").value();
  EXPECT_EQ(route.shard, 42);
  EXPECT_EQ(route.owner, "zone-a");
  EXPECT_TRUE(route.local);
  EXPECT_EQ(route.version, 7u);
  EXPECT_EQ(*router->ZoneForUser("10000077"), "zone-b");
  EXPECT_EQ(*router->ZoneForUser(""), "zone-a");
  EXPECT_EQ(router->RouteUser("abc").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LdcRouter, AdmitsWritesOnlyForOwnedShards) {
  auto router = Router::ForRules(TwoZones(), 7, "zone-a").value();
  EXPECT_TRUE(router->AdmitUserWrite("1042", absl::Now()).ok());
  auto refused = router->AdmitUserWrite("1077", absl::Now());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(refused.status()), HasSubstr("shard 77 is owned by zone zone-b"));
  EXPECT_THAT(Message(refused.status()), HasSubstr("this process is in zone zone-a"));
}

TEST(LdcRouter, FencedShardIsRetryableForEveryZone) {
  RuleSet rules = TwoZones();
  rules.fenced = {42, 77};
  for (const char* zone : {"zone-a", "zone-b"}) {
    auto router = Router::ForRules(rules, 8, zone).value();
    for (int shard : {42, 77}) {
      absl::Time start = absl::Now();
      auto fenced = router->AdmitWrite(shard, start + absl::Milliseconds(50));
      EXPECT_EQ(fenced.status().code(), absl::StatusCode::kUnavailable) << zone << shard;
      EXPECT_THAT(Message(fenced.status()), HasSubstr("fenced while it moves"));
      EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));  // waited for the fence
    }
  }
}
TEST(LdcRouter, StartRefusesABadZoneOrInstanceId) {
  registry::ClientOptions options;
  options.registries = {"127.0.0.1:1"};  // never reached: the checks come first
  auto registry = registry::Client::Create(options).value();
  RouterOptions bad_zone;
  bad_zone.zone = "zone a";
  auto router = Router::Start(registry.get(), bad_zone);
  EXPECT_EQ(router.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(router.status()), HasSubstr("zone name 'zone a'"));
  RouterOptions bad_id;
  bad_id.zone = "zone-a";
  bad_id.instance_id = "web 1";
  router = Router::Start(registry.get(), bad_id);
  EXPECT_EQ(router.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(router.status()), HasSubstr("instance_id 'web 1'"));
}

}  // namespace
}  // namespace formica::ldc
