// bench_dms: dmsd against RabbitMQ on the same workload, in one run.
//
//   ./formica bench dms [--quick] [--messages N] [--no-rabbitmq]
//
// 1 KiB messages, acknowledged after fsync. Phase 1 (produce): 4 producer
// threads, each keeping 64 sends out at once; throughput from the first send
// to the last acknowledgement, and send->ack latency. Phase 2 (end to end):
// one consumer group (one consumer, 256 unacked at most) running while the
// producers send; throughput from the first send to the last message acked;
// distinct (queue, offset) pairs are counted and repeats reported as
// duplicates. Both on equal partitioning: a dmsd topic of 8 queues against 8
// durable RabbitMQ classic queues (producers spreading their messages over
// them), and 1 against 1; RabbitMQ's quorum queues (8) beside them, on one
// node and on a private 3-node cluster (the peer of a replicated dmsd). RabbitMQ
// runs privately (persistent messages, publisher confirms, manual consumer
// acks) through librabbitmq. Any failed send, missing message or broker
// failure makes the run not ok (exit 1). The 8-queue case runs again with
// dsrd, dmsd and the bench over mutual TLS (tls_e2e_ratio: what TLS costs).
// The last line is one JSON object.
#include <grpcpp/grpcpp.h>

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "bench_report.h"
#include "formica/common/tls.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "process.h"
#include "rabbitmq_bench.h"

namespace {

using formica::bench::BenchReport;
using formica::bench::BrokerFigures;
using formica::bench::BrokerWorkload;
using formica::bench::Ratio;
using formica::testing::Subprocess;

void Log(const std::string& line) { std::printf("%s\n", line.c_str()); }

struct ProduceOutcome {
  std::vector<double> latencies_ms;  // send -> ack, successful sends
  absl::Time first_send;
  absl::Time last_ack;
  int64_t failures = 0;
  absl::Status first_failure;
};

// Runs `w.producers` threads, each with `w.in_flight_per_producer` sends
// out, until `w.messages` are answered. The clock runs from the first send
// to the last acknowledgement (producer creation and thread start are not
// timed, as on RabbitMQ's side).
ProduceOutcome ProducePhase(formica::rpc::Client* rpc, const std::string& topic,
                            const BrokerWorkload& w, bool dedup_keys = false) {
  const std::string body(static_cast<size_t>(w.body_bytes), 'x');
  std::vector<std::unique_ptr<formica::dms::Producer>> producers;
  formica::dms::ProducerOptions po;
  po.producer_group = "bench";
  ProduceOutcome outcome;
  for (int p = 0; p < w.producers; ++p) {
    auto producer = formica::dms::Producer::Create(po, rpc);
    if (!producer.ok()) {
      outcome.failures = w.messages;
      outcome.first_failure = producer.status();
      return outcome;
    }
    producers.push_back(std::move(*producer));
  }
  std::atomic<int> next{0};
  std::atomic<bool> started{false};
  absl::Mutex mu;
  std::vector<std::thread> threads;
  for (int p = 0; p < w.producers; ++p) {
    threads.emplace_back([&, p] {
      formica::dms::Producer* producer = producers[p].get();
      absl::Mutex window_mu;
      int out = 0;
      std::vector<double> mine;
      for (int n = next.fetch_add(1); n < w.messages; n = next.fetch_add(1)) {
        {
          absl::MutexLock lock(&window_mu);
          auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(window_mu) {
            return out < w.in_flight_per_producer;
          };
          window_mu.Await(absl::Condition(&room));
          ++out;
        }
        formica::dms::OutgoingMessage m;
        m.body = body;
        if (dedup_keys) m.dedup_key = absl::StrCat(topic, "-", n);
        absl::Time sent = absl::Now();
        if (!started.exchange(true)) {
          absl::MutexLock lock(&mu);
          outcome.first_send = sent;
        }
        producer->SendAsync(topic, std::move(m),
                            [&, sent](absl::StatusOr<formica::dms::SendReceipt> r) {
                              absl::Time now = absl::Now();
                              absl::MutexLock lock(&window_mu);
                              --out;
                              absl::MutexLock l2(&mu);
                              if (r.ok()) {
                                mine.push_back(absl::ToDoubleMilliseconds(now - sent));
                                outcome.last_ack = std::max(outcome.last_ack, now);
                              } else if (outcome.failures++ == 0) {
                                outcome.first_failure = r.status();
                              }
                            });
      }
      producer->Flush();
      absl::MutexLock lock(&mu);
      outcome.latencies_ms.insert(outcome.latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  return outcome;
}

absl::Status CreateTopic(int port, const std::string& name, int queues) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), formica::ChannelCredentials());
  grpc::ClientContext ctx;
  formica::dms::v1::CreateTopicRequest req;
  req.set_name(name);
  req.set_queues(queues);
  formica::dms::v1::TopicInfo info;
  grpc::Status st = formica::dms::v1::Broker::NewStub(channel)->CreateTopic(&ctx, req, &info);
  if (!st.ok()) return absl::InternalError(st.error_message());
  return absl::OkStatus();
}

struct FormicaFigures : BrokerFigures {
  double backlog_per_s = 0;  // one consumer draining phase 1's messages
  int64_t failed_sends = 0;  // sends the broker did not acknowledge
  int64_t missing = 0;       // acknowledged messages never consumed in time
};

// Counts what a consumer group had acked, by (queue, offset).
struct AckCount {
  absl::Mutex mu;
  std::set<std::pair<int, uint64_t>> seen ABSL_GUARDED_BY(mu);
  int64_t duplicates ABSL_GUARDED_BY(mu) = 0;
  absl::Time last ABSL_GUARDED_BY(mu);

  void Acked(const formica::dms::ReceivedMessage& m) {
    absl::MutexLock lock(&mu);
    if (seen.emplace(m.queue, m.offset).second) {
      last = absl::Now();
    } else {
      ++duplicates;
    }
  }
  // Waits until `n` distinct messages were acked or `timeout` passed;
  // returns how many were.
  int64_t AwaitDistinct(int64_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return static_cast<int64_t>(seen.size()) >= n;
    };
    mu.AwaitWithTimeout(absl::Condition(&done), timeout);
    return static_cast<int64_t>(seen.size());
  }
};

// One partitioning: phase 1 on `queues` queues (and, with `backlog`, its
// backlog drained by one consumer), then phase 2.
FormicaFigures RunFormicaCase(formica::rpc::Client* rpc, int port, const BrokerWorkload& w,
                              int queues, bool backlog, BenchReport* report) {
  FormicaFigures f;
  const std::string produce_topic = absl::StrCat("bench.produce.q", queues);
  const std::string e2e_topic = absl::StrCat("bench.e2e.q", queues);
  for (const std::string& t : {produce_topic, e2e_topic}) {
    if (absl::Status st = CreateTopic(port, t, queues); !st.ok()) {
      report->Fail(absl::StrCat("create topic ", t, ": ", st.message()));
      return f;
    }
  }
  ProduceOutcome produce = ProducePhase(rpc, produce_topic, w);
  const int64_t produced = w.messages - produce.failures;
  f.failed_sends += produce.failures;
  if (produce.failures > 0) {
    std::fprintf(stderr, "formica produce (%d queues): %lld sends failed, first: %s\n", queues,
                 static_cast<long long>(produce.failures),
                 produce.first_failure.ToString().c_str());
  }
  f.produce_per_s =
      produced > 0 ? produced / absl::ToDoubleSeconds(produce.last_ack - produce.first_send) : 0;
  f.produce_p50_ms = formica::bench::Percentile(produce.latencies_ms, 50);
  f.produce_p99_ms = formica::bench::Percentile(produce.latencies_ms, 99);
  Log(absl::StrCat("formica produce (", queues, " queues): ", static_cast<int>(f.produce_per_s),
                   " msg/s, p50 ", f.produce_p50_ms, " ms, p99 ", f.produce_p99_ms, " ms"));

  auto start_consumer = [&](const std::string& group, const std::string& topic, AckCount* count,
                            std::atomic<int>* bad) {
    formica::dms::ConsumerOptions o;
    o.group = group;
    o.topic = topic;
    o.ordered = false;  // concurrent, as RabbitMQ's consumer with prefetch
    o.max_in_flight = w.consumer_prefetch;
    o.on_acked = [count](const formica::dms::ReceivedMessage& m) { count->Acked(m); };
    return formica::dms::Consumer::Start(
        o,
        [&w, bad](const formica::dms::ReceivedMessage& m) {
          if (static_cast<int>(m.body.size()) != w.body_bytes) ++*bad;
          return formica::dms::ConsumeResult::kSuccess;
        },
        rpc);
  };
  std::atomic<int> bad{0};
  if (backlog) {  // draining the backlog phase 1 left: consumption alone
    AckCount count;
    absl::Time start = absl::Now();
    auto consumer = start_consumer("backlog", produce_topic, &count, &bad);
    if (!consumer.ok()) {
      report->Fail(absl::StrCat("backlog consumer: ", consumer.status().message()));
      return f;
    }
    int64_t got = count.AwaitDistinct(produced, absl::Seconds(120));
    (*consumer)->Stop();
    absl::MutexLock lock(&count.mu);
    f.missing += produced - got;
    f.backlog_per_s = got > 0 ? got / absl::ToDoubleSeconds(count.last - start) : 0;
    Log(absl::StrCat("formica backlog drain (", queues,
                     " queues): ", static_cast<int>(f.backlog_per_s), " msg/s"));
  }

  // End to end: the consumer counts what the broker confirmed as acked.
  AckCount count;
  auto consumer = start_consumer("bench", e2e_topic, &count, &bad);
  if (!consumer.ok()) {
    report->Fail(absl::StrCat("end-to-end consumer: ", consumer.status().message()));
    return f;
  }
  ProduceOutcome e2e = ProducePhase(rpc, e2e_topic, w);
  f.failed_sends += e2e.failures;
  const int64_t sent = w.messages - e2e.failures;
  int64_t got = count.AwaitDistinct(sent, absl::Seconds(60));
  // A redelivery arriving just after the last first delivery still counts.
  absl::SleepFor(absl::Milliseconds(200));
  (*consumer)->Stop();
  {
    absl::MutexLock lock(&count.mu);
    f.missing += sent - got;
    f.duplicates = count.duplicates;
    f.e2e_per_s = got > 0 ? got / absl::ToDoubleSeconds(count.last - e2e.first_send) : 0;
  }
  if (bad.load() > 0) report->AddErrors("formica_wrong_size_messages", bad.load());
  Log(absl::StrCat("formica end to end (", queues, " queues): ", static_cast<int>(f.e2e_per_s),
                   " msg/s, ", f.duplicates, " duplicates, ", f.missing, " missing"));
  return f;
}

// ---- replicated dmsd (docs/ha.md) -------------------------------------

struct ReplicatedFigures {
  double e2e_per_s = 0;
  double failover_ms = -1;    // kill -9 of the leader to the first acknowledged send
  double produce_p50_ms = 0;  // send -> ack during the end-to-end phase
  double produce_p99_ms = 0;
  double dedup_produce_per_s = 0;  // sends with dedup keys alone, after the end-to-end phase
  int64_t failed_sends = 0;
  int64_t missing = 0;
  int64_t duplicates = 0;
};

// A broker group of three dmsd on this machine (each with its own storage
// and Raft data dirs), as docs/ha.md configures one.
struct ReplicatedGroup {
  std::unique_ptr<formica::testing::DsrdProcess> dsrd;
  std::vector<int> ports;
  std::vector<std::unique_ptr<Subprocess>> members;

  // The member whose broker answers (the ready leader); -1 after `timeout`.
  int Leader(absl::Duration timeout) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      for (size_t i = 0; i < members.size(); ++i) {
        if (members[i] == nullptr) continue;
        auto stub = formica::dms::v1::Broker::NewStub(grpc::CreateChannel(
            absl::StrCat("127.0.0.1:", ports[i]), grpc::InsecureChannelCredentials()));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
        formica::dms::v1::ListTopicsReply reply;
        if (stub->ListTopics(&ctx, formica::dms::v1::ListTopicsRequest(), &reply).ok()) {
          return static_cast<int>(i);
        }
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }
};

absl::StatusOr<std::unique_ptr<ReplicatedGroup>> StartReplicatedGroup(
    const formica::testing::TempDir& dir, const std::string& topic) {
  auto g = std::make_unique<ReplicatedGroup>();
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd-group");
  dsrd_options.config["push.warmup"] = "0s";
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) return dsrd.status();
  g->dsrd = *std::move(dsrd);
  std::vector<std::string> peers;
  for (int i = 0; i < 3; ++i) {
    g->ports.push_back(formica::testing::PickFreePort());
    peers.push_back(
        absl::StrCat("\"", i + 1, "@127.0.0.1:", formica::testing::PickFreePort(), "\""));
  }
  for (int i = 0; i < 3; ++i) {
    std::string config = dir.File(absl::StrCat("dmsd-group", i + 1, ".yaml"));
    std::ofstream(config) << absl::StrCat(
        "server:\n  listen: 127.0.0.1:", g->ports[i], "\n  unpublish_grace: 0s\n",
        "registry:\n  addresses: [\"", g->dsrd->address(), "\"]\n",
        "storage:\n  data_dir: ", dir.File(absl::StrCat("dmsd-group", i + 1)), "\n",
        "topics:\n  create: [\"", topic, ":8\"]\n", "raft:\n  node_id: ", i + 1,
        "\n  data_dir: ", dir.File(absl::StrCat("raft-group", i + 1)), "\n  peers: [",
        absl::StrJoin(peers, ", "), "]\n");
    auto p = Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--config", config},
                               dir.File(absl::StrCat("dmsd-group", i + 1, ".log")));
    if (!p.ok()) return p.status();
    if (!(*p)->WaitForOutput("dmsd ready", absl::Seconds(20))) {
      return absl::UnavailableError(absl::StrCat("group member ", i + 1, " did not start"));
    }
    g->members.push_back(*std::move(p));
  }
  return g;
}

// Kill -9 of the leader while one producer sends with dedup keys, one send
// after another (each retried until acknowledged): the time from the kill
// to the first acknowledged send.
double MeasureFailover(ReplicatedGroup& g, formica::rpc::Client* rpc, const std::string& topic,
                       BenchReport* report) {
  int leader = g.Leader(absl::Seconds(15));
  if (leader < 0) {
    report->Fail("replicated dmsd: no leader before the failover");
    return -1;
  }
  formica::dms::ProducerOptions po;
  po.producer_group = "bench-failover";
  po.timeout = absl::Seconds(2);
  auto producer = formica::dms::Producer::Create(po, rpc);
  if (!producer.ok()) return -1;
  // Only a send begun once the killed leader is gone counts: one in flight
  // at the kill may still have been answered by it.
  absl::Mutex mu;
  absl::Time gone = absl::InfiniteFuture(), first_after = absl::InfinitePast();
  std::atomic<bool> stop{false};
  std::thread sender([&] {
    for (int i = 0; !stop.load(); ++i) {
      formica::dms::OutgoingMessage m;
      m.body = absl::StrCat("failover-", i);
      m.dedup_key = m.body;
      while (!stop.load()) {
        const absl::Time begun = absl::Now();
        if ((*producer)->Send(topic, m).ok()) {
          absl::MutexLock lock(&mu);
          if (begun > gone && first_after < gone) first_after = absl::Now();
          break;
        }
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(500));
  const absl::Time killed = absl::Now();
  g.members[leader]->Signal(SIGKILL);
  g.members[leader]->Wait(absl::Seconds(10));
  {
    absl::MutexLock lock(&mu);
    gone = absl::Now();
  }
  double ms = -1;
  {
    absl::MutexLock lock(&mu);
    auto acked = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return first_after > gone; };
    if (mu.AwaitWithTimeout(absl::Condition(&acked), absl::Seconds(30))) {
      ms = absl::ToDoubleMilliseconds(first_after - killed);
    }
  }
  stop = true;
  sender.join();
  g.members[leader].reset();
  if (ms < 0) report->Fail("replicated dmsd: no send acknowledged within 30 s of the leader kill");
  Log(
      absl::StrCat("replicated dmsd failover (kill -9 of the leader to the first acknowledged "
                   "send): ",
                   static_cast<int>(ms), " ms"));
  return ms;
}

// End to end through a group of three (the same workload as the single
// dmsd's 8-queue end-to-end phase), then the failover.
ReplicatedFigures RunReplicated(const BrokerWorkload& w, const formica::testing::TempDir& dir,
                                BenchReport* report) {
  ReplicatedFigures f;
  const std::string topic = "bench.replicated.q8";
  absl::StatusOr<std::unique_ptr<ReplicatedGroup>> g = StartReplicatedGroup(dir, topic);
  if (!g.ok()) {
    report->Fail(absl::StrCat("replicated dmsd: ", g.status().message()));
    return f;
  }
  if ((*g)->Leader(absl::Seconds(15)) < 0) {
    report->Fail("replicated dmsd: no leader within 15 s");
    return f;
  }
  formica::registry::ClientOptions ro;
  ro.registries = {(*g)->dsrd->address()};
  ro.client_name = "bench_dms_group";
  auto registry = formica::registry::Client::Create(ro);
  if (!registry.ok()) return f;
  formica::rpc::ClientOptions co;
  co.app_name = "bench_dms_group";
  co.default_timeout = absl::Seconds(10);
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  if (!rpc.ok()) return f;
  AckCount count;
  formica::dms::ConsumerOptions o;
  o.group = "bench";
  o.topic = topic;
  o.ordered = false;
  o.max_in_flight = w.consumer_prefetch;
  o.on_acked = [&count](const formica::dms::ReceivedMessage& m) { count.Acked(m); };
  auto consumer = formica::dms::Consumer::Start(
      o, [](const formica::dms::ReceivedMessage&) { return formica::dms::ConsumeResult::kSuccess; },
      rpc->get());
  if (!consumer.ok()) {
    report->Fail(absl::StrCat("replicated dmsd consumer: ", consumer.status().message()));
    return f;
  }
  ProduceOutcome e2e = ProducePhase(rpc->get(), topic, w);
  f.failed_sends = e2e.failures;
  const int64_t sent = w.messages - e2e.failures;
  f.produce_p50_ms = formica::bench::Percentile(e2e.latencies_ms, 50);
  f.produce_p99_ms = formica::bench::Percentile(e2e.latencies_ms, 99);
  Log(absl::StrCat("replicated dmsd produce (while consumed): ",
                   static_cast<int>(sent / absl::ToDoubleSeconds(e2e.last_ack - e2e.first_send)),
                   " msg/s, p50 ", f.produce_p50_ms, " ms, p99 ", f.produce_p99_ms, " ms"));
  int64_t got = count.AwaitDistinct(sent, absl::Seconds(60));
  absl::SleepFor(absl::Milliseconds(200));
  (*consumer)->Stop();
  {
    absl::MutexLock lock(&count.mu);
    f.missing = sent - got;
    f.duplicates = count.duplicates;
    f.e2e_per_s = got > 0 ? got / absl::ToDoubleSeconds(count.last - e2e.first_send) : 0;
  }
  Log(absl::StrCat(
      "replicated dmsd end to end (3 members, 8 queues): ", static_cast<int>(f.e2e_per_s),
      " msg/s, ", f.duplicates, " duplicates, ", f.missing, " missing"));
  // Sends with dedup keys (each checked against the group's dedup index and
  // indexed once stored), alone.
  ProduceOutcome dedup = ProducePhase(rpc->get(), topic, w, /*dedup_keys=*/true);
  f.failed_sends += dedup.failures;
  if (w.messages > dedup.failures) {
    f.dedup_produce_per_s =
        (w.messages - dedup.failures) / absl::ToDoubleSeconds(dedup.last_ack - dedup.first_send);
  }
  Log(absl::StrCat(
      "replicated dmsd produce with dedup keys: ", static_cast<int>(f.dedup_produce_per_s),
      " msg/s, p50 ", formica::bench::Percentile(dedup.latencies_ms, 50), " ms"));
  f.failover_ms = MeasureFailover(**g, rpc->get(), topic, report);
  rpc->reset();
  registry->reset();
  for (auto& m : (*g)->members) {
    if (m != nullptr) m->Terminate();
  }
  return f;
}

void ReportReplicated(const ReplicatedFigures& r, double single_e2e_per_s, BenchReport* report) {
  report->AddErrors("replicated_failed_sends", r.failed_sends);
  report->AddMissing("replicated_messages", r.missing);
  report->Set("replicated_e2e_per_s", r.e2e_per_s);
  report->Set("replicated_vs_single", Ratio(r.e2e_per_s, single_e2e_per_s));
  report->Set("replicated_duplicates", static_cast<double>(r.duplicates));
  report->Set("replicated_dedup_produce_per_s", r.dedup_produce_per_s);
  report->Set("failover_ms", r.failover_ms);
  report->Headline("replicated dmsd end to end msg/s (3 members) vs a single dmsd, 8 queues",
                   "replicated_e2e_per_s", "e2e_per_s", "replicated_vs_single", "reported");
  report->SetSetup("replicated",
                   "a broker group of three dmsd on this machine (raft section, default election "
                   "timeout 1 s and heartbeat 100 ms), each with its own storage and Raft data "
                   "dirs; the 8-queue end-to-end phase through the leader, found in the "
                   "registry; then kill -9 of the leader while one producer sends with dedup "
                   "keys, one at a time, each retried until acknowledged (failover_ms: the kill "
                   "to the first acknowledged send)");
}

struct FormicaRun {
  std::string flush;  // as dmsd reports it
  FormicaFigures q8;
  FormicaFigures q1;
};

// `certs`: "" for plaintext, else a deploy/certs.sh directory holding
// dsrd, dmsd and bench: everything runs over mutual TLS (this process is
// switched to TLS), and only the 8-queue case runs.
absl::StatusOr<FormicaRun> RunFormica(const BrokerWorkload& w, const formica::testing::TempDir& dir,
                                      BenchReport* report, const std::string& certs = "") {
  const std::string tag = certs.empty() ? "" : "-tls";
  auto tls_keys = [&](const std::string& name) -> std::map<std::string, std::string> {
    if (certs.empty()) return {};
    return {{"tls.ca_file", certs + "/ca.pem"},
            {"tls.cert_file", certs + "/" + name + ".pem"},
            {"tls.key_file", certs + "/" + name + ".key"}};
  };
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd" + tag);
  dsrd_options.config = tls_keys("dsrd");
  dsrd_options.config["push.warmup"] = "0s";
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) return dsrd.status();
  int port = formica::testing::PickFreePort();
  // Info level: dmsd says which flush mode it runs with (no log line per message).
  std::vector<std::string> argv = {formica::testing::BinaryPath("dms/dmsd"),
                                   "--listen",
                                   absl::StrCat("127.0.0.1:", port),
                                   "--data-dir",
                                   dir.File("dmsd" + tag),
                                   "--registry",
                                   (*dsrd)->address(),
                                   "--log-level",
                                   "info"};
  for (const auto& [k, v] : tls_keys("dmsd")) argv.insert(argv.end(), {"--set", k + "=" + v});
  if (!certs.empty()) {
    absl::Status st = formica::UseTls(
        {certs + "/ca.pem", certs + "/bench.pem", certs + "/bench.key", absl::Seconds(10)});
    if (!st.ok()) return st;
  }
  auto dmsd = Subprocess::Start(argv, dir.File("dmsd" + tag + ".log"));
  if (!dmsd.ok() || !(*dmsd)->WaitForOutput("dmsd ready", absl::Seconds(20))) {
    return absl::UnavailableError("dmsd did not start");
  }
  FormicaRun run;
  // "dmsd serving on 127.0.0.1:port (sync flush)"
  std::string serving = (*dmsd)->LineAfter("dmsd serving on ");
  size_t open = serving.rfind('(');
  size_t close = serving.find(" flush)", open == std::string::npos ? 0 : open);
  if (open == std::string::npos || close == std::string::npos) {
    return absl::InternalError(
        absl::StrCat("dmsd did not say its flush mode (line: '", serving, "')"));
  }
  run.flush = serving.substr(open + 1, close - open - 1);
  formica::registry::ClientOptions ro;
  ro.registries = {(*dsrd)->address()};
  ro.client_name = "bench_dms";
  auto registry = formica::registry::Client::Create(ro);
  if (!registry.ok()) return registry.status();
  formica::rpc::ClientOptions co;
  co.app_name = "bench_dms";
  co.default_timeout = absl::Seconds(10);
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  if (!rpc.ok()) return rpc.status();
  run.q8 = RunFormicaCase(rpc->get(), port, w, 8, /*backlog=*/certs.empty(), report);
  if (certs.empty()) run.q1 = RunFormicaCase(rpc->get(), port, w, 1, /*backlog=*/false, report);
  rpc->reset();
  registry->reset();
  (*dmsd)->Terminate();
  return run;
}

int Run(int argc, char** argv) {
  bool quick = false;
  bool rabbitmq = true;
  int messages = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--no-rabbitmq") == 0) {
      rabbitmq = false;
    } else if (std::strcmp(argv[i], "--messages") == 0 && i + 1 < argc) {
      messages = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_dms [--quick] [--messages N] [--no-rabbitmq]\n");
      return 2;
    }
  }
  BrokerWorkload w;
  w.messages = messages > 0 ? messages : quick ? 5000 : 40000;
  formica::testing::TempDir dir;
  BenchReport report;
  absl::StatusOr<FormicaRun> formica = RunFormica(w, dir, &report);
  if (!formica.ok()) {
    report.Fail("formica: " + std::string(formica.status().message()));
    formica = FormicaRun();
  }
  const FormicaFigures& f8 = formica->q8;
  const FormicaFigures& f1 = formica->q1;
  {
    // The 8-queue case again with dsrd, dmsd and this process over mutual
    // TLS (docs/security.md): what TLS costs a message.
    const std::string certs = dir.File("certs");
    auto made = Subprocess::Start({std::string(FORMICA_SOURCE_DIR) + "/deploy/certs.sh", "--dir",
                                   certs, "dsrd", "dmsd", "bench"},
                                  dir.File("certs.log"));
    absl::StatusOr<FormicaRun> tls =
        made.ok() && (*made)->Wait(absl::Seconds(60)) == 0
            ? RunFormica(w, dir, &report, certs)
            : absl::StatusOr<FormicaRun>(absl::InternalError("deploy/certs.sh failed"));
    formica::UsePlaintext();
    if (!tls.ok()) {
      report.Fail("formica over TLS: " + std::string(tls.status().message()));
    } else {
      report.AddErrors("tls_failed_sends", tls->q8.failed_sends);
      report.AddMissing("tls_messages", tls->q8.missing);
      report.Set("tls_produce_per_s", tls->q8.produce_per_s);
      report.Set("tls_e2e_per_s", tls->q8.e2e_per_s);
      report.Set("tls_produce_p99_ms", tls->q8.produce_p99_ms);
      report.Set("tls_produce_ratio", Ratio(tls->q8.produce_per_s, f8.produce_per_s));
      report.Set("tls_e2e_ratio", Ratio(tls->q8.e2e_per_s, f8.e2e_per_s));
      report.Headline("dms end to end msg/s over mutual TLS vs plaintext, 8 queues",
                      "tls_e2e_per_s", "e2e_per_s", "tls_e2e_ratio", "reported");
      report.SetSetup("tls",
                      "the 8-queue produce and end-to-end phases again, dsrd, dmsd and the "
                      "bench over mutual TLS (P-256 certificates from deploy/certs.sh), after "
                      "the plaintext ones");
    }
  }
  const ReplicatedFigures replicated = RunReplicated(w, dir, &report);
  ReportReplicated(replicated, f8.e2e_per_s, &report);
  report.AddErrors("formica_failed_sends", f8.failed_sends + f1.failed_sends);
  report.AddMissing("formica_messages", f8.missing + f1.missing);
  report.Set("produce_per_s", f8.produce_per_s);
  report.Set("e2e_per_s", f8.e2e_per_s);
  report.Set("produce_p50_ms", f8.produce_p50_ms);
  report.Set("produce_p99_ms", f8.produce_p99_ms);
  report.Set("backlog_drain_per_s", f8.backlog_per_s);
  report.Set("produce_per_s_1q", f1.produce_per_s);
  report.Set("e2e_per_s_1q", f1.e2e_per_s);
  report.Set("duplicates", static_cast<double>(f8.duplicates + f1.duplicates));
  report.SetMachine(dir.path());
  report.SetSetup("messages_per_phase", w.messages);
  report.SetSetup("body_bytes", w.body_bytes);
  report.SetSetup("producers", w.producers);
  report.SetSetup("in_flight_per_producer", w.in_flight_per_producer);
  report.SetSetup("consumer_max_in_flight", w.consumer_prefetch);
  report.SetSetup("formica_flush", formica->flush);
  report.SetSetup("formica",
                  "dmsd, topics of 8 queues (and 1), producers without keys, concurrent consumer "
                  "(ordered=false), acks made durable before confirmed");
  report.SetSetup("timing",
                  "both sides: first send to last publisher confirm (produce) or to "
                  "last consumer ack (end to end)");
  report.Headline("dms produce msg/s, 8 queues each side", "produce_per_s",
                  "rabbitmq_produce_per_s", "produce_ratio", ">= 1.0 of RabbitMQ");
  report.Headline("dms end to end msg/s, 8 queues each side", "e2e_per_s", "rabbitmq_e2e_per_s",
                  "e2e_ratio", ">= 1.0 of RabbitMQ");
  report.Headline("dms end to end msg/s, 1 queue each side", "e2e_per_s_1q",
                  "rabbitmq_e2e_per_s_1q", "e2e_ratio_1q", ">= 1.0 of RabbitMQ");
  report.Headline("dms end to end msg/s, 8 queues vs RabbitMQ quorum queues", "e2e_per_s",
                  "rabbitmq_quorum_e2e_per_s", "e2e_ratio_quorum", ">= 1.0 of RabbitMQ");
  report.Headline(
      "replicated dmsd end to end msg/s (3 members) vs RabbitMQ quorum queues (3 nodes), 8 queues",
      "replicated_e2e_per_s", "rabbitmq_quorum_e2e_per_s", "replicated_vs_quorum",
      ">= 2.0 of RabbitMQ quorum queues");
  if (rabbitmq) {  // --no-rabbitmq: dmsd alone, e.g. to profile it
    BrokerWorkload classic8 = w;
    classic8.queues = 8;
    BrokerWorkload classic1 = w;
    classic1.queues = 1;
    BrokerWorkload quorum8 = w;
    quorum8.queues = 8;
    quorum8.quorum = true;
    absl::StatusOr<formica::bench::RabbitMqRun> rabbit =
        formica::bench::RunRabbitMq({classic8, classic1, quorum8}, &Log);
    if (!rabbit.ok()) {
      report.Fail("rabbitmq: " + std::string(rabbit.status().message()));
    } else {
      const BrokerFigures& r8 = rabbit->figures[0];
      const BrokerFigures& r1 = rabbit->figures[1];
      const BrokerFigures& q8 = rabbit->figures[2];
      Log(absl::StrCat("rabbitmq produce (8 classic queues): ", static_cast<int>(r8.produce_per_s),
                       " msg/s, end to end: ", static_cast<int>(r8.e2e_per_s),
                       " msg/s; 1 queue: ", static_cast<int>(r1.e2e_per_s),
                       " msg/s; 8 quorum queues: ", static_cast<int>(q8.e2e_per_s), " msg/s"));
      report.Set("rabbitmq_produce_per_s", r8.produce_per_s);
      report.Set("rabbitmq_e2e_per_s", r8.e2e_per_s);
      report.Set("rabbitmq_produce_p50_ms", r8.produce_p50_ms);
      report.Set("rabbitmq_produce_p99_ms", r8.produce_p99_ms);
      report.Set("rabbitmq_produce_per_s_1q", r1.produce_per_s);
      report.Set("rabbitmq_e2e_per_s_1q", r1.e2e_per_s);
      report.Set("rabbitmq_quorum_1node_produce_per_s", q8.produce_per_s);
      report.Set("rabbitmq_quorum_1node_e2e_per_s", q8.e2e_per_s);
      // Quorum queues as they are meant to run: replicated on a cluster of 3 nodes, the
      // peer of a replicated dmsd group. A 1-node quorum queue stands in (said so in the
      // setup) only when a local cluster cannot run.
      BrokerFigures quorum = q8;
      std::string quorum_setup =
          "8 quorum queues on a 1-node RabbitMQ (a local 3-node cluster did not form: ";
      absl::StatusOr<formica::bench::RabbitMqRun> cluster =
          formica::bench::RunRabbitMqCluster({quorum8}, 3, &Log);
      if (cluster.ok()) {
        quorum = cluster->figures[0];
        quorum_setup =
            "8 quorum queues on a private 3-node RabbitMQ cluster on this machine (a member "
            "on each node; a confirm means a majority wrote the message), clients on node 1";
      } else {
        absl::StrAppend(&quorum_setup, cluster.status().message().substr(0, 300), ")");
        Log("rabbitmq 3-node cluster: " + std::string(cluster.status().message()));
      }
      Log(absl::StrCat("rabbitmq quorum queues (", cluster.ok() ? 3 : 1, " nodes): end to end ",
                       static_cast<int>(quorum.e2e_per_s), " msg/s"));
      report.Set("rabbitmq_quorum_nodes", cluster.ok() ? 3 : 1);
      report.Set("rabbitmq_quorum_produce_per_s", quorum.produce_per_s);
      report.Set("rabbitmq_quorum_e2e_per_s", quorum.e2e_per_s);
      report.SetSetup("rabbitmq_quorum", quorum_setup);
      const int64_t cluster_duplicates = cluster.ok() ? quorum.duplicates : 0;
      report.Set("rabbitmq_duplicates", static_cast<double>(r8.duplicates + r1.duplicates +
                                                            q8.duplicates + cluster_duplicates));
      report.Set("produce_ratio", Ratio(f8.produce_per_s, r8.produce_per_s));
      report.Set("e2e_ratio", Ratio(f8.e2e_per_s, r8.e2e_per_s));
      report.Set("produce_ratio_1q", Ratio(f1.produce_per_s, r1.produce_per_s));
      report.Set("e2e_ratio_1q", Ratio(f1.e2e_per_s, r1.e2e_per_s));
      report.Set("e2e_ratio_quorum", Ratio(f8.e2e_per_s, quorum.e2e_per_s));
      // The replicated group against its peer: quorum queues replicated on 3 nodes.
      report.Set("replicated_vs_quorum", Ratio(replicated.e2e_per_s, quorum.e2e_per_s));
      report.SetSetup("peer_version", "RabbitMQ " + rabbit->version);
      report.SetSetup(
          "rabbitmq",
          "private rabbitmq-server (Debian), durable classic queues (8, and 1) and "
          "quorum queues (8, on the same node), persistent messages, publisher confirms, producers "
          "spreading messages round-robin over the queues, one consumer on all of "
          "them (prefetch split evenly), manual acks, librabbitmq");
    }
  }
  report.SetSetup("fsync",
                  absl::StrCat("dmsd: storage.flush=", formica->flush,
                               "; RabbitMQ: persistent messages confirmed after its own fsync "
                               "(classic queues batch syncs; quorum queues fsync their log)"));
  return report.Finish();
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
