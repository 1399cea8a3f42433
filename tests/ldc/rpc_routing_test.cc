// rpc under LDC against a real dsrd: providers in four zones (two RZones,
// the GZone and a CZone), callers with ldc::RpcZoneRouting, calls counted
// per user at the providers.
#include <grpcpp/grpcpp.h>

#include <map>
#include <mutex>

#include "formica/ldc/rpc_routing.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/rpc/zone_routing.h"
#include "formica/test/echo.grpc.pb.h"
#include "ldc_fixture.h"

namespace formica::ldc::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kAccounts[] = "formica.test.Echo";  // a zone-local service
constexpr char kTotals[] = "fund.Totals";          // a global one (the same handler)

// Counts the calls a provider ran (per user) and the ones its zone check
// refused before running them.
class CountingEcho final : public test::Echo::Service {
 public:
  explicit CountingEcho(std::string zone) : zone_(std::move(zone)) {}
  grpc::Status Echo(grpc::ServerContext* context, const test::EchoRequest*,
                    test::EchoResponse* response) override {
    grpc::Status st = rpc::Serve(context, [&] {
      std::lock_guard<std::mutex> lock(mu_);
      ++served_[rpc::CurrentCallContext()->user_id];
      response->set_zone(zone_);
      response->set_user_id(rpc::CurrentCallContext()->user_id);
      return grpc::Status::OK;
    });
    if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      std::lock_guard<std::mutex> lock(mu_);
      ++refused_;
    }
    return st;
  }
  std::map<std::string, int> served() {
    std::lock_guard<std::mutex> lock(mu_);
    return served_;
  }
  int refused() {
    std::lock_guard<std::mutex> lock(mu_);
    return refused_;
  }

 private:
  const std::string zone_;
  std::mutex mu_;
  std::map<std::string, int> served_;
  int refused_ = 0;
};

// One zone's provider process (in the test's process): registry session,
// Router, zone routing and an rpc::Server hosting `service`.
struct Provider {
  ZoneClient client;
  std::unique_ptr<RpcZoneRouting> routing;
  std::unique_ptr<CountingEcho> echo;
  std::unique_ptr<rpc::Server> server;
};

constexpr char kRules[] = R"(
ldc:
  zones:
    zone-a: {kind: rzone, data_center: dc-1, city: hangzhou, shards: "00-49"}
    zone-b: {kind: rzone, data_center: dc-2, city: shanghai, shards: "50-99"}
    global: {kind: gzone, data_center: dc-1, city: hangzhou}
    global-sh: {kind: czone, data_center: dc-2, city: shanghai}
  global_services: [fund.Totals]
)";

class LdcRpcTest : public LdcTest {
 protected:
  void SetUp() override {
    LdcTest::SetUp();
    PublishRules(kRules);
    for (const char* zone : {"zone-a", "zone-b"}) Start(zone, kAccounts);
    for (const char* zone : {"global", "global-sh"}) Start(zone, kTotals);
  }

  void Start(const std::string& zone, const std::string& service) {
    Provider& p = providers_[zone];
    p.client = StartZone(zone, zone + "-provider");
    p.routing = std::make_unique<RpcZoneRouting>(p.client.router.get());
    p.echo = std::make_unique<CountingEcho>(zone);
    rpc::ServerOptions options;
    options.zone = zone;
    options.zone_routing = p.routing.get();
    options.unpublish_grace = absl::ZeroDuration();
    auto server = rpc::Server::Start(options, {{service, p.echo.get()}}, p.client.registry.get());
    ASSERT_TRUE(server.ok()) << server.status();
    p.server = std::move(*server);
  }

  // A caller in `zone`; with `routed`, through LDC's zone routing.
  struct Caller {
    ZoneClient client;
    std::unique_ptr<RpcZoneRouting> routing;
    std::unique_ptr<rpc::Client> rpc;
  };
  Caller NewCaller(const std::string& zone, bool routed = true) {
    Caller c;
    c.client = StartZone(zone, zone + "-caller");
    c.routing = std::make_unique<RpcZoneRouting>(c.client.router.get());
    rpc::ClientOptions options;
    options.app_name = "caller";
    options.zone = zone;
    if (routed) options.zone_routing = c.routing.get();
    auto client = rpc::Client::Create(options, c.client.registry.get());
    EXPECT_TRUE(client.ok()) << client.status();
    c.rpc = std::move(*client);
    return c;
  }

  static absl::StatusOr<test::EchoResponse> Call(rpc::Client& client, const std::string& service,
                                                 const std::string& user, bool read_only = false) {
    rpc::CallOptions options;
    options.timeout = absl::Seconds(5);
    options.context.user_id = user;
    options.read_only = read_only;
    test::EchoResponse response;
    absl::Status st = client.Call(
        service, options, [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
          return test::Echo::NewStub(ch)->Echo(ctx, test::EchoRequest(), &response);
        });
    if (!st.ok()) return st;
    return response;
  }

  std::map<std::string, Provider> providers_;
};

std::string UserOf(int i) { return absl::StrCat(2088000 + i); }  // shard = i % 100

TEST_F(LdcRpcTest, EveryCallLandsInItsUsersOwnerZone) {
  Caller caller = NewCaller("zone-a");
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 100; ++i) {
      auto r = Call(*caller.rpc, kAccounts, UserOf(i));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->zone(), i < 50 ? "zone-a" : "zone-b") << UserOf(i);
    }
  }
  // Counted per user at the providers: each user's three calls in its owner zone.
  std::map<std::string, int> a = providers_["zone-a"].echo->served();
  std::map<std::string, int> b = providers_["zone-b"].echo->served();
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ((i < 50 ? a : b)[UserOf(i)], 3) << UserOf(i);
    EXPECT_EQ((i < 50 ? b : a).count(UserOf(i)), 0u) << UserOf(i);
  }
  EXPECT_EQ(providers_["zone-a"].echo->refused() + providers_["zone-b"].echo->refused(), 0);
  // A call without a user stays in the caller's zone, as without LDC.
  auto none = Call(*caller.rpc, kAccounts, "");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->zone(), "zone-a");
  // A user id that cannot be routed is the caller's error, sent nowhere.
  EXPECT_EQ(Call(*caller.rpc, kAccounts, "abc").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LdcRpcTest, GlobalServiceGoesToTheGZoneAndItsReadsToTheCitysCZone) {
  Caller shanghai = NewCaller("zone-b");  // the CZone global-sh is in shanghai
  Caller hangzhou = NewCaller("zone-a");  // no CZone in hangzhou
  auto write = Call(*shanghai.rpc, kTotals, UserOf(77));
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->zone(), "global");
  auto read = Call(*shanghai.rpc, kTotals, UserOf(77), /*read_only=*/true);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->zone(), "global-sh");
  auto far_read = Call(*hangzhou.rpc, kTotals, UserOf(7), /*read_only=*/true);
  ASSERT_TRUE(far_read.ok()) << far_read.status();
  EXPECT_EQ(far_read->zone(), "global");
}

TEST_F(LdcRpcTest, AProviderRefusesAMisroutedCallAndTheClientRetriesItInTheOwnerZone) {
  // A caller without zone routing prefers its own zone: the zone-a provider
  // gets zone-b's user, refuses it, and the client library retries in zone-b.
  Caller plain = NewCaller("zone-a", /*routed=*/false);
  auto r = Call(*plain.rpc, kAccounts, UserOf(77));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->zone(), "zone-b");
  EXPECT_EQ(providers_["zone-a"].echo->refused(), 1);
  EXPECT_EQ(providers_["zone-a"].echo->served().count(UserOf(77)), 0u);
  EXPECT_EQ(providers_["zone-b"].echo->served()[UserOf(77)], 1);

  // As a plain gRPC client gets it: FAILED_PRECONDITION naming the zone.
  auto stub = test::Echo::NewStub(grpc::CreateChannel(providers_["zone-a"].server->address(),
                                                      grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata(rpc::kUserIdKey, UserOf(77));
  test::EchoResponse response;
  grpc::Status st = stub->Echo(&ctx, test::EchoRequest(), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("user 2088077 is served in zone zone-b"));
  auto trailer = ctx.GetServerTrailingMetadata().find(rpc::kServingZoneKey);
  ASSERT_NE(trailer, ctx.GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(trailer->second.data(), trailer->second.size()), "zone-b");
}

TEST_F(LdcRpcTest, AfterASwitchCallsFollowTheNewOwner) {
  Caller caller = NewCaller("zone-a");
  SwitchOptions options;
  options.shards = *ParseShards("00-09");
  options.to = "zone-b";
  auto result = admin_->Switch(options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->converged);
  for (int i = 0; i < 20; ++i) {
    auto r = Call(*caller.rpc, kAccounts, UserOf(i));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->zone(), i < 10 ? "zone-b" : "zone-a") << UserOf(i);
  }
  EXPECT_EQ(providers_["zone-a"].echo->refused(), 0);
}

}  // namespace
}  // namespace formica::ldc::testing
