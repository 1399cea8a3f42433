// An initiator process for DTS tests: THREADS threads run business
// activities, each a debit in one bank and a credit in the other of 1..50
// (either way), and
// commit them (as dts::RunActivity does). After each commit it prints
// "committed <activity id>" (flushed), so a test that kills it with
// SIGKILL knows which activities it was told were committed.
//   transfer_client --registry H:P [--threads N] [--accounts N] [--timeout-ms MS]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "formica/common/tls.h"
#include "formica/dts/activity.h"
#include "formica/internal/daemon.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/account.grpc.pb.h"

namespace {

absl::Status Move(formica::rpc::Client& client, const std::string& bank, bool debit, int account,
                  int64_t amount) {
  formica::test::Move m;
  m.set_account(std::to_string(account));
  m.set_amount(amount);
  formica::test::Moved out;
  return client.Call(bank, {},
                     [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                       auto stub = formica::test::Account::NewStub(ch);
                       return debit ? stub->Debit(ctx, m, &out) : stub->Credit(ctx, m, &out);
                     });
}

}  // namespace

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "transfer_client: %s\n", st.ToString().c_str());
    return 2;
  }
  formica::registry::ClientOptions registry_options;
  registry_options.client_name = "transfer_client";
  int threads = 8;
  int accounts = 10;
  int timeout_ms = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::string value = argv[i + 1];
    if (flag == "--registry") {
      registry_options.registries.push_back(value);
    } else if (flag == "--threads") {
      threads = std::atoi(value.c_str());
    } else if (flag == "--accounts") {
      accounts = std::atoi(value.c_str());
    } else if (flag == "--timeout-ms") {
      timeout_ms = std::atoi(value.c_str());
    } else {
      std::fprintf(stderr, "transfer_client: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  auto registry = formica::registry::Client::Create(registry_options);
  if (!registry.ok()) {
    std::fprintf(stderr, "transfer_client: %s\n", registry.status().ToString().c_str());
    return 2;
  }
  formica::rpc::ClientOptions client_options;
  client_options.app_name = "transfer_client";
  auto rpc = formica::rpc::Client::Create(client_options, registry->get());
  if (!rpc.ok()) {
    std::fprintf(stderr, "transfer_client: %s\n", rpc.status().ToString().c_str());
    return 2;
  }
  std::printf("running\n");
  std::fflush(stdout);
  absl::Mutex out_mu;
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(std::random_device{}() + t);
      while (!stop.load()) {
        formica::dts::ActivityOptions options;
        options.name = "bank.Transfer";
        options.initiator = "transfer_client";
        options.timeout = absl::Milliseconds(timeout_ms);
        auto activity = formica::dts::Activity::Begin(rpc->get(), options);
        if (!activity.ok()) continue;
        int from = static_cast<int>(rng() % accounts);
        int to = static_cast<int>(rng() % accounts);
        int64_t amount = 1 + static_cast<int64_t>(rng() % 50);
        // Both ways, so that money keeps circulating.
        bool a_to_b = rng() % 2 == 0;
        absl::Status st = (*activity)->Run([&] {
          absl::Status s = Move(**rpc, a_to_b ? "bank.a" : "bank.b", true, from, amount);
          return s.ok() ? Move(**rpc, a_to_b ? "bank.b" : "bank.a", false, to, amount) : s;
        });
        if (!st.ok()) {
          (*activity)->Rollback(st.ToString()).IgnoreError();
          absl::SleepFor(absl::Milliseconds(5));  // an account short of money: try another
          continue;
        }
        if ((*activity)->Commit().ok()) {
          absl::MutexLock lock(&out_mu);
          std::printf("committed %s\n", (*activity)->id().c_str());
          std::fflush(stdout);
        }
      }
    });
  }
  formica::WaitForTerminationSignal();
  stop = true;
  for (auto& w : workers) w.join();
  return 0;
}
