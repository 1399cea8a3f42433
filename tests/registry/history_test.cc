// A randomized history check: providers join, leave and crash, subscribers
// reconnect, the registry restarts (cleanly and with kill -9). For every
// subscriber: versions never go backwards, it ends at the registry's latest
// version with the live provider set, and it never saw a list without the
// provider that stayed alive the whole time. And one version always names
// one provider set, whoever received it.
#include <random>

#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

class HistoryTest : public RegistryTest {
  std::map<std::string, std::string> DsrdConfig() override {
    return {{"session.lease", "1500ms"}, {"push.retry_interval", "300ms"}};
  }
};

TEST_F(HistoryTest, RandomizedRunKeepsEverySubscriberConsistent) {
  const std::string kService = "hist.Svc";
  const std::string kStable = "127.0.0.1:6000";
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());

  auto client_options = [&](const std::string& name) {
    ClientOptions o = Options(name);
    o.lease = absl::Milliseconds(1500);
    o.backoff_max = absl::Milliseconds(300);
    o.accept_empty_push = true;  // so the check below can see an empty push
    o.reconcile_interval = absl::Seconds(2);
    return o;
  };

  auto stable = StartAgent({kService + "=" + kStable}, 1500);
  ASSERT_NE(stable, nullptr);

  constexpr int kSubscribers = 4;
  std::vector<std::unique_ptr<Recorder>> recorders;  // outlive the clients that call them
  std::vector<std::unique_ptr<Client>> subscribers;
  for (int i = 0; i < kSubscribers; ++i) {
    subscribers.push_back(NewClient(client_options("sub" + std::to_string(i))));
    recorders.push_back(std::make_unique<Recorder>());
    ASSERT_TRUE(subscribers.back()->Subscribe(kService, recorders.back()->Callback()).ok());
  }
  for (auto& r : recorders) {
    ASSERT_TRUE(r->WaitFor([&](const ServiceSnapshot& s) { return Addresses(s).count(kStable); },
                           absl::Seconds(10)));
  }

  std::set<std::string> ever;  // every address ever published
  ever.insert(kStable);
  std::map<std::string, std::unique_ptr<Subprocess>> agents;  // address -> process
  std::map<std::string, std::unique_ptr<Client>> in_process;  // address -> its own client
  int next_port = 6001;
  constexpr int kSteps = 60;
  for (int step = 0; step < kSteps; ++step) {
    if (step == 25) {
      ASSERT_TRUE(dsrd_->Restart().ok());  // SIGTERM, then start again
    } else if (step == 45) {
      dsrd_->Kill9();
      ASSERT_TRUE(dsrd_->Restart().ok());
    }
    switch (rng() % 6) {
      case 0:
        if (agents.size() < 3) {
          std::string address = "127.0.0.1:" + std::to_string(next_port++);
          ever.insert(address);
          agents[address] = StartAgent({kService + "=" + address}, 1500);
        }
        break;
      case 1:
        if (!agents.empty()) {
          auto it = std::next(agents.begin(), rng() % agents.size());
          it->second->Kill();  // crash
          agents.erase(it);
        }
        break;
      case 2:
        if (in_process.size() < 3) {
          std::string address = "127.0.0.1:" + std::to_string(next_port++);
          ever.insert(address);
          auto c = NewClient(client_options("prov" + address));
          Instance inst = MakeInstance(kService, address);
          // The registry may be restarting: the client keeps it queued.
          (void)c->Publish(inst);
          in_process[address] = std::move(c);
        }
        break;
      case 3:
        if (!in_process.empty()) {
          auto it = std::next(in_process.begin(), rng() % in_process.size());
          in_process.erase(it);  // clean close
        }
        break;
      case 4:
        subscribers[rng() % kSubscribers]->DropConnectionForTesting();
        break;
      default:
        break;
    }
    absl::SleepFor(absl::Milliseconds(50 + rng() % 100));
  }

  std::set<std::string> live;
  live.insert(kStable);
  for (const auto& [address, p] : agents) live.insert(address);
  for (const auto& [address, c] : in_process) live.insert(address);

  // Quiesce: crashed providers' leases lapse, every subscriber converges.
  auto stub = Stub();
  uint64_t latest = 0;
  bool converged = false;
  for (int i = 0; i < 200 && !converged; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    grpc::ClientContext ctx;
    v1::GetServiceRequest req;
    req.set_service(kService);
    v1::ServiceSnapshot now;
    if (!stub->GetService(&ctx, req, &now).ok()) continue;
    std::set<std::string> at_registry;
    for (const auto& inst : now.instances()) at_registry.insert(inst.address());
    if (at_registry != live) continue;
    latest = now.version();
    converged = true;
    for (auto& r : recorders) {
      auto seen = r->Seen();
      converged = converged && !seen.empty() && seen.back().version == latest &&
                  Addresses(seen.back()) == live;
    }
  }
  ASSERT_TRUE(converged) << "subscribers did not converge on the live set";

  std::map<uint64_t, std::set<std::string>> content_of;  // a version names one provider set
  for (int i = 0; i < kSubscribers; ++i) {
    std::vector<ServiceSnapshot> seen = recorders[i]->Seen();
    for (const ServiceSnapshot& snap : seen) {
      auto [it, first] = content_of.emplace(snap.version, Addresses(snap));
      EXPECT_TRUE(first || it->second == Addresses(snap))
          << "version " << snap.version << " carried two different provider sets";
    }
    SCOPED_TRACE("subscriber " + std::to_string(i));
    for (size_t k = 0; k < seen.size(); ++k) {
      if (k > 0) {
        EXPECT_GT(seen[k].version, seen[k - 1].version) << "push " << k;
      }
      EXPECT_FALSE(seen[k].instances.empty()) << "empty push " << k;
      EXPECT_TRUE(Addresses(seen[k]).count(kStable)) << "push " << k << " lost the live provider";
      for (const std::string& a : Addresses(seen[k])) {
        EXPECT_TRUE(ever.count(a)) << "unknown address " << a;
      }
    }
    EXPECT_EQ(seen.back().version, latest);
  }
}

}  // namespace
}  // namespace formica::registry::testing
