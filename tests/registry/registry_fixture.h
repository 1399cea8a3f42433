// Shared fixture for registry tests: a real dsrd process, real clients, and
// a recorder of what a subscriber saw.
#pragma once

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "formica/registry/client.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "process.h"

namespace formica::registry::testing {

using formica::testing::DsrdProcess;
using formica::testing::Subprocess;
using formica::testing::TempDir;

// Every snapshot a subscription delivered, in order. Thread-safe.
class Recorder {
 public:
  Client::SnapshotCallback Callback() {
    return [this](const ServiceSnapshot& s) {
      absl::MutexLock lock(&mu_);
      seen_.push_back(s);
    };
  }
  std::vector<ServiceSnapshot> Seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  size_t Count() const {
    absl::MutexLock lock(&mu_);
    return seen_.size();
  }
  // Waits until the newest snapshot satisfies `pred`.
  bool WaitFor(const std::function<bool(const ServiceSnapshot&)>& pred, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !seen_.empty() && pred(seen_.back());
    };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  bool WaitForCount(size_t n, absl::Duration timeout) {
    return WaitFor([](const ServiceSnapshot&) { return true; }, timeout) && [&] {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return seen_.size() >= n; };
      return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    }();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<ServiceSnapshot> seen_ ABSL_GUARDED_BY(mu_);
};

inline std::set<std::string> Addresses(const ServiceSnapshot& s) {
  std::set<std::string> out;
  for (const auto& i : s.instances) {
    out.insert(i.address);
  }
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  // Short leases so that tests run in seconds.
  virtual std::map<std::string, std::string> DsrdConfig() {
    return {{"session.lease", "2s"}, {"push.warmup", "0s"}, {"push.retry_interval", "300ms"}};
  }

  void SetUp() override {
    DsrdProcess::Options options;
    options.data_dir = dir_.File("dsrd");
    options.config = DsrdConfig();
    auto dsrd = DsrdProcess::Start(options);
    ASSERT_TRUE(dsrd.ok()) << dsrd.status();
    dsrd_ = std::move(*dsrd);
  }

  ClientOptions Options(const std::string& name = "test") {
    ClientOptions o;
    o.registries = {dsrd_->address()};
    o.client_name = name;
    o.lease = absl::Seconds(2);
    o.backoff_initial = absl::Milliseconds(50);
    o.backoff_max = absl::Milliseconds(300);
    o.request_timeout = absl::Seconds(5);
    return o;
  }

  std::unique_ptr<Client> NewClient(const std::string& name = "test") {
    return NewClient(Options(name));
  }
  std::unique_ptr<Client> NewClient(ClientOptions o) {
    auto client = Client::Create(std::move(o));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  std::unique_ptr<v1::Registry::Stub> Stub() {
    return v1::Registry::NewStub(
        grpc::CreateChannel(dsrd_->address(), grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<Subprocess> StartAgent(const std::vector<std::string>& publications,
                                         int lease_ms = 2000) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tests/registry/registry_agent"),
                                     "--registry", dsrd_->address(), "--lease-ms",
                                     std::to_string(lease_ms)};
    argv.insert(argv.end(), publications.begin(), publications.end());
    auto p = Subprocess::Start(argv, dir_.File("agent." + std::to_string(++agents_) + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) {
      return nullptr;
    }
    EXPECT_TRUE((*p)->WaitForOutput("published", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  static Instance MakeInstance(const std::string& service, const std::string& address) {
    Instance i;
    i.service = service;
    i.address = address;
    return i;
  }

  // A recorder that outlives every client of the test (clients are test-body
  // locals, destroyed first), so no callback can reach a destroyed one.
  Recorder& NewRecorder() {
    recorders_.push_back(std::make_unique<Recorder>());
    return *recorders_.back();
  }

  TempDir dir_;
  std::unique_ptr<DsrdProcess> dsrd_;
  std::vector<std::unique_ptr<Recorder>> recorders_;
  int agents_ = 0;
};

// A raw session stream, for tests that must act as a misbehaving client.
class RawSession {
 public:
  explicit RawSession(const std::string& address)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        stub_(v1::Registry::NewStub(channel_)),
        stream_(stub_->Session(&context_)) {}
  ~RawSession() {
    if (!finished_) {
      context_.TryCancel();
      stream_->Finish();
    }
  }
  bool Write(const v1::ClientMessage& m) { return stream_->Write(m); }
  bool Read(v1::ServerMessage* m) { return stream_->Read(m); }
  uint64_t Open(uint64_t resume = 0) {
    v1::ClientMessage m;
    m.mutable_open()->set_client_name("raw");
    m.mutable_open()->set_lease_ms(5000);
    m.mutable_open()->set_resume_session_id(resume);
    if (!Write(m)) return 0;
    v1::ServerMessage reply;
    if (!Read(&reply) || !reply.has_opened()) return 0;
    return reply.opened().session_id();
  }
  // Reads messages until one satisfies `pred`; skips heartbeats and others.
  bool ReadUntil(const std::function<bool(const v1::ServerMessage&)>& pred,
                 v1::ServerMessage* out) {
    while (Read(out)) {
      if (pred(*out)) return true;
    }
    return false;
  }
  grpc::Status Finish() {
    finished_ = true;
    return stream_->Finish();
  }
  grpc::ClientContext& context() { return context_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>> stream_;
  bool finished_ = false;
};

}  // namespace formica::registry::testing
