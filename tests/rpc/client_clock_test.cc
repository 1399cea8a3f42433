// rpc::Client's timing on a fake clock: outlier ejection, the retry budget's
// one-second windows and the call deadline, driven in milliseconds with no
// real sleep. Providers come from a FakeDiscovery; two in-process
// gRPC servers keep their channels healthy, and every attempt answers from
// the test without calling them.
#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "fake_discovery.h"
#include "formica/common/clock.h"
#include "formica/rpc/client.h"
#include "formica/rpc/discovery.h"
#include "formica/rpc/metrics.h"
#include "formica/test/echo.grpc.pb.h"
#include "gtest/gtest.h"

namespace formica::rpc {
namespace {

constexpr char kService[] = "formica.test.Echo";

class ClientClockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::string> addresses;
    for (int i = 0; i < 2; ++i) {
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.RegisterService(&echo_);
      servers_.push_back(builder.BuildAndStart());
      ASSERT_NE(port, 0);
      addresses.push_back("127.0.0.1:" + std::to_string(port));
    }
    ProviderSet set{kService, 1, {}};
    for (const std::string& address : addresses) set.providers.push_back({address, "", 100, {}});
    discovery_.Push(set);
  }

  void TearDown() override {
    for (auto& server : servers_) server->Shutdown();
  }

  std::unique_ptr<Client> MakeClient(ClientOptions options) {
    auto client = Client::Create(std::move(options), &discovery_, &clock_);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // A whole second of the fake clock, so windows of whole seconds start here.
  FakeClock clock_{absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()))};
  test::Echo::Service echo_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
  testing::FakeDiscovery discovery_;
};

TEST_F(ClientClockTest, EjectedProviderIsSkippedUntilEjectionTimeThenProbed) {
  ClientOptions options;
  options.eject_after_failures = 1;
  options.ejection_time = absl::Seconds(10);
  options.max_attempts = 1;
  options.policies[kService] = "round_robin";
  std::unique_ptr<Client> client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  // The first provider picked fails (INTERNAL: a provider fault) and is
  // ejected; the other answers.
  grpc::Channel* bad = nullptr;
  int bad_picks = 0;
  auto attempt = [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext*) {
    if (bad == nullptr) bad = channel.get();
    if (channel.get() != bad) return grpc::Status::OK;
    ++bad_picks;
    return grpc::Status(grpc::StatusCode::INTERNAL, "broken");
  };
  auto calls = [&](int n) {
    bad_picks = 0;
    for (int i = 0; i < n; ++i) (void)client->Call(kService, CallOptions{}, attempt);
    return bad_picks;
  };
  EXPECT_EQ(client->Call(kService, CallOptions{}, attempt).code(), absl::StatusCode::kInternal);
  ASSERT_NE(bad, nullptr);

  EXPECT_EQ(calls(10), 0) << "an ejected provider must take no calls";
  clock_.Advance(absl::Seconds(10) - absl::Milliseconds(1));
  EXPECT_EQ(calls(10), 0) << "still ejected 1ms before ejection_time is up";
  clock_.Advance(absl::Milliseconds(1));
  // Back in rotation: the next round-robin turn probes it, the probe fails
  // and ejects it again at once.
  EXPECT_EQ(calls(10), 1);
  clock_.Advance(absl::Seconds(10) - absl::Milliseconds(1));
  EXPECT_EQ(calls(10), 0);
  // Two ejections counted (formica_rpc_ejections_total): the first failure,
  // and the failed probe; the provider that answered, none.
  std::string page = CallMetricsPrometheusText();
  double ejections = 0;
  int series = 0;
  for (size_t at = 0; (at = page.find("\nformica_rpc_ejections_total{", at)) != std::string::npos;
       ++at) {
    size_t space = page.find(' ', at + 1);
    ejections += std::stod(page.substr(space + 1, page.find('\n', space) - space - 1));
    ++series;
  }
  EXPECT_EQ(series, 2) << page;
  EXPECT_EQ(ejections, 2) << page;
}

TEST_F(ClientClockTest, RetryBudgetRefillsAtTheNextSecond) {
  ClientOptions options;
  options.max_attempts = 2;
  options.retry_budget_ratio = 0;
  options.min_retries_per_second = 3;
  options.eject_after_failures = 1000;
  std::unique_ptr<Client> client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  int attempts = 0;
  auto attempt = [&](const std::shared_ptr<grpc::Channel>&, grpc::ClientContext*) {
    ++attempts;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
  };
  CallOptions call;
  call.idempotent = true;  // retried on another provider after any failure
  // Attempts one call makes, and whether it was cut short by the budget.
  auto one_call = [&](bool* exhausted) {
    attempts = 0;
    absl::Status st = client->Call(kService, call, attempt);
    *exhausted = st.message().find("retry budget exhausted") != absl::string_view::npos;
    return attempts;
  };
  bool exhausted = false;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(one_call(&exhausted), 2) << "call " << i << " may retry once";
    EXPECT_FALSE(exhausted);
  }
  EXPECT_EQ(one_call(&exhausted), 1);
  EXPECT_TRUE(exhausted) << "three retries per second, all spent";

  clock_.Advance(absl::Milliseconds(999));
  EXPECT_EQ(one_call(&exhausted), 1);
  EXPECT_TRUE(exhausted) << "the same second: still spent";

  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(one_call(&exhausted), 2) << "a new second: the budget is back";
  EXPECT_FALSE(exhausted);
}

TEST_F(ClientClockTest, NoRetryOnceTheDeadlinePassed) {
  ClientOptions options;
  options.max_attempts = 3;
  std::unique_ptr<Client> client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  CallOptions call;
  call.idempotent = true;
  call.timeout = absl::Milliseconds(300);
  int attempts = 0;
  absl::Duration step;  // how long each attempt takes on the fake clock
  auto attempt = [&](const std::shared_ptr<grpc::Channel>&, grpc::ClientContext*) {
    ++attempts;
    clock_.Advance(step);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
  };

  step = absl::Milliseconds(299);
  EXPECT_EQ(client->Call(kService, call, attempt).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(attempts, 2) << "1ms left after the first attempt: one more";

  attempts = 0;
  step = absl::Milliseconds(300);
  EXPECT_EQ(client->Call(kService, call, attempt).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(attempts, 1) << "the deadline passed during the first attempt";
}

}  // namespace
}  // namespace formica::rpc
