// rpc::Client and rpc::Server over a Discovery other than DSR: calls follow
// the provider sets and routes the discovery pushes, and a server announces
// and withdraws itself through it. In-process echo providers, no daemon.
#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fake_discovery.h"
#include "formica/rpc/client.h"
#include "formica/rpc/discovery.h"
#include "formica/rpc/server.h"
#include "formica/test/echo.grpc.pb.h"
#include "gtest/gtest.h"

namespace formica::rpc {
namespace {

constexpr char kService[] = "formica.test.Echo";

// Answers with the address it was started on.
class NamedEcho : public test::Echo::Service {
 public:
  std::string address;
  grpc::Status Echo(grpc::ServerContext*, const test::EchoRequest*,
                    test::EchoResponse* response) override {
    response->set_served_by(address);
    return grpc::Status::OK;
  }
};

// `n` calls all served by `address`.
std::multiset<std::string> Times(int n, const std::string& address) {
  std::multiset<std::string> out;
  for (int i = 0; i < n; ++i) out.insert(address);
  return out;
}

class DiscoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      auto echo = std::make_unique<NamedEcho>();
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.RegisterService(echo.get());
      servers_.push_back(builder.BuildAndStart());
      ASSERT_NE(port, 0);
      echo->address = "127.0.0.1:" + std::to_string(port);
      echoes_.push_back(std::move(echo));
    }
  }
  void TearDown() override {
    for (auto& server : servers_) server->Shutdown();
  }

  Provider ProviderOf(int i, std::map<std::string, std::string> tags = {}) {
    return Provider{echoes_[i]->address, "", 100, std::move(tags)};
  }

  // Who served each of `n` calls.
  std::multiset<std::string> ServedBy(Client& client, int n) {
    std::multiset<std::string> out;
    for (int i = 0; i < n; ++i) {
      test::EchoRequest request;
      test::EchoResponse response;
      absl::Status st = client.CallWithStub<test::Echo>(
          kService, CallOptions{}, [&](test::Echo::Stub& stub, grpc::ClientContext* ctx) {
            return stub.Echo(ctx, request, &response);
          });
      out.insert(st.ok() ? response.served_by() : st.ToString());
    }
    return out;
  }

  testing::FakeDiscovery discovery_;
  std::vector<std::unique_ptr<NamedEcho>> echoes_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
};

TEST_F(DiscoveryTest, CallsFollowTheNewestProviderSet) {
  discovery_.Push({kService, 1, {ProviderOf(0)}});
  auto client = Client::Create(ClientOptions{}, &discovery_);
  ASSERT_TRUE(client.ok()) << client.status();

  EXPECT_EQ(ServedBy(**client, 10), Times(10, echoes_[0]->address));
  discovery_.Push({kService, 2, {ProviderOf(1)}});
  EXPECT_EQ(ServedBy(**client, 10), Times(10, echoes_[1]->address));
}

TEST_F(DiscoveryTest, RoutesFromTheDiscoveryNarrowTheProviders) {
  discovery_.Push(
      {kService, 1, {ProviderOf(0, {{"color", "blue"}}), ProviderOf(1, {{"color", "green"}})}});
  discovery_.SetRoutes(kService, "color=green:100");
  auto client = Client::Create(ClientOptions{}, &discovery_);
  ASSERT_TRUE(client.ok()) << client.status();

  EXPECT_EQ(ServedBy(**client, 20), Times(20, echoes_[1]->address));
  discovery_.SetRoutes(kService, "color=blue:100");
  EXPECT_EQ(ServedBy(**client, 20), Times(20, echoes_[0]->address));
  discovery_.SetRoutes(kService, std::nullopt);
  std::multiset<std::string> both = ServedBy(**client, 40);
  EXPECT_GT(both.count(echoes_[0]->address), 0u);
  EXPECT_GT(both.count(echoes_[1]->address), 0u);
}

TEST_F(DiscoveryTest, ServerAnnouncesAndWithdrawsThroughTheDiscovery) {
  test::Echo::Service echo;
  ServerOptions options;
  options.zone = "gz00a";
  options.weight = 70;
  options.tags = {{"color", "blue"}};
  options.unpublish_grace = absl::ZeroDuration();
  auto server = Server::Start(options, {{kService, &echo}}, &discovery_);
  ASSERT_TRUE(server.ok()) << server.status();

  std::map<std::string, Provider> published = discovery_.Published(kService);
  ASSERT_EQ(published.size(), 1u);
  const Provider& p = published.begin()->second;
  EXPECT_EQ(p.address, (*server)->address());
  EXPECT_EQ(p.zone, "gz00a");
  EXPECT_EQ(p.weight, 70);
  EXPECT_EQ(p.tags, (std::map<std::string, std::string>{{"color", "blue"}}));

  (*server)->Shutdown();
  EXPECT_TRUE(discovery_.Published(kService).empty());
}

TEST_F(DiscoveryTest, NullDiscoveryIsRefused) {
  EXPECT_EQ(Client::Create(ClientOptions{}, static_cast<Discovery*>(nullptr)).status().code(),
            absl::StatusCode::kInvalidArgument);
  test::Echo::Service echo;
  EXPECT_EQ(Server::Start(ServerOptions{}, {{kService, &echo}}, static_cast<Discovery*>(nullptr))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace formica::rpc
