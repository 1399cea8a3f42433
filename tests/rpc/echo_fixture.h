// Shared fixture for tests that call echo providers: a real dsrd, echo_server
// processes that publish formica.test.Echo, an rpc::Client in the test, and
// the providers' call counters read over their Stats service.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "formica/rpc/client.h"
#include "formica/rpc/v1/rpc.grpc.pb.h"
#include "formica/test/echo.grpc.pb.h"
#include "registry_fixture.h"

namespace formica::rpc::testing {

using formica::testing::Subprocess;
inline constexpr char kEcho[] = "formica.test.Echo";

class EchoTest : public formica::registry::testing::RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    registry_ = NewClient("echo-test");
  }

  static std::string Address(Subprocess& p) { return p.LineAfter("serving on "); }

  std::unique_ptr<Client> NewRpcClient() {
    ClientOptions options;
    options.app_name = "echo-test";
    auto c = Client::Create(options, registry_.get());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // An echo_server with `flags` (--tag color=blue, --fail-percent 20, ...),
  // serving once this returns.
  std::unique_ptr<Subprocess> StartEcho(const std::vector<std::string>& flags) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tests/rpc/echo_server"),
                                     "--registry", dsrd_->address()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto p = Subprocess::Start(argv, dir_.File("echo" + std::to_string(++echoes_) + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // Waits until the registry lists `n` providers of the echo service.
  bool AwaitProviders(size_t n) {
    if (subscription_ == 0) subscription_ = *registry_->Subscribe(kEcho, nullptr);
    for (int i = 0; i < 1000; ++i) {
      auto s = registry_->GetSnapshot(kEcho);
      if (s && s->instances.size() == n) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "the registry never listed " << n << " providers";
    return false;
  }

  absl::StatusOr<test::EchoResponse> Echo(Client& client, CallOptions options = {},
                                          test::EchoRequest request = {}) {
    test::EchoResponse response;
    absl::Status st = client.CallWithStub<test::Echo>(
        kEcho, options, [&](test::Echo::Stub& stub, grpc::ClientContext* ctx) {
          return stub.Echo(ctx, request, &response);
        });
    if (!st.ok()) return st;
    return response;
  }

  // The counters of the provider at `address`, read over its Stats service.
  static absl::StatusOr<v1::StatsReply> Stats(const std::string& address,
                                              const std::string& service = kEcho) {
    auto stub =
        v1::Stats::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetStatsRequest request;
    request.set_service(service);
    v1::StatsReply reply;
    grpc::Status st = stub->GetStats(&ctx, request, &reply);
    if (!st.ok()) return absl::UnavailableError(st.error_message());
    return reply;
  }

  std::unique_ptr<registry::Client> registry_;
  uint64_t subscription_ = 0;
  int echoes_ = 0;
};

}  // namespace formica::rpc::testing
