// Fixture for the traffic commands: echo providers tagged by color, a caller
// under steady load that records who served each call, and formicactl run
// as an operator runs it.
#pragma once

#include <atomic>
#include <thread>

#include "absl/strings/str_split.h"
#include "echo_fixture.h"
#include "formica/rpc/routes.h"

namespace formica::rpc::testing {

// One call of the load: when it ended, who served it, and how it ended.
struct LoadCall {
  absl::Time at;
  std::string served_by;  // empty when it failed
  absl::StatusCode code;
};

class TrafficTest : public EchoTest {
 protected:
  void TearDown() override {
    StopLoad();
    EchoTest::TearDown();
  }

  // Runs formicactl with `args` and waits for it; its exit code. `output`
  // gets what it printed.
  int Ctl(const std::vector<std::string>& args, std::string* output = nullptr,
          absl::Duration timeout = absl::Seconds(60)) {
    auto p = StartCtl(args);
    if (p == nullptr) return -1;
    int code = p->Wait(timeout);
    if (output != nullptr) *output = p->Output();
    return code;
  }

  std::unique_ptr<Subprocess> StartCtl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                     dsrd_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File("ctl" + std::to_string(++ctls_) + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // The route of the echo service in the registry ("" when none).
  std::string Route(uint64_t* version = nullptr) {
    auto entry = registry_->GetConfig(std::string("rpc/routes/") + kEcho);
    if (absl::IsNotFound(entry.status())) {
      if (version != nullptr) *version = 0;
      return "";
    }
    EXPECT_TRUE(entry.ok()) << entry.status();
    if (version != nullptr) *version = entry.ok() ? entry->version : 0;
    return entry.ok() && entry->exists ? entry->value : "";
  }

  // Calls the echo service from two threads until StopLoad, about every
  // `pause`, recording each call.
  void StartLoad(absl::Duration pause = absl::Milliseconds(2)) {
    load_client_ = NewRpcClient();
    for (int t = 0; t < 2; ++t) {
      load_threads_.emplace_back([this, pause] {
        while (!stop_load_.load()) {
          auto r = Echo(*load_client_);
          LoadCall call{absl::Now(), r.ok() ? r->served_by() : "", r.status().code()};
          {
            absl::MutexLock lock(&load_mu_);
            load_.push_back(std::move(call));
          }
          absl::SleepFor(pause);
        }
      });
    }
  }
  void StopLoad() {
    stop_load_ = true;
    for (auto& t : load_threads_) t.join();
    load_threads_.clear();
  }
  std::vector<LoadCall> Load() {
    absl::MutexLock lock(&load_mu_);
    return load_;
  }

  int ctls_ = 0;
  std::unique_ptr<Client> load_client_;
  std::vector<std::thread> load_threads_;
  std::atomic<bool> stop_load_{false};
  absl::Mutex load_mu_;
  std::vector<LoadCall> load_ ABSL_GUARDED_BY(load_mu_);
};

}  // namespace formica::rpc::testing
