// rpc.client and rpc.server sections of a YAML config.
#include <gtest/gtest.h>

#include "formica/common/config.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"

namespace formica::rpc {
namespace {

TEST(RpcOptions, ReadsBothSectionsOfOneFile) {
  auto config = Config::Parse(R"(
rpc:
  server:
    listen: 0.0.0.0:0
    advertise_host: 10.0.0.5
    zone: gz00a
    weight: 250
    tags: {color: blue, version: 1.4.2}
    warmup: 60s
    max_concurrent_calls: 500
    method_limits: [fund.Trade/Buy=200, fund.Trade/Redeem=0]
  client:
    app_name: fund-trade
    zone: gz00a
    default_timeout: 300ms
    retry_budget_percent: 10
    policies: [account.Balance=p2c_ewma, fund.Nav=consistent_hash]
other_component:
  anything: goes
)",
                              "svc.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  auto server = LoadServerOptions(*config);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->listen, "0.0.0.0:0");
  EXPECT_EQ(server->advertise_host, "10.0.0.5");
  EXPECT_EQ(server->weight, 250);
  EXPECT_EQ(server->tags,
            (std::map<std::string, std::string>{{"color", "blue"}, {"version", "1.4.2"}}));
  EXPECT_EQ(server->warmup, absl::Seconds(60));
  EXPECT_EQ(server->max_concurrent_calls, 500);
  EXPECT_EQ(server->method_limits,
            (std::map<std::string, int>{{"fund.Trade/Buy", 200}, {"fund.Trade/Redeem", 0}}));
  auto client = LoadClientOptions(*config);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->app_name, "fund-trade");
  EXPECT_EQ(client->default_timeout, absl::Milliseconds(300));
  EXPECT_DOUBLE_EQ(client->retry_budget_ratio, 0.1);
  EXPECT_EQ(client->policies.at("account.Balance"), "p2c_ewma");
  EXPECT_EQ(client->policies.at("fund.Nav"), "consistent_hash");
}

TEST(RpcOptions, ErrorsNameFileLineKeyAndReason) {
  auto bad_policy = Config::Parse("rpc:\n  client:\n    policies: [a.B=fastest]\n", "svc.yaml");
  ASSERT_TRUE(bad_policy.ok());
  EXPECT_EQ(LoadClientOptions(*bad_policy).status().message(),
            "svc.yaml:3: rpc.client.policies: balancing policy 'fastest' is not one of "
            "weighted_random, round_robin, least_active, consistent_hash, p2c_ewma");
  auto typo = Config::Parse("rpc:\n  server:\n    wieght: 5\n", "svc.yaml");
  ASSERT_TRUE(typo.ok());
  EXPECT_EQ(LoadServerOptions(*typo).status().message(),
            "svc.yaml:3: rpc.server.wieght: unknown key");
  auto weight = Config::Parse("rpc:\n  server:\n    weight: -3\n", "svc.yaml");
  ASSERT_TRUE(weight.ok());
  EXPECT_EQ(LoadServerOptions(*weight).status().message(),
            "svc.yaml:3: rpc.server.weight: must be between 0 and 10000, got -3");
  auto limit = Config::Parse("rpc:\n  server:\n    method_limits: [fund.Trade=5]\n", "svc.yaml");
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(LoadServerOptions(*limit).status().message(),
            "svc.yaml:3: rpc.server.method_limits: entry 'fund.Trade=5' is not "
            "pkg.Service/Method=limit (e.g. fund.Trade/Buy=200)");
  auto listen = Config::Parse("rpc:\n  server:\n    listen: nowhere\n", "svc.yaml");
  ASSERT_TRUE(listen.ok());
  EXPECT_NE(LoadServerOptions(*listen).status().message().find(
                "svc.yaml:3: rpc.server.listen: address 'nowhere' is malformed"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace formica::rpc
