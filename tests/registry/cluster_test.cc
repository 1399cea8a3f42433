// Cluster mode end to end: three real etcd members and three dsrd nodes on
// loopback, real clients. Publish on one node, subscribe on another; kill -9
// a node and an etcd member; compare-and-set from two nodes at once.
#include <chrono>
#include <fstream>
#include <thread>

#include "etcd.h"
#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

using formica::testing::EtcdCluster;

constexpr int kNodes = 3;

bool Has(const ServiceSnapshot& s, const std::string& address) {
  return Addresses(s).count(address) > 0;
}

class ClusterTest : public ::testing::Test {
 protected:
  // The etcd endpoints node `i` is given (all members by default).
  virtual std::string EndpointsFor(int) { return etcd_->endpoints(); }

  void SetUp() override {
    auto etcd = EtcdCluster::Start(3);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    for (int i = 0; i < kNodes; ++i) {
      DsrdProcess::Options options;
      options.data_dir = dir_.File("dsrd" + std::to_string(i));
      options.config = {
          {"storage.engine", "etcd"},        {"storage.etcd.endpoints", EndpointsFor(i)},
          {"storage.etcd.prefix", "/test/"}, {"server.id", "node" + std::to_string(i)},
          {"cluster.name", "test-cluster"},  {"session.min_lease", "1s"},
          {"push.retry_interval", "300ms"}};
      auto node = DsrdProcess::Start(options);
      ASSERT_TRUE(node.ok()) << node.status();
      nodes_.push_back(std::move(*node));
    }
  }

  ClientOptions Options(const std::string& name, std::vector<int> nodes) {
    ClientOptions o;
    for (int n : nodes) o.registries.push_back(nodes_[n]->address());
    o.client_name = name;
    o.lease = absl::Seconds(3);
    o.backoff_initial = absl::Milliseconds(50);
    o.backoff_max = absl::Milliseconds(300);
    o.request_timeout = absl::Seconds(8);
    o.accept_empty_push = true;  // so a vanished provider would show
    return o;
  }
  std::unique_ptr<Client> NewClient(ClientOptions o) {
    auto client = Client::Create(std::move(o));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
  Recorder& NewRecorder() {
    recorders_.push_back(std::make_unique<Recorder>());
    return *recorders_.back();
  }
  static Instance MakeInstance(const std::string& service, const std::string& address) {
    Instance i;
    i.service = service;
    i.address = address;
    i.tags["color"] = "blue";
    return i;
  }

  // A subscriber to fund.Trade on `subscriber_node`, and a provider with
  // `provider_options` whose instance 10.0.0.1:9000 the subscriber has seen.
  struct Pair {
    Recorder* seen = nullptr;
    std::unique_ptr<Client> subscriber;
    std::unique_ptr<Client> provider;
  };
  void SubscribeAndPublish(int subscriber_node, ClientOptions provider_options, Pair* out) {
    out->seen = &NewRecorder();
    out->subscriber = NewClient(Options("sub", {subscriber_node}));
    ASSERT_TRUE(out->subscriber->Subscribe("fund.Trade", out->seen->Callback()).ok());
    out->provider = NewClient(std::move(provider_options));
    ASSERT_TRUE(out->provider->Publish(MakeInstance("fund.Trade", "10.0.0.1:9000")).ok());
    ASSERT_TRUE(out->seen->WaitFor([](const ServiceSnapshot& s) { return Has(s, "10.0.0.1:9000"); },
                                   absl::Seconds(10)));
  }

  TempDir dir_;
  std::unique_ptr<EtcdCluster> etcd_;
  std::vector<std::unique_ptr<DsrdProcess>> nodes_;
  std::vector<std::unique_ptr<Recorder>> recorders_;
};

TEST_F(ClusterTest, PublishOnOneNodeReachesSubscribersOnAnother) {
  // What the config watcher below writes to; declared first, so it outlives
  // the subscriber whose callback writes it.
  absl::Mutex mu;
  std::vector<ConfigValue> values;
  Pair pair;
  ASSERT_NO_FATAL_FAILURE(SubscribeAndPublish(1, Options("pub", {0}), &pair));
  Recorder& seen = *pair.seen;
  auto& provider = pair.provider;
  EXPECT_EQ(seen.Seen().back().instances[0].tags.at("color"), "blue");

  // A change and a withdrawal travel the same way, each under a newer version.
  Instance changed = MakeInstance("fund.Trade", "10.0.0.1:9000");
  changed.weight = 7;
  ASSERT_TRUE(provider->Publish(changed).ok());
  ASSERT_TRUE(seen.WaitFor(
      [](const ServiceSnapshot& s) {
        return s.instances.size() == 1 && s.instances[0].weight == 7;
      },
      absl::Seconds(10)));
  ASSERT_TRUE(provider->Unpublish("fund.Trade", "10.0.0.1:9000").ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.empty(); },
                           absl::Seconds(10)));
  std::vector<ServiceSnapshot> all = seen.Seen();
  for (size_t i = 1; i < all.size(); ++i) {
    EXPECT_GT(all[i].version, all[i - 1].version);
  }

  // Config written through node 2 reaches a watcher on node 1.
  ASSERT_TRUE(pair.subscriber
                  ->WatchConfig("fund/switch",
                                [&](const ConfigValue& v) {
                                  absl::MutexLock lock(&mu);
                                  values.push_back(v);
                                })
                  .ok());
  auto writer = NewClient(Options("writer", {2}));
  absl::StatusOr<ConfigValue> put = writer->PutConfig("fund/switch", "on");
  ASSERT_TRUE(put.ok()) << put.status();
  absl::MutexLock lock(&mu);
  auto arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return !values.empty() && values.back().value == "on";
  };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&arrived), absl::Seconds(10)));
  EXPECT_EQ(values.back().version, put->version);
}

TEST_F(ClusterTest, KilledNodesClientsMoveAndTheirProvidersNeverVanish) {
  Pair pair;
  ASSERT_NO_FATAL_FAILURE(SubscribeAndPublish(2, Options("pub", {0, 1, 2}), &pair));
  Recorder& seen = *pair.seen;
  auto& provider = pair.provider;
  ASSERT_EQ(provider->connected_registry(), nodes_[0]->address());
  uint64_t session = provider->session_id();
  size_t before = seen.Count();

  nodes_[0]->Kill9();
  // The provider moves to another node and resumes the same session there.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up &&
         (!provider->connected() || provider->connected_registry() == nodes_[0]->address())) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(provider->connected());
  EXPECT_NE(provider->connected_registry(), nodes_[0]->address());
  EXPECT_EQ(provider->session_id(), session);

  // Well past the lease (3 s): the session is renewed by its new node.
  absl::SleepFor(absl::Seconds(6));
  std::vector<ServiceSnapshot> all = seen.Seen();
  for (size_t i = before - 1; i < all.size(); ++i) {
    EXPECT_TRUE(Has(all[i], "10.0.0.1:9000"))
        << "the provider vanished at version " << all[i].version;
  }
  EXPECT_EQ(all.size(), before) << "a node's death must not even cause a push";

  // It still owns its instance: withdrawing it through the new node works.
  ASSERT_TRUE(provider->Unpublish("fund.Trade", "10.0.0.1:9000").ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.empty(); },
                           absl::Seconds(10)));
}

TEST_F(ClusterTest, ADeadProvidersSessionExpiresWithItsLease) {
  Recorder& seen = NewRecorder();
  auto subscriber = NewClient(Options("sub", {1}));
  ASSERT_TRUE(subscriber->Subscribe("fund.Trade", seen.Callback()).ok());
  auto keeper = NewClient(Options("keeper", {1}));
  ASSERT_TRUE(keeper->Publish(MakeInstance("fund.Trade", "10.0.0.2:9000")).ok());
  // A provider process on node 0; both it and its node die.
  auto agent = Subprocess::Start(
      {formica::testing::BinaryPath("tests/registry/registry_agent"), "--registry",
       nodes_[0]->address(), "--lease-ms", "2000", "fund.Trade=10.0.0.1:9000"},
      dir_.File("agent.log"));
  ASSERT_TRUE(agent.ok()) << agent.status();
  ASSERT_TRUE((*agent)->WaitForOutput("published", absl::Seconds(20))) << (*agent)->Output();
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return Has(s, "10.0.0.1:9000"); },
                           absl::Seconds(10)));
  absl::Time killed = absl::Now();
  (*agent)->Kill();
  nodes_[0]->Kill9();
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return !Has(s, "10.0.0.1:9000"); },
                           absl::Seconds(10)));
  absl::Duration gone_after = absl::Now() - killed;
  // Not before the lease (2 s, less the time since the last renewal), not
  // long after it.
  EXPECT_GE(gone_after, absl::Milliseconds(900));
  EXPECT_LE(gone_after, absl::Seconds(5));
  EXPECT_TRUE(Has(seen.Seen().back(), "10.0.0.2:9000"));
}

TEST_F(ClusterTest, TheRegistryKeepsServingWhenAnEtcdMemberDies) {
  Pair pair;
  ASSERT_NO_FATAL_FAILURE(SubscribeAndPublish(1, Options("pub", {0}), &pair));
  Recorder& seen = *pair.seen;
  auto& provider = pair.provider;
  // Member 0 is often the leader, and both dsrd nodes may be connected to it.
  etcd_->Kill9(0);
  ASSERT_TRUE(provider->Publish(MakeInstance("fund.Trade", "10.0.0.3:9000")).ok());
  ASSERT_TRUE(seen.WaitFor(
      [](const ServiceSnapshot& s) { return Has(s, "10.0.0.1:9000") && Has(s, "10.0.0.3:9000"); },
      absl::Seconds(15)));
  auto writer = NewClient(Options("writer", {2}));
  absl::StatusOr<ConfigValue> put = writer->PutConfig("after/failure", "ok");
  ASSERT_TRUE(put.ok()) << put.status();
  // Sessions live on past the lease: renewals reach the surviving members.
  absl::SleepFor(absl::Seconds(5));
  std::vector<ServiceSnapshot> all = seen.Seen();
  size_t first = 0;
  while (first < all.size() && !Has(all[first], "10.0.0.1:9000")) ++first;
  for (size_t i = first; i < all.size(); ++i) {
    EXPECT_TRUE(Has(all[i], "10.0.0.1:9000")) << "vanished at version " << all[i].version;
  }
  EXPECT_TRUE(provider->connected());
}

// Node 0 reaches etcd only through member 0: killing that member cuts the
// node off from etcd while the cluster lives on.
class PartitionedNodeTest : public ClusterTest {
 protected:
  std::string EndpointsFor(int i) override {
    return i == 0 ? etcd_->endpoint(0) : etcd_->endpoint(1) + "," + etcd_->endpoint(2);
  }
};

TEST_F(PartitionedNodeTest, ANodeCutOffFromEtcdSendsItsClientsElsewhereBeforeTheirLeasesLapse) {
  // The node notices after 2 s without an answer from etcd; the lease must
  // outlast that and the move (the default lease is 10 s).
  ClientOptions options = Options("pub", {0, 1});
  options.lease = absl::Seconds(6);
  Pair pair;
  ASSERT_NO_FATAL_FAILURE(SubscribeAndPublish(2, options, &pair));
  Recorder& seen = *pair.seen;
  auto& provider = pair.provider;
  ASSERT_EQ(provider->connected_registry(), nodes_[0]->address());
  uint64_t session = provider->session_id();
  size_t before = seen.Count();

  etcd_->Kill9(0);
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up &&
         (!provider->connected() || provider->connected_registry() != nodes_[1]->address())) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(provider->connected_registry(), nodes_[1]->address());
  EXPECT_EQ(provider->session_id(), session);
  // Past the 6 s lease: renewed by node 1, never lapsed.
  absl::SleepFor(absl::Seconds(7));
  std::vector<ServiceSnapshot> all = seen.Seen();
  for (size_t i = before - 1; i < all.size(); ++i) {
    EXPECT_TRUE(Has(all[i], "10.0.0.1:9000")) << "vanished at version " << all[i].version;
  }
  // Node 0 refuses sessions while it cannot reach etcd.
  auto late = NewClient(Options("late", {0}));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_FALSE(late->connected());
}

// A node cut off from etcd can no longer renew leases, so it must not tell
// its clients their sessions live on: a heartbeat is acknowledged only once
// etcd renewed the lease. The client's own lease (what ldc::Router trusts)
// so never reaches past a lease after the cut, though the node notices the
// cut only 2 s later.
TEST_F(PartitionedNodeTest, AHeartbeatIsAcknowledgedOnlyOnceEtcdRenewedTheLease) {
  ClientOptions options = Options("pinned", {0});
  options.lease = absl::Seconds(3);
  auto client = NewClient(options);
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 500 && !client->connected(); ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(client->connected());
  // Heartbeats go every lease/3: wait for acks to be flowing.
  absl::SleepFor(absl::Seconds(2));
  const auto lease_at_cut = client->session().lease_valid_until;
  ASSERT_GT(lease_at_cut, std::chrono::steady_clock::now());

  const auto cut = std::chrono::steady_clock::now();
  etcd_->Kill9(0);
  // The client's session lease, as it grows while node 0 still answers.
  auto latest = lease_at_cut;
  for (int i = 0; i < 200; ++i) {  // 4 s: past the node's 2 s to notice
    Client::SessionView view = client->session();
    if (view.connected) latest = std::max(latest, view.lease_valid_until);
    absl::SleepFor(absl::Milliseconds(20));
  }
  // A heartbeat sent after the cut extends nothing: the newest answered one
  // was sent before it, so the lease ends within 0.9 x 3 s of the cut.
  const auto bound = cut + std::chrono::milliseconds(2700);
  EXPECT_LE(latest, bound)
      << "the lease was extended "
      << std::chrono::duration_cast<std::chrono::milliseconds>(latest - bound).count()
      << " ms past a lease after the cut";
}

TEST_F(ClusterTest, ConcurrentCompareAndSetFromTwoNodesHasExactlyOneWinner) {
  auto a = NewClient(Options("a", {0}));
  auto b = NewClient(Options("b", {1}));
  absl::StatusOr<ConfigValue> created = a->PutConfig("fund/limit", "0", 0);
  ASSERT_TRUE(created.ok()) << created.status();
  // Creating again with "must not exist" loses.
  absl::StatusOr<ConfigValue> again = b->PutConfig("fund/limit", "x", 0);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  uint64_t version = created->version;
  for (int round = 0; round < 20; ++round) {
    absl::StatusOr<ConfigValue> ra;
    absl::StatusOr<ConfigValue> rb;
    std::thread ta([&] { ra = a->PutConfig("fund/limit", "a" + std::to_string(round), version); });
    std::thread tb([&] { rb = b->PutConfig("fund/limit", "b" + std::to_string(round), version); });
    ta.join();
    tb.join();
    ASSERT_NE(ra.ok(), rb.ok()) << "round " << round << ": " << ra.status() << " / " << rb.status();
    const absl::StatusOr<ConfigValue>& winner = ra.ok() ? ra : rb;
    const absl::StatusOr<ConfigValue>& loser = ra.ok() ? rb : ra;
    EXPECT_EQ(loser.status().code(), absl::StatusCode::kFailedPrecondition) << loser.status();
    EXPECT_GT(winner->version, version);
    absl::StatusOr<ConfigValue> now = (round % 2 == 0 ? a : b)->GetConfig("fund/limit");
    ASSERT_TRUE(now.ok()) << now.status();
    EXPECT_EQ(now->value, winner->value);
    EXPECT_EQ(now->version, winner->version);
    version = winner->version;
  }
  // A delete guarded by a stale version changes nothing.
  EXPECT_EQ(a->DeleteConfig("fund/limit", version - 1).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(b->DeleteConfig("fund/limit", version).ok());
  EXPECT_EQ(a->GetConfig("fund/limit").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClusterTest, FormicactlShowsTheClusterFromAnyNode) {
  std::string log = dir_.File("ctl.log");
  auto ctl = Subprocess::Start({formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                nodes_[2]->address(), "cluster", "members"},
                               log);
  ASSERT_TRUE(ctl.ok()) << ctl.status();
  ASSERT_EQ((*ctl)->Wait(absl::Seconds(20)), 0) << (*ctl)->Output();
  std::string out = (*ctl)->Output();
  EXPECT_THAT(out, ::testing::HasSubstr("test-cluster"));
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_THAT(out, ::testing::HasSubstr("node" + std::to_string(i)));
    EXPECT_THAT(out, ::testing::HasSubstr(nodes_[i]->address()));
    EXPECT_THAT(out, ::testing::HasSubstr(etcd_->endpoint(i)));
  }
  EXPECT_THAT(out, ::testing::HasSubstr("leader"));
}

TEST(ClusterConfigTest, BadClusterSettingsStopStartUpWithAClearError) {
  TempDir dir;
  struct Case {
    std::map<std::string, std::string> config;
    std::string message;
  };
  std::vector<Case> cases = {
      {{{"storage.engine", "etcd"}}, "storage.etcd.endpoints"},
      {{{"storage.engine", "zookeeper"}}, "storage.engine"},
      {{{"storage.engine", "etcd"},
        {"storage.etcd.endpoints", "127.0.0.1:1"},
        {"storage.etcd.prefix", "no-slash"}},
       "storage.etcd.prefix"},
      {{{"storage.engine", "etcd"},
        {"storage.etcd.endpoints", "127.0.0.1:" + std::to_string(formica::testing::PickFreePort())},
        {"storage.etcd.dial_timeout", "500ms"}},
       "did not answer"},
  };
  int n = 0;
  for (const Case& c : cases) {
    std::string config = dir.File("bad" + std::to_string(++n) + ".yaml");
    {
      std::ofstream out(config);
      out << "storage:\n";
      for (const auto& [k, v] : c.config) {
        std::string key = k.substr(std::string("storage.").size());
        if (key.rfind("etcd.", 0) == 0) {
          continue;
        }
        out << "  " << key << ": \"" << v << "\"\n";
      }
      bool section = false;
      for (const auto& [k, v] : c.config) {
        std::string key = k.substr(std::string("storage.").size());
        if (key.rfind("etcd.", 0) == 0) {
          if (!section) out << "  etcd:\n";
          section = true;
          out << "    " << key.substr(5) << ": \"" << v << "\"\n";
        }
      }
    }
    auto dsrd = Subprocess::Start(
        {formica::testing::BinaryPath("registry/dsrd"), "--config", config, "--listen",
         "127.0.0.1:" + std::to_string(formica::testing::PickFreePort())},
        dir.File("dsrd" + std::to_string(n) + ".log"));
    ASSERT_TRUE(dsrd.ok());
    EXPECT_NE((*dsrd)->Wait(absl::Seconds(20)), 0);
    EXPECT_THAT((*dsrd)->Output(), ::testing::HasSubstr(c.message)) << "case " << n;
  }
}

}  // namespace
}  // namespace formica::registry::testing
