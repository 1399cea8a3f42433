// bench/registry: publish throughput, push fan-out to M subscribers and
// memory per session of dsrd, beside etcd's watch fan-out measured in the
// same run on the same machine. Last line: one JSON object.
//
//   ./formica bench registry [--quick]
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench_report.h"
#include "etcd.h"
#include "etcd_fanout.h"
#include "formica/registry/client.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "process.h"

namespace formica::bench {
namespace {

using registry::Client;
using registry::ClientOptions;
using registry::Instance;
using registry::ServiceSnapshot;

int64_t RssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::atoll(line.c_str() + 6) * 1024;
    }
  }
  return 0;
}

ClientOptions Options(const std::string& registry, const std::string& name) {
  ClientOptions o;
  o.registries = {registry};
  o.client_name = name;
  o.request_timeout = absl::Seconds(30);
  return o;
}

// Publishers each publish `per_publisher` instances, one after another,
// each waiting for the registry's confirmation.
// Publisher p talks to registries[p % size].
double MeasurePublish(const std::vector<std::string>& registries, int publishers,
                      int per_publisher) {
  std::vector<std::unique_ptr<Client>> clients;
  for (int p = 0; p < publishers; ++p) {
    clients.push_back(
        *Client::Create(Options(registries[p % registries.size()], absl::StrCat("pub", p))));
  }
  // Warm the connections first.
  for (int p = 0; p < publishers; ++p) {
    Instance i;
    i.service = "bench.Warm";
    i.address = absl::StrCat("10.1.0.", p, ":1");
    (void)clients[p]->Publish(i);
  }
  std::atomic<int> failures{0};
  absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      for (int k = 0; k < per_publisher; ++k) {
        Instance i;
        i.service = absl::StrCat("bench.Publish", k % 50);
        i.address = absl::StrCat("10.2.", p, ".", k / 250, ":", 1000 + k % 250);
        i.tags = {{"version", "1.0"}, {"color", "blue"}};
        if (!clients[p]->Publish(i).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (failures > 0) {
    std::fprintf(stderr, "publish: %d failures\n", failures.load());
  }
  return publishers * per_publisher / seconds;
}

namespace v1 = formica::registry::v1;

// Counts, per round, when each subscriber saw the round's change.
struct RoundClock {
  absl::Mutex mu;
  int target_weight ABSL_GUARDED_BY(mu) = 0;
  absl::Time start ABSL_GUARDED_BY(mu);
  int seen ABSL_GUARDED_BY(mu) = 0;
  std::vector<double> samples ABSL_GUARDED_BY(mu);

  void Saw(int weight, absl::Time now) {
    absl::MutexLock lock(&mu);
    if (weight == target_weight && target_weight > 1) {
      samples.push_back(absl::ToDoubleMilliseconds(now - start));
      ++seen;
    }
  }
};

// A subscriber speaking the session protocol directly on gRPC's callback
// API, as the etcd watchers of the comparison do: it measures the registry's
// fan-out, not the cost of a thousand client libraries sharing two cores.
// Acknowledges every push, as the real client does.
class RawSubscriber : public grpc::ClientBidiReactor<v1::ClientMessage, v1::ServerMessage> {
 public:
  RawSubscriber(const std::string& registry, const std::string& service, RoundClock* clock)
      : clock_(clock) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channel_ = grpc::CreateCustomChannel(registry, grpc::InsecureChannelCredentials(), args);
    stub_ = v1::Registry::NewStub(channel_);
    stub_->async()->Session(&context_, this);
    v1::ClientMessage open;
    open.mutable_open()->set_client_name("raw-subscriber");
    open.mutable_open()->set_lease_ms(300000);  // no heartbeats needed during the run
    v1::ClientMessage subscribe;
    subscribe.mutable_subscribe()->set_service(service);
    outbox_.push_back(open);
    outbox_.push_back(subscribe);
    writing_ = true;
    StartWrite(&outbox_.front());
    StartRead(&in_);
    StartCall();
  }
  ~RawSubscriber() override {
    context_.TryCancel();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }
  bool WaitForFirstSnapshot(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&has_snapshot_), timeout);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (in_.has_service()) {
      absl::Time now = absl::Now();
      if (in_.service().instances_size() > 0) {
        clock_->Saw(in_.service().instances(0).weight(), now);
      }
      v1::ClientMessage ack;
      ack.mutable_ack()->set_service(in_.service().service());
      ack.mutable_ack()->set_version(in_.service().version());
      absl::MutexLock lock(&mu_);
      has_snapshot_ = true;
      outbox_.push_back(std::move(ack));
      if (!writing_) {
        writing_ = true;
        StartWrite(&outbox_.front());
      }
    }
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    outbox_.pop_front();
    writing_ = false;
    if (ok && !outbox_.empty()) {
      writing_ = true;
      StartWrite(&outbox_.front());
    }
  }
  void OnDone(const grpc::Status&) override {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

 private:
  RoundClock* clock_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  grpc::ClientContext context_;
  v1::ServerMessage in_;
  absl::Mutex mu_;
  std::deque<v1::ClientMessage> outbox_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool has_snapshot_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// Runs `rounds` changes of one provider's weight and waits, each time, for
// every subscriber to see it.
std::vector<double> RunRounds(Client* provider, Instance inst, RoundClock* clock, int subscribers,
                              int rounds) {
  for (int r = 2; r < rounds + 2; ++r) {
    absl::SleepFor(absl::Milliseconds(100));  // quiet, past the merge window
    {
      absl::MutexLock lock(&clock->mu);
      clock->target_weight = r;
      clock->seen = 0;
      clock->start = absl::Now();
    }
    inst.weight = r;
    (void)provider->Publish(inst);
    absl::MutexLock lock(&clock->mu);
    auto all = [&]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(clock->mu) { return clock->seen >= subscribers; };
    if (!clock->mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30))) {
      std::fprintf(stderr, "fan-out round %d: only %d of %d subscribers saw the change\n", r,
                   clock->seen, subscribers);
    }
  }
  absl::MutexLock lock(&clock->mu);
  return clock->samples;
}

struct FanoutRun {
  std::vector<double> samples_ms;
  int64_t bytes_per_session = 0;
};

// M subscribers, each on its own connection; one provider changes its weight
// each round; the time from the change until each subscriber sees it. With
// `library`, subscribers are full formica::registry::Client objects (their
// callbacks); otherwise RawSubscriber streams.
// Subscriber s talks to registries[s % size]; the provider to the first.
FanoutRun MeasureFanout(const std::vector<std::string>& registries, pid_t dsrd_pid, int subscribers,
                        int rounds, bool library) {
  const std::string service = absl::StrCat("bench.Fanout", subscribers, library ? "lib" : "raw");
  const std::string& registry = registries[0];
  auto provider = *Client::Create(Options(registry, "fan-provider"));
  Instance inst;
  inst.service = service;
  inst.address = "10.3.0.1:9000";
  inst.weight = 1;
  (void)provider->Publish(inst);

  RoundClock clock;
  int64_t rss_before = RssBytes(dsrd_pid);
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::unique_ptr<RawSubscriber>> raws;
  for (int s = 0; s < subscribers; ++s) {
    const std::string& node = registries[s % registries.size()];
    if (library) {
      clients.push_back(*Client::Create(Options(node, absl::StrCat("sub", s))));
      (void)clients.back()->Subscribe(service, [&clock](const ServiceSnapshot& snap) {
        absl::Time now = absl::Now();
        if (!snap.instances.empty()) clock.Saw(snap.instances[0].weight, now);
      });
    } else {
      raws.push_back(std::make_unique<RawSubscriber>(node, service, &clock));
    }
  }
  for (auto& c : clients) (void)c->AwaitSnapshot(service, absl::Seconds(60));
  for (auto& r : raws) r->WaitForFirstSnapshot(absl::Seconds(60));
  absl::SleepFor(absl::Milliseconds(500));
  FanoutRun run;
  run.bytes_per_session = (RssBytes(dsrd_pid) - rss_before) / subscribers;
  run.samples_ms = RunRounds(provider.get(), inst, &clock, subscribers, rounds);
  return run;
}

// One embedded dsrd (RocksDB store, no warm-up) under `dir`.
absl::StatusOr<std::unique_ptr<formica::testing::DsrdProcess>> StartEmbedded(
    const formica::testing::TempDir& dir, const std::string& name) {
  formica::testing::DsrdProcess::Options options;
  options.data_dir = dir.File(name);
  options.config = {{"push.warmup", "0s"}};
  return formica::testing::DsrdProcess::Start(options);
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "bench_registry: %s\n", status.ToString().c_str());
  return 1;
}

// --cluster: three dsrd nodes in cluster mode on three etcd members against
// one embedded dsrd, in the same run; each measured twice, interleaved.
int RunCluster(bool quick) {
  const int rounds = quick ? 5 : 20;
  const int publishers = 16;
  const int per_publisher = quick ? 200 : 1000;
  formica::testing::TempDir dir;

  auto embedded = StartEmbedded(dir, "embedded");
  if (!embedded.ok()) {
    return Fail(embedded.status());
  }
  auto etcd = formica::testing::EtcdCluster::Start(3);
  if (!etcd.ok()) {
    return Fail(etcd.status());
  }
  std::vector<std::unique_ptr<formica::testing::DsrdProcess>> nodes;
  std::vector<std::string> cluster;
  for (int i = 0; i < 3; ++i) {
    formica::testing::DsrdProcess::Options o;
    o.data_dir = dir.File(absl::StrCat("node", i));
    o.config = {{"storage.engine", "etcd"},
                {"storage.etcd.endpoints", (*etcd)->endpoints()},
                {"server.id", absl::StrCat("node", i)}};
    auto node = formica::testing::DsrdProcess::Start(o);
    if (!node.ok()) {
      return Fail(node.status());
    }
    cluster.push_back((*node)->address());
    nodes.push_back(std::move(*node));
  }
  const std::vector<std::string> single = {(*embedded)->address()};
  const pid_t embedded_pid = (*embedded)->process()->pid();
  const pid_t node0_pid = nodes[0]->process()->pid();
  std::printf("embedded dsrd on %s; cluster: 3 dsrd nodes on 3 etcd members (%s)\n",
              single[0].c_str(), (*etcd)->endpoints().c_str());

  std::vector<double> embedded_publish;
  std::vector<double> cluster_publish;
  std::vector<double> etcd_puts;
  std::vector<double> embedded_fanout;
  std::vector<double> cluster_fanout;
  for (int pass = 0; pass < 2; ++pass) {
    embedded_publish.push_back(MeasurePublish(single, publishers, per_publisher));
    cluster_publish.push_back(MeasurePublish(cluster, publishers, per_publisher));
    absl::StatusOr<double> puts =
        MeasureEtcdPuts((*etcd)->endpoints(), publishers, per_publisher / 2);
    if (!puts.ok()) {
      return Fail(puts.status());
    }
    etcd_puts.push_back(*puts);
    std::printf(
        "pass %d publish: embedded %.0f/s, cluster %.0f/s; etcd puts alone %.0f/s (%d "
        "clients)\n",
        pass, embedded_publish.back(), cluster_publish.back(), *puts, publishers);
    FanoutRun e = MeasureFanout(single, embedded_pid, 1000, rounds, /*library=*/false);
    FanoutRun c = MeasureFanout(cluster, node0_pid, 1000, rounds, /*library=*/false);
    std::printf(
        "pass %d fan-out to 1000: embedded p50 %.2f p99 %.2f ms; cluster (subscribers "
        "over 3 nodes) p50 %.2f p99 %.2f ms\n",
        pass, Percentile(e.samples_ms, 50), Percentile(e.samples_ms, 99),
        Percentile(c.samples_ms, 50), Percentile(c.samples_ms, 99));
    embedded_fanout.insert(embedded_fanout.end(), e.samples_ms.begin(), e.samples_ms.end());
    cluster_fanout.insert(cluster_fanout.end(), c.samples_ms.begin(), c.samples_ms.end());
  }
  auto mean = [](const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return v.empty() ? 0 : sum / static_cast<double>(v.size());
  };
  BenchReport report;
  report.Set("cluster_fanout1000_p50_ms", Percentile(cluster_fanout, 50));
  report.Set("cluster_fanout1000_p99_ms", Percentile(cluster_fanout, 99));
  report.Set("embedded_fanout1000_p50_ms", Percentile(embedded_fanout, 50));
  report.Set("embedded_fanout1000_p99_ms", Percentile(embedded_fanout, 99));
  report.Set("cluster_publish_per_s", std::round(mean(cluster_publish)));
  report.Set("embedded_publish_per_s", std::round(mean(embedded_publish)));
  report.Set("cluster_vs_embedded_fanout1000_p99",
             Percentile(embedded_fanout, 99) > 0
                 ? Percentile(cluster_fanout, 99) / Percentile(embedded_fanout, 99)
                 : 0);
  report.Set("etcd_put_per_s", std::round(mean(etcd_puts)));
  report.Set("cluster_publish_vs_etcd_put",
             mean(etcd_puts) > 0 ? mean(cluster_publish) / mean(etcd_puts) : 0);
  report.Set("cluster_vs_embedded_publish",
             mean(embedded_publish) > 0 ? mean(cluster_publish) / mean(embedded_publish) : 0);
  report.SetSetup("cores", Cores());
  report.SetSetup("rounds", rounds * 2);
  report.SetSetup("publishers", publishers);
  report.SetSetup("instances_published_per_pass", publishers * per_publisher);
  report.SetSetup("network", "loopback, one TCP connection per subscriber");
  report.SetSetup("cluster",
                  "3 etcd 3.4 members (fsync per commit, heartbeat 50ms) and 3 dsrd nodes, all on "
                  "this machine; subscribers spread over the nodes, provider and publishers "
                  "likewise; publications are etcd puts under session leases");
  report.SetSetup("embedded", "one dsrd, RocksDB store, publications in memory");
  report.SetSetup("passes", "2, embedded and cluster interleaved");
  report.SetSetup("mode", quick ? "quick" : "full");
  report.Print();
  return 0;
}

int Run(int argc, char** argv) {
  bool quick = false;
  bool cluster = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--cluster") == 0) {
      cluster = true;
    } else {
      std::fprintf(stderr, "usage: bench_registry [--quick] [--cluster]\n");
      return 2;
    }
  }
  if (cluster) {
    return RunCluster(quick);
  }
  const int rounds = quick ? 5 : 20;
  const int publishers = 16;
  const int per_publisher = quick ? 200 : 1000;

  formica::testing::TempDir dir;
  auto dsrd = StartEmbedded(dir, "dsrd");
  if (!dsrd.ok()) {
    return Fail(dsrd.status());
  }
  const std::string registry = (*dsrd)->address();
  const pid_t pid = (*dsrd)->process()->pid();
  std::printf("dsrd on %s (merge window 20ms default, publications in memory)\n", registry.c_str());

  double publish_per_s = MeasurePublish({registry}, publishers, per_publisher);
  std::printf("publish: %.0f instances/s (%d publishers x %d)\n", publish_per_s, publishers,
              per_publisher);

  FanoutRun f100 = MeasureFanout({registry}, pid, 100, rounds, /*library=*/false);
  std::printf("dsrd fan-out to 100: p50 %.2f ms, p99 %.2f ms (%zu samples)\n",
              Percentile(f100.samples_ms, 50), Percentile(f100.samples_ms, 99),
              f100.samples_ms.size());
  FanoutRun f1000 = MeasureFanout({registry}, pid, 1000, rounds, /*library=*/false);
  std::printf("dsrd fan-out to 1000: p50 %.2f ms, p99 %.2f ms (%zu samples); %lld bytes/session\n",
              Percentile(f1000.samples_ms, 50), Percentile(f1000.samples_ms, 99),
              f1000.samples_ms.size(), static_cast<long long>(f1000.bytes_per_session));
  FanoutRun lib1000 = MeasureFanout({registry}, pid, 1000, rounds, /*library=*/true);
  std::printf(
      "dsrd fan-out to 1000 full client libraries in one process: p50 %.2f ms, p99 %.2f ms\n",
      Percentile(lib1000.samples_ms, 50), Percentile(lib1000.samples_ms, 99));
  (*dsrd)->Stop();

  auto e100 = MeasureEtcdFanout(100, rounds);
  auto e1000 = MeasureEtcdFanout(1000, rounds);
  if (!e100.ok() || !e1000.ok()) {
    std::fprintf(stderr, "etcd: %s %s\n", e100.status().ToString().c_str(),
                 e1000.status().ToString().c_str());
    return 1;
  }
  std::printf("etcd fan-out to 100: p50 %.2f ms, p99 %.2f ms\n", e100->p50_ms, e100->p99_ms);
  std::printf("etcd fan-out to 1000: p50 %.2f ms, p99 %.2f ms\n", e1000->p50_ms, e1000->p99_ms);

  BenchReport report;
  report.Set("publish_per_s", std::round(publish_per_s));
  report.Set("fanout100_p50_ms", Percentile(f100.samples_ms, 50));
  report.Set("fanout100_p99_ms", Percentile(f100.samples_ms, 99));
  report.Set("fanout1000_p50_ms", Percentile(f1000.samples_ms, 50));
  report.Set("fanout1000_p99_ms", Percentile(f1000.samples_ms, 99));
  report.Set("etcd_fanout100_p99_ms", e100->p99_ms);
  report.Set("etcd_fanout1000_p50_ms", e1000->p50_ms);
  report.Set("etcd_fanout1000_p99_ms", e1000->p99_ms);
  report.Set("fanout1000_p99_vs_etcd",
             e1000->p99_ms > 0 ? Percentile(f1000.samples_ms, 99) / e1000->p99_ms : 0);
  report.Set("fanout100_p99_vs_etcd",
             e100->p99_ms > 0 ? Percentile(f100.samples_ms, 99) / e100->p99_ms : 0);
  report.Set("bytes_per_session", static_cast<double>(f1000.bytes_per_session));
  report.Set("client_lib_fanout1000_p50_ms", Percentile(lib1000.samples_ms, 50));
  report.Set("client_lib_fanout1000_p99_ms", Percentile(lib1000.samples_ms, 99));
  report.SetSetup("cores", Cores());
  report.SetSetup("rounds", rounds);
  report.SetSetup("publishers", publishers);
  report.SetSetup("instances_published", publishers * per_publisher);
  report.SetSetup("network", "loopback, one TCP connection per subscriber");
  report.SetSetup("subscribers",
                  "fanout*: callback-API session streams that ack every push, like the etcd "
                  "watchers; client_lib_*: 1000 formica::registry::Client in one process");
  report.SetSetup("dsrd", "embedded store, merge window 20ms, publications in memory (no fsync)");
  report.SetSetup(
      "etcd",
      "etcd 3.4 single member, default settings (fsync per put), one watch stream per connection");
  report.SetSetup("mode", quick ? "quick" : "full");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
