// bench/registry: publish throughput, push fan-out to M subscribers and
// memory per session of dsrd, beside etcd's watch fan-out measured in the
// same run on the same machine: etcd as shipped (fsync per put) and with
// --unsafe-no-fsync (like dsrd, which keeps publications in memory). Both
// sides get the same quiet spacing before each round; a churn run adds
// publishes arriving steadily while the fan-out is timed. Every subscriber
// is counted once per round; a round a subscriber did not see in time is a
// missing sample and makes the run not ok (exit 1), as does any failed
// publish. Last line: one JSON object.
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

struct PublishRun {
  double per_s = 0;  // confirmed publishes per second
  int64_t failures = 0;
};

// Publishers each publish `per_publisher` instances, one after another,
// each waiting for the registry's confirmation; only confirmed ones count.
// Publisher p talks to registries[p % size].
PublishRun MeasurePublish(const std::vector<std::string>& registries, int publishers,
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
  std::atomic<int64_t> failures{0};
  std::atomic<int64_t> confirmed{0};
  absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      for (int k = 0; k < per_publisher; ++k) {
        Instance i;
        i.service = absl::StrCat("bench.Publish", k % 50);
        i.address = absl::StrCat("10.2.", p, ".", k / 250, ":", 1000 + k % 250);
        i.tags = {{"version", "1.0"}, {"color", "blue"}};
        absl::Status st = clients[p]->Publish(i);
        if (st.ok()) {
          ++confirmed;
        } else if (failures.fetch_add(1) < 3) {
          std::fprintf(stderr, "publish: %s\n", st.ToString().c_str());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  PublishRun run;
  run.per_s = confirmed.load() / seconds;
  run.failures = failures.load();
  return run;
}

namespace v1 = formica::registry::v1;

// The instance whose weight changes each round.
constexpr char kRoundAddress[] = "10.3.0.1:9000";
// The churn publishers' instances beside it: kChurnPrefix + k + ":9000".
constexpr char kChurnPrefix[] = "10.3.1.";

// Counts, per round, when each subscriber first saw the round's change:
// one sample per (subscriber, round) at most.
struct RoundClock {
  absl::Mutex mu;
  int target_weight ABSL_GUARDED_BY(mu) = 0;
  absl::Time start ABSL_GUARDED_BY(mu);
  int seen ABSL_GUARDED_BY(mu) = 0;
  std::vector<bool> seen_by ABSL_GUARDED_BY(mu);  // per subscriber, this round
  std::vector<double> samples ABSL_GUARDED_BY(mu);

  // `weight`: the round instance's weight in the snapshot subscriber
  // `subscriber` just received.
  void Saw(int subscriber, int weight, absl::Time now) {
    absl::MutexLock lock(&mu);
    if (weight != target_weight || target_weight <= 1) return;
    if (subscriber >= static_cast<int>(seen_by.size()) || seen_by[subscriber]) return;
    seen_by[subscriber] = true;
    samples.push_back(absl::ToDoubleMilliseconds(now - start));
    ++seen;
  }
};

// A subscriber speaking the session protocol directly on gRPC's callback
// API, as the etcd watchers of the comparison do: it measures the registry's
// fan-out, not the cost of a thousand client libraries sharing two cores.
// Acknowledges every push, as the real client does.
class RawSubscriber : public grpc::ClientBidiReactor<v1::ClientMessage, v1::ServerMessage> {
 public:
  RawSubscriber(const std::string& registry, const std::string& service, int id, RoundClock* clock)
      : id_(id), clock_(clock) {
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
      for (const v1::Instance& instance : in_.service().instances()) {
        if (instance.address() == kRoundAddress) clock_->Saw(id_, instance.weight(), now);
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
  const int id_;
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

struct FanoutRun {
  std::vector<double> samples_ms;
  int64_t missing = 0;           // (subscriber, round) pairs not seen in time
  int64_t publish_failures = 0;  // round and churn publishes the registry refused
  int64_t churn_publishes = 0;
  double churn_per_s = 0;  // the churn rate reached
};

// Runs `rounds` changes of one provider's weight, each after `spacing`, and
// waits, each time, for every subscriber to see it (up to 30 s).
void RunRounds(Client* provider, Instance inst, RoundClock* clock, int subscribers, int rounds,
               absl::Duration spacing, FanoutRun* run) {
  for (int r = 2; r < rounds + 2; ++r) {
    absl::SleepFor(spacing);
    {
      absl::MutexLock lock(&clock->mu);
      clock->target_weight = r;
      clock->seen = 0;
      clock->seen_by.assign(subscribers, false);
      clock->start = absl::Now();
    }
    inst.weight = r;
    if (absl::Status st = provider->Publish(inst); !st.ok()) {
      std::fprintf(stderr, "fan-out round %d: publish: %s\n", r, st.ToString().c_str());
      ++run->publish_failures;
    }
    absl::MutexLock lock(&clock->mu);
    auto all = [&]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(clock->mu) { return clock->seen >= subscribers; };
    if (!clock->mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30))) {
      std::fprintf(stderr, "fan-out round %d: only %d of %d subscribers saw the change\n", r,
                   clock->seen, subscribers);
    }
    run->missing += subscribers - clock->seen;
    clock->target_weight = 0;  // later arrivals of this round are not samples
  }
  absl::MutexLock lock(&clock->mu);
  run->samples_ms = clock->samples;
}

// Changes the watched service `per_s` times a second, on a schedule, while
// it lives: kChurnPublishers publishers, each with an instance of its own,
// take the slots in turn (a publish waits for its confirmation, so one
// publisher alone would fall behind the schedule while the registry pushes).
class Churn {
 public:
  static constexpr int kChurnPublishers = 20;

  Churn(const std::string& registry, const std::string& service, int per_s) {
    if (per_s <= 0) return;
    for (int k = 0; k < kChurnPublishers; ++k) {
      clients_.push_back(*Client::Create(Options(registry, absl::StrCat("fan-churn", k))));
    }
    start_ = absl::Now();
    const absl::Duration every = absl::Seconds(1) / per_s;
    for (int k = 0; k < kChurnPublishers; ++k) {
      threads_.emplace_back([this, service, every, k] {
        Instance inst;
        inst.service = service;
        inst.address = absl::StrCat(kChurnPrefix, k, ":9000");
        for (int64_t n = 0; !stop_.load(); ++n) {
          absl::Time slot = start_ + every * static_cast<double>(n * kChurnPublishers + k);
          absl::SleepFor(slot - absl::Now());
          if (stop_.load()) break;
          inst.weight = 1 + static_cast<int>(n % 10000);
          ++publishes_;
          if (!clients_[k]->Publish(inst).ok()) ++failures_;
        }
      });
    }
  }
  ~Churn() { Stop(); }
  void Stop() {
    if (stop_.exchange(true)) return;
    for (auto& t : threads_) t.join();
    seconds_ = absl::ToDoubleSeconds(absl::Now() - start_);
  }
  int64_t publishes() const { return publishes_.load(); }
  int64_t failures() const { return failures_.load(); }
  double per_s() const { return seconds_ > 0 ? publishes_.load() / seconds_ : 0; }

 private:
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::thread> threads_;
  absl::Time start_;
  double seconds_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> publishes_{0};
  std::atomic<int64_t> failures_{0};
};

struct FanoutOptions {
  int subscribers = 1000;
  int rounds = 5;
  absl::Duration spacing = absl::Milliseconds(100);
  int churn_per_s = 0;
  // Full formica::registry::Client objects (their callbacks) instead of
  // RawSubscriber streams.
  bool library = false;
};

// M subscribers, each on its own connection; one provider changes its weight
// each round; the time from the change until each subscriber sees it.
// Subscriber s talks to registries[s % size]; the provider to the first.
FanoutRun MeasureFanout(const std::vector<std::string>& registries, const FanoutOptions& o) {
  static std::atomic<int> serial{0};
  const std::string service =
      absl::StrCat("bench.Fanout", o.subscribers, o.library ? "lib" : "raw", serial.fetch_add(1));
  const std::string& registry = registries[0];
  auto provider = *Client::Create(Options(registry, "fan-provider"));
  Instance inst;
  inst.service = service;
  inst.address = kRoundAddress;
  inst.weight = 1;
  FanoutRun run;
  if (!provider->Publish(inst).ok()) ++run.publish_failures;

  RoundClock clock;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::unique_ptr<RawSubscriber>> raws;
  for (int s = 0; s < o.subscribers; ++s) {
    const std::string& node = registries[s % registries.size()];
    if (o.library) {
      clients.push_back(*Client::Create(Options(node, absl::StrCat("sub", s))));
      (void)clients.back()->Subscribe(service, [&clock, s](const ServiceSnapshot& snap) {
        absl::Time now = absl::Now();
        for (const Instance& i : snap.instances) {
          if (i.address == kRoundAddress) clock.Saw(s, i.weight, now);
        }
      });
    } else {
      raws.push_back(std::make_unique<RawSubscriber>(node, service, s, &clock));
    }
  }
  for (auto& c : clients) (void)c->AwaitSnapshot(service, absl::Seconds(60));
  for (auto& r : raws) r->WaitForFirstSnapshot(absl::Seconds(60));
  absl::SleepFor(absl::Milliseconds(500));
  Churn churn(registry, service, o.churn_per_s);
  RunRounds(provider.get(), inst, &clock, o.subscribers, o.rounds, o.spacing, &run);
  churn.Stop();
  run.publish_failures += churn.failures();
  run.churn_publishes = churn.publishes();
  run.churn_per_s = churn.per_s();
  return run;
}

// dsrd's resident memory per idle session with one subscription, in a dsrd
// started for this alone: RSS growth while `sessions` RawSubscriber streams
// open, divided by their number.
absl::StatusOr<int64_t> MeasureBytesPerSession(const std::string& registry, pid_t pid,
                                               int sessions) {
  Instance inst;
  inst.service = "bench.Memory";
  inst.address = kRoundAddress;
  auto provider = *Client::Create(Options(registry, "mem-provider"));
  if (absl::Status st = provider->Publish(inst); !st.ok()) return st;
  absl::SleepFor(absl::Milliseconds(300));
  int64_t before = RssBytes(pid);
  RoundClock clock;
  std::vector<std::unique_ptr<RawSubscriber>> raws;
  for (int s = 0; s < sessions; ++s) {
    raws.push_back(std::make_unique<RawSubscriber>(registry, inst.service, s, &clock));
  }
  for (auto& r : raws) {
    if (!r->WaitForFirstSnapshot(absl::Seconds(60))) {
      return absl::DeadlineExceededError("a memory-probe session got no snapshot in 60 s");
    }
  }
  absl::SleepFor(absl::Milliseconds(500));
  return (RssBytes(pid) - before) / sessions;
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
  std::printf("embedded dsrd on %s; cluster: 3 dsrd nodes on 3 etcd members (%s)\n",
              single[0].c_str(), (*etcd)->endpoints().c_str());

  BenchReport report;
  std::vector<double> embedded_publish;
  std::vector<double> cluster_publish;
  std::vector<double> etcd_puts;
  std::vector<double> embedded_fanout;
  std::vector<double> cluster_fanout;
  FanoutOptions fanout;
  fanout.subscribers = 1000;
  fanout.rounds = rounds;
  for (int pass = 0; pass < 2; ++pass) {
    PublishRun e_pub = MeasurePublish(single, publishers, per_publisher);
    PublishRun c_pub = MeasurePublish(cluster, publishers, per_publisher);
    report.AddErrors("embedded_publish_failed", e_pub.failures);
    report.AddErrors("cluster_publish_failed", c_pub.failures);
    embedded_publish.push_back(e_pub.per_s);
    cluster_publish.push_back(c_pub.per_s);
    absl::StatusOr<double> puts =
        MeasureEtcdPuts((*etcd)->endpoints(), publishers, per_publisher / 2);
    if (!puts.ok()) {
      report.Fail("etcd puts: " + std::string(puts.status().message()));
    } else {
      etcd_puts.push_back(*puts);
    }
    std::printf(
        "pass %d publish: embedded %.0f/s, cluster %.0f/s; etcd single puts alone %.0f/s (%d "
        "clients)\n",
        pass, embedded_publish.back(), cluster_publish.back(), puts.ok() ? *puts : 0.0, publishers);
    FanoutRun e = MeasureFanout(single, fanout);
    FanoutRun c = MeasureFanout(cluster, fanout);
    for (const FanoutRun* f : {&e, &c}) {
      report.AddMissing(f == &e ? "embedded_fanout_samples" : "cluster_fanout_samples", f->missing);
      report.AddErrors(f == &e ? "embedded_fanout_publish_failed" : "cluster_fanout_publish_failed",
                       f->publish_failures);
    }
    std::printf(
        "pass %d fan-out to 1000: embedded p50 %.2f p99 %.2f ms; cluster (subscribers "
        "over 3 nodes) p50 %.2f p99 %.2f ms (missing %lld / %lld)\n",
        pass, Percentile(e.samples_ms, 50), Percentile(e.samples_ms, 99),
        Percentile(c.samples_ms, 50), Percentile(c.samples_ms, 99),
        static_cast<long long>(e.missing), static_cast<long long>(c.missing));
    embedded_fanout.insert(embedded_fanout.end(), e.samples_ms.begin(), e.samples_ms.end());
    cluster_fanout.insert(cluster_fanout.end(), c.samples_ms.begin(), c.samples_ms.end());
  }
  auto mean = [](const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return v.empty() ? 0 : sum / static_cast<double>(v.size());
  };
  report.Set("cluster_fanout1000_p50_ms", Percentile(cluster_fanout, 50));
  report.Set("cluster_fanout1000_p99_ms", Percentile(cluster_fanout, 99));
  report.Set("embedded_fanout1000_p50_ms", Percentile(embedded_fanout, 50));
  report.Set("embedded_fanout1000_p99_ms", Percentile(embedded_fanout, 99));
  report.Set("cluster_publish_per_s", std::round(mean(cluster_publish)));
  report.Set("embedded_publish_per_s", std::round(mean(embedded_publish)));
  report.Set("cluster_vs_embedded_fanout1000_p99",
             Ratio(Percentile(cluster_fanout, 99), Percentile(embedded_fanout, 99)));
  report.Set("etcd_put_per_s", std::round(mean(etcd_puts)));
  report.Set("cluster_publish_vs_etcd_put", Ratio(mean(cluster_publish), mean(etcd_puts)));
  report.Set("cluster_vs_embedded_publish", Ratio(mean(cluster_publish), mean(embedded_publish)));
  report.Headline("registry cluster: fan-out to 1000, p99 ms (vs embedded dsrd)",
                  "cluster_fanout1000_p99_ms", "embedded_fanout1000_p99_ms",
                  "cluster_vs_embedded_fanout1000_p99", "");
  report.Headline(
      "registry cluster: publishes/s (dsrd's batched etcd transactions) vs etcd single puts/s",
      "cluster_publish_per_s", "etcd_put_per_s", "cluster_publish_vs_etcd_put",
      "not like for like: batched transactions against single puts");
  report.SetMachine(dir.path());
  const std::string first_member = (*etcd)->endpoints().substr(0, (*etcd)->endpoints().find(','));
  absl::StatusOr<std::string> etcd_version = EtcdVersion(first_member);
  if (etcd_version.ok()) {
    report.SetSetup("peer_version", "etcd " + *etcd_version);
  } else {
    report.Fail(std::string(etcd_version.status().message()));
  }
  report.SetSetup("rounds", rounds * 2);
  report.SetSetup("round_spacing_ms", absl::ToDoubleMilliseconds(fanout.spacing));
  report.SetSetup("publishers", publishers);
  report.SetSetup("instances_published_per_pass", publishers * per_publisher);
  report.SetSetup("network", "loopback, one TCP connection per subscriber");
  report.SetSetup("cluster",
                  "3 etcd 3.4 members (fsync per commit, heartbeat 50ms) and 3 dsrd nodes, all on "
                  "this machine; subscribers spread over the nodes, provider and publishers "
                  "likewise; publications are etcd puts under session leases");
  report.SetSetup("cluster_publish_vs_etcd_put",
                  "dsrd batches the publications that arrive together into one etcd transaction; "
                  "etcd_put_per_s is single puts, one per call, from as many clients: a ceiling "
                  "for unbatched writes, not the same work");
  report.SetSetup("embedded", "one dsrd, RocksDB store, publications in memory");
  report.SetSetup("fsync", "cluster: etcd fsyncs every commit; embedded: publications in memory");
  report.SetSetup("passes", "2, embedded and cluster interleaved");
  report.SetSetup("mode", quick ? "quick" : "full");
  return report.Finish();
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
  const absl::Duration spacing = absl::Milliseconds(100);
  const int churn_per_s = 200;

  formica::testing::TempDir dir;
  BenchReport report;

  // Memory first, in a dsrd of its own that nothing else has grown.
  int64_t bytes_per_session = 0;
  {
    auto fresh = StartEmbedded(dir, "dsrd-memory");
    if (!fresh.ok()) {
      return Fail(fresh.status());
    }
    absl::StatusOr<int64_t> bytes =
        MeasureBytesPerSession((*fresh)->address(), (*fresh)->process()->pid(), 1000);
    if (bytes.ok()) {
      bytes_per_session = *bytes;
      std::printf("memory: %lld bytes per idle session (fresh dsrd, 1000 sessions)\n",
                  static_cast<long long>(bytes_per_session));
    } else {
      report.Fail("memory per session: " + std::string(bytes.status().message()));
    }
    (*fresh)->Stop();
  }

  auto dsrd = StartEmbedded(dir, "dsrd");
  if (!dsrd.ok()) {
    return Fail(dsrd.status());
  }
  const std::string registry = (*dsrd)->address();
  std::printf("dsrd on %s (merge window 20ms default, publications in memory)\n", registry.c_str());

  PublishRun publish = MeasurePublish({registry}, publishers, per_publisher);
  report.AddErrors("publish_failed", publish.failures);
  std::printf("publish: %.0f confirmed instances/s (%d publishers x %d, %lld failed)\n",
              publish.per_s, publishers, per_publisher, static_cast<long long>(publish.failures));

  auto fanout = [&](const std::string& name, int subscribers, int churn, bool library) {
    FanoutOptions o;
    o.subscribers = subscribers;
    o.rounds = rounds;
    o.spacing = spacing;
    o.churn_per_s = churn;
    o.library = library;
    FanoutRun run = MeasureFanout({registry}, o);
    report.AddMissing(name + "_samples", run.missing);
    report.AddErrors(name + "_publish_failed", run.publish_failures);
    std::printf(
        "dsrd %s: p50 %.2f ms, p99 %.2f ms (%zu samples, %lld missing%s)\n", name.c_str(),
        Percentile(run.samples_ms, 50), Percentile(run.samples_ms, 99), run.samples_ms.size(),
        static_cast<long long>(run.missing),
        churn > 0 ? absl::StrCat(", ", run.churn_publishes, " churn publishes").c_str() : "");
    return run;
  };
  FanoutRun f100 = fanout("fanout100", 100, 0, false);
  FanoutRun f1000 = fanout("fanout1000", 1000, 0, false);
  FanoutRun churn1000 = fanout("churn_fanout1000", 1000, churn_per_s, false);
  FanoutRun lib1000 = fanout("client_lib_fanout1000", 1000, 0, true);
  (*dsrd)->Stop();

  auto etcd = [&](const std::string& name, int watchers, bool fsync, int churn) {
    EtcdFanoutOptions o;
    o.watchers = watchers;
    o.rounds = rounds;
    o.fsync = fsync;
    o.spacing = spacing;
    o.churn_per_s = churn;
    absl::StatusOr<FanoutResult> r = MeasureEtcdFanout(o);
    if (!r.ok()) {
      report.Fail(name + ": " + std::string(r.status().message()));
      FanoutResult none;
      none.missing = static_cast<int64_t>(watchers) * rounds;
      return none;
    }
    report.AddMissing(name + "_samples", r->missing);
    report.AddErrors(name + "_churn_put_failed", r->churn_failures);
    std::printf("%s: p50 %.2f ms, p99 %.2f ms (%lld samples, %lld missing)\n", name.c_str(),
                r->p50_ms, r->p99_ms, static_cast<long long>(r->samples),
                static_cast<long long>(r->missing));
    return *r;
  };
  FanoutResult e100 = etcd("etcd_fanout100", 100, true, 0);
  FanoutResult e1000 = etcd("etcd_fanout1000", 1000, true, 0);
  FanoutResult e1000_nofsync = etcd("etcd_nofsync_fanout1000", 1000, false, 0);
  FanoutResult e1000_churn = etcd("etcd_churn_fanout1000", 1000, false, churn_per_s);
  std::string etcd_version = e1000.version.empty() ? e1000_nofsync.version : e1000.version;

  const double f100_p99 = Percentile(f100.samples_ms, 99);
  const double f1000_p99 = Percentile(f1000.samples_ms, 99);
  report.Set("publish_per_s", std::round(publish.per_s));
  report.Set("fanout100_p50_ms", Percentile(f100.samples_ms, 50));
  report.Set("fanout100_p99_ms", f100_p99);
  report.Set("fanout1000_p50_ms", Percentile(f1000.samples_ms, 50));
  report.Set("fanout1000_p99_ms", f1000_p99);
  report.Set("churn_fanout1000_p50_ms", Percentile(churn1000.samples_ms, 50));
  report.Set("churn_fanout1000_p99_ms", Percentile(churn1000.samples_ms, 99));
  report.Set("churn_publishes_per_s", std::round(churn1000.churn_per_s));
  report.Set("etcd_churn_puts_per_s", std::round(e1000_churn.churn_per_s));
  report.Set("etcd_fanout100_p99_ms", e100.p99_ms);
  report.Set("etcd_fanout1000_p50_ms", e1000.p50_ms);
  report.Set("etcd_fanout1000_p99_ms", e1000.p99_ms);
  report.Set("etcd_nofsync_fanout1000_p50_ms", e1000_nofsync.p50_ms);
  report.Set("etcd_nofsync_fanout1000_p99_ms", e1000_nofsync.p99_ms);
  report.Set("etcd_churn_fanout1000_p50_ms", e1000_churn.p50_ms);
  report.Set("etcd_churn_fanout1000_p99_ms", e1000_churn.p99_ms);
  report.Set("fanout1000_p99_vs_etcd", Ratio(f1000_p99, e1000.p99_ms));
  report.Set("fanout1000_p99_vs_etcd_nofsync", Ratio(f1000_p99, e1000_nofsync.p99_ms));
  report.Set("fanout100_p99_vs_etcd", Ratio(f100_p99, e100.p99_ms));
  report.Set("churn_fanout1000_p99_vs_etcd",
             Ratio(Percentile(churn1000.samples_ms, 99), e1000_churn.p99_ms));
  report.Set("bytes_per_session", static_cast<double>(bytes_per_session));
  report.Set("client_lib_fanout1000_p50_ms", Percentile(lib1000.samples_ms, 50));
  report.Set("client_lib_fanout1000_p99_ms", Percentile(lib1000.samples_ms, 99));
  report.Headline("registry fan-out to 1000, p99 ms (etcd without fsync, like dsrd)",
                  "fanout1000_p99_ms", "etcd_nofsync_fanout1000_p99_ms",
                  "fanout1000_p99_vs_etcd_nofsync", "<= 1.0 of etcd");
  report.Headline("registry fan-out to 1000, p99 ms (etcd as shipped, fsync per put)",
                  "fanout1000_p99_ms", "etcd_fanout1000_p99_ms", "fanout1000_p99_vs_etcd",
                  "<= 1.0 of etcd");
  report.Headline("registry fan-out to 1000 under 200 publishes/s, p99 ms (etcd without fsync)",
                  "churn_fanout1000_p99_ms", "etcd_churn_fanout1000_p99_ms",
                  "churn_fanout1000_p99_vs_etcd", "<= 1.0 of etcd");
  report.Headline("registry fan-out to 100, p99 ms (etcd as shipped)", "fanout100_p99_ms",
                  "etcd_fanout100_p99_ms", "fanout100_p99_vs_etcd", "<= 1.0 of etcd");
  report.Headline("registry confirmed publishes/s", "publish_per_s", "", "", "");
  report.SetMachine(dir.path());
  report.SetSetup("rounds", rounds);
  report.SetSetup("round_spacing_ms", absl::ToDoubleMilliseconds(spacing));
  report.SetSetup("churn_target_per_s", churn_per_s);
  report.SetSetup("publishers", publishers);
  report.SetSetup("instances_published", publishers * per_publisher);
  report.SetSetup("network", "loopback, one TCP connection per subscriber");
  report.SetSetup("subscribers",
                  "fanout*: callback-API session streams that ack every push, like the etcd "
                  "watchers; client_lib_*: 1000 formica::registry::Client in one process");
  report.SetSetup("dsrd", "embedded store, merge window 20ms, publications in memory");
  report.SetSetup("bytes_per_session", "RSS growth of a fresh dsrd over 1000 idle sessions");
  report.SetSetup("peer_version", "etcd " + etcd_version);
  report.SetSetup("etcd",
                  "single member, one watch stream per connection; etcd_* with default settings "
                  "(fsync per put), etcd_nofsync_* and etcd_churn_* with --unsafe-no-fsync");
  report.SetSetup("fsync",
                  "dsrd: none (publications in memory); etcd: per put as shipped, none "
                  "with --unsafe-no-fsync");
  report.SetSetup("churn",
                  "another instance of the watched service (dsrd) or another key under "
                  "the watched prefix (etcd) changes 200 times a second during the rounds");
  report.SetSetup("mode", quick ? "quick" : "full");
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) { return formica::bench::Run(argc, argv); }
