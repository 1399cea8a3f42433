// dsrd in cluster mode when etcd stops answering: operator views wait for
// etcd off gRPC's callback threads and fail UNAVAILABLE naming etcd, while
// every other call keeps answering at once. A real etcd and a real dsrd,
// raw gRPC calls of our protos.
#include <atomic>

#include "etcd.h"
#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

using formica::testing::EtcdCluster;
using ::testing::HasSubstr;

TEST(EtcdOutageTest, ViewsWaitingForADeadEtcdHoldNoServerThreadAndFailUnavailable) {
  auto etcd = EtcdCluster::Start(1);
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  TempDir dir;
  DsrdProcess::Options options;
  options.data_dir = dir.File("dsrd");
  options.config = {{"storage.engine", "etcd"},
                    {"storage.etcd.endpoints", (*etcd)->endpoints()},
                    {"storage.etcd.prefix", "/outage/"},
                    {"storage.etcd.request_timeout", "3s"},
                    {"server.id", "node0"},
                    {"cluster.name", "outage"}};
  auto dsrd = DsrdProcess::Start(options);
  ASSERT_TRUE(dsrd.ok()) << dsrd.status();
  auto stub = v1::Registry::NewStub(
      grpc::CreateChannel((*dsrd)->address(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    v1::ClusterInfo info;
    ASSERT_TRUE(stub->GetCluster(&ctx, v1::GetClusterRequest(), &info).ok());
  }

  (*etcd)->Kill9(0);
  // Many views at once, each reading etcd.
  constexpr int kViews = 24;
  struct View {
    grpc::ClientContext context;
    v1::ClusterInfo cluster;
    v1::ListServicesResponse services;
    v1::ConfigEntry config;
    v1::GetClusterRequest cluster_request;
    v1::ListServicesRequest services_request;
    v1::GetConfigRequest config_request;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<View>> views;
  absl::Mutex mu;
  int answered = 0;
  absl::Time sent = absl::Now();
  for (int i = 0; i < kViews; ++i) {
    auto view = std::make_unique<View>();
    View* v = view.get();
    v->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto done = [&mu, &answered, v](grpc::Status st) {
      absl::MutexLock lock(&mu);
      v->status = std::move(st);
      ++answered;
    };
    switch (i % 3) {
      case 0:
        stub->async()->GetCluster(&v->context, &v->cluster_request, &v->cluster, done);
        break;
      case 1:
        stub->async()->ListServices(&v->context, &v->services_request, &v->services, done);
        break;
      default:
        v->config_request.set_key("app.limit");
        stub->async()->GetConfig(&v->context, &v->config_request, &v->config, done);
        break;
    }
    views.push_back(std::move(view));
  }
  // Meanwhile calls that need no etcd answer at once.
  absl::SleepFor(absl::Milliseconds(200));
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    v1::PushSwitchState state;
    grpc::Status st = stub->GetPushSwitch(&ctx, v1::GetPushSwitchRequest(), &state);
    EXPECT_TRUE(st.ok()) << "while views wait for etcd: " << st.error_code() << " "
                         << st.error_message();
    grpc::ClientContext sessions_ctx;
    sessions_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    v1::ListSessionsResponse sessions;
    st = stub->ListSessions(&sessions_ctx, v1::ListSessionsRequest(), &sessions);
    EXPECT_TRUE(st.ok()) << "while views wait for etcd: " << st.error_code() << " "
                         << st.error_message();
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return answered == kViews; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30)))
        << answered << " of " << kViews << " views answered";
  }
  // Each waits for etcd at most request_timeout (views beyond the first few
  // fail at once once the node knows etcd is gone).
  EXPECT_LT(absl::Now() - sent, absl::Seconds(12));
  for (const auto& v : views) {
    EXPECT_EQ(v->status.error_code(), grpc::StatusCode::UNAVAILABLE) << v->status.error_message();
    EXPECT_THAT(v->status.error_message(), HasSubstr("etcd"));
  }
  // Once the node knows, a view fails at once, naming where etcd was.
  absl::Time start = absl::Now();
  grpc::ClientContext ctx;
  v1::ClusterInfo info;
  grpc::Status st = stub->GetCluster(&ctx, v1::GetClusterRequest(), &info);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(),
              HasSubstr("this registry node cannot reach etcd at " + (*etcd)->endpoints()));
}

}  // namespace
}  // namespace formica::registry::testing
