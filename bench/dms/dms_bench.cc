// bench_dms: dmsd against RabbitMQ on the same workload, in one run.
//
//   ./formica bench dms [--quick] [--messages N] [--queues N] [--no-rabbitmq]
//
// 1 KiB messages, acknowledged after fsync. Phase 1 (produce): 4 producer
// threads, each keeping 64 sends out at once; throughput and send->ack
// latency. Phase 2 (end to end): one consumer group (one consumer, 256
// unacked at most) running while the producers send; throughput from the
// first send to the last message acked. The same against a private
// rabbitmq-server (durable queue, persistent messages, publisher confirms,
// manual consumer acks) through librabbitmq. The last line is one JSON
// object.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench_report.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "process.h"
#include "rabbitmq_bench.h"

namespace {

using formica::bench::BenchReport;
using formica::bench::BrokerFigures;
using formica::bench::BrokerWorkload;
using formica::testing::Subprocess;

void Log(const std::string& line) { std::printf("%s\n", line.c_str()); }

// Runs `w.producers` threads, each with `w.in_flight_per_producer` sends
// out, until `w.messages` are acknowledged. Latencies in ms.
absl::Status ProducePhase(formica::rpc::Client* rpc, const std::string& topic,
                          const BrokerWorkload& w, std::vector<double>* latencies,
                          absl::Duration* elapsed) {
  const std::string body(static_cast<size_t>(w.body_bytes), 'x');
  std::atomic<int> next{0};
  absl::Mutex mu;
  absl::Status failure;
  absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int p = 0; p < w.producers; ++p) {
    threads.emplace_back([&] {
      formica::dms::ProducerOptions po;
      po.producer_group = "bench";
      auto producer = std::move(*formica::dms::Producer::Create(po, rpc));
      absl::Mutex window_mu;
      int out = 0;
      std::vector<double> mine;
      while (next.fetch_add(1) < w.messages) {
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
        absl::Time sent = absl::Now();
        producer->SendAsync(topic, std::move(m),
                            [&, sent](absl::StatusOr<formica::dms::SendReceipt> r) {
                              double ms = absl::ToDoubleMilliseconds(absl::Now() - sent);
                              absl::MutexLock lock(&window_mu);
                              --out;
                              mine.push_back(ms);
                              if (!r.ok()) {
                                absl::MutexLock l2(&mu);
                                failure = r.status();
                              }
                            });
      }
      producer->Flush();
      absl::MutexLock lock(&mu);
      if (latencies != nullptr) latencies->insert(latencies->end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  *elapsed = absl::Now() - start;
  return failure;
}

int g_queues = 8;

absl::Status CreateTopic(int port, const std::string& name) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  formica::dms::v1::CreateTopicRequest req;
  req.set_name(name);
  req.set_queues(g_queues);
  formica::dms::v1::TopicInfo info;
  grpc::Status st = formica::dms::v1::Broker::NewStub(channel)->CreateTopic(&ctx, req, &info);
  if (!st.ok()) return absl::InternalError(st.error_message());
  return absl::OkStatus();
}

struct FormicaFigures : BrokerFigures {
  double backlog_per_s = 0;  // one consumer draining phase 1's messages
};

absl::StatusOr<FormicaFigures> RunFormica(const BrokerWorkload& w,
                                          const formica::testing::TempDir& dir) {
  formica::testing::DsrdProcess::Options dsrd_options;
  dsrd_options.data_dir = dir.File("dsrd");
  dsrd_options.config = {{"push.warmup", "0s"}};
  auto dsrd = formica::testing::DsrdProcess::Start(dsrd_options);
  if (!dsrd.ok()) return dsrd.status();
  int port = formica::testing::PickFreePort();
  auto dmsd = Subprocess::Start(
      {formica::testing::BinaryPath("dms/dmsd"), "--listen", absl::StrCat("127.0.0.1:", port),
       "--data-dir", dir.File("dmsd"), "--registry", (*dsrd)->address(), "--log-level", "warn"},
      dir.File("dmsd.log"));
  if (!dmsd.ok() || !(*dmsd)->WaitForOutput("dmsd ready", absl::Seconds(20))) {
    return absl::UnavailableError("dmsd did not start");
  }
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
  for (const char* t : {"bench.produce", "bench.e2e"}) {
    if (absl::Status st = CreateTopic(port, t); !st.ok()) return st;
  }

  FormicaFigures f;
  std::vector<double> latencies;
  absl::Duration elapsed;
  if (absl::Status st = ProducePhase(rpc->get(), "bench.produce", w, &latencies, &elapsed);
      !st.ok()) {
    return st;
  }
  f.produce_per_s = w.messages / absl::ToDoubleSeconds(elapsed);
  f.produce_p50_ms = formica::bench::Percentile(latencies, 50);
  f.produce_p99_ms = formica::bench::Percentile(latencies, 99);
  Log(absl::StrCat("formica produce: ", static_cast<int>(f.produce_per_s), " msg/s, p50 ",
                   f.produce_p50_ms, " ms, p99 ", f.produce_p99_ms, " ms"));

  // Draining the backlog phase 1 left: consumption alone.
  absl::Mutex mu;
  int acked = 0;
  absl::Time last_ack;
  {
    formica::dms::ConsumerOptions o;
    o.group = "backlog";
    o.topic = "bench.produce";
    o.ordered = false;  // concurrent, as RabbitMQ's consumer with prefetch
    o.max_in_flight = w.consumer_prefetch;
    o.on_acked = [&](const formica::dms::ReceivedMessage&) {
      absl::MutexLock lock(&mu);
      ++acked;
      last_ack = absl::Now();
    };
    absl::Time start = absl::Now();
    auto consumer = formica::dms::Consumer::Start(
        o,
        [](const formica::dms::ReceivedMessage&) { return formica::dms::ConsumeResult::kSuccess; },
        rpc->get());
    if (!consumer.ok()) return consumer.status();
    absl::MutexLock lock(&mu);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return acked >= w.messages; };
    if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(120))) {
      return absl::DeadlineExceededError(
          absl::StrCat("only ", acked, " of ", w.messages, " backlog messages consumed in time"));
    }
    f.backlog_per_s = w.messages / absl::ToDoubleSeconds(last_ack - start);
    acked = 0;
  }
  Log(absl::StrCat("formica backlog drain: ", static_cast<int>(f.backlog_per_s), " msg/s"));

  // End to end: the consumer counts what the broker confirmed as acked.
  formica::dms::ConsumerOptions o;
  o.group = "bench";
  o.topic = "bench.e2e";
  o.ordered = false;
  o.max_in_flight = w.consumer_prefetch;
  o.on_acked = [&](const formica::dms::ReceivedMessage&) {
    absl::MutexLock lock(&mu);
    ++acked;
    last_ack = absl::Now();
  };
  std::atomic<int> bad{0};
  auto consumer = formica::dms::Consumer::Start(
      o,
      [&](const formica::dms::ReceivedMessage& m) {
        if (static_cast<int>(m.body.size()) != w.body_bytes) ++bad;
        return formica::dms::ConsumeResult::kSuccess;
      },
      rpc->get());
  if (!consumer.ok()) return consumer.status();
  absl::Time start = absl::Now();
  if (absl::Status st = ProducePhase(rpc->get(), "bench.e2e", w, nullptr, &elapsed); !st.ok()) {
    return st;
  }
  {
    absl::MutexLock lock(&mu);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return acked >= w.messages; };
    if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(60))) {
      return absl::DeadlineExceededError(
          absl::StrCat("only ", acked, " of ", w.messages, " messages consumed in time"));
    }
    f.e2e_per_s = w.messages / absl::ToDoubleSeconds(last_ack - start);
  }
  (*consumer)->Stop();
  if (bad.load() > 0) return absl::DataLossError("a consumed message had the wrong size");
  Log(absl::StrCat("formica end to end: ", static_cast<int>(f.e2e_per_s), " msg/s"));
  (*dmsd)->Terminate();
  return f;
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
    } else if (std::strcmp(argv[i], "--queues") == 0 && i + 1 < argc) {
      g_queues = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--messages") == 0 && i + 1 < argc) {
      messages = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: bench_dms [--quick] [--messages N] [--queues N] [--no-rabbitmq]\n");
      return 2;
    }
  }
  BrokerWorkload w;
  w.messages = messages > 0 ? messages : quick ? 5000 : 40000;
  formica::testing::TempDir dir;
  absl::StatusOr<FormicaFigures> formica = RunFormica(w, dir);
  if (!formica.ok()) {
    std::fprintf(stderr, "bench_dms: formica: %s\n", formica.status().ToString().c_str());
    return 1;
  }
  BenchReport report;
  report.Set("produce_per_s", formica->produce_per_s);
  report.Set("e2e_per_s", formica->e2e_per_s);
  report.Set("produce_p50_ms", formica->produce_p50_ms);
  report.Set("produce_p99_ms", formica->produce_p99_ms);
  report.Set("backlog_drain_per_s", formica->backlog_per_s);
  report.SetSetup("cores", static_cast<double>(std::thread::hardware_concurrency()));
  report.SetSetup("messages_per_phase", w.messages);
  report.SetSetup("body_bytes", w.body_bytes);
  report.SetSetup("producers", w.producers);
  report.SetSetup("in_flight_per_producer", w.in_flight_per_producer);
  report.SetSetup("consumer_max_in_flight", w.consumer_prefetch);
  report.SetSetup(
      "formica",
      absl::StrCat("dmsd storage.flush=sync (fdatasync before each produce ack, group "
                   "commit), topics of ",
                   g_queues,
                   " queues, concurrent consumer (ordered=false), acks made durable before "
                   "confirmed"));
  if (rabbitmq) {  // --no-rabbitmq: dmsd alone, e.g. to profile it
    absl::StatusOr<BrokerFigures> rabbit = formica::bench::RunRabbitMq(w, &Log);
    if (!rabbit.ok()) {
      std::fprintf(stderr, "bench_dms: rabbitmq: %s\n", rabbit.status().ToString().c_str());
      return 1;
    }
    Log(absl::StrCat("rabbitmq produce: ", static_cast<int>(rabbit->produce_per_s),
                     " msg/s, end to end: ", static_cast<int>(rabbit->e2e_per_s), " msg/s"));
    report.Set("rabbitmq_produce_per_s", rabbit->produce_per_s);
    report.Set("rabbitmq_e2e_per_s", rabbit->e2e_per_s);
    report.Set("rabbitmq_produce_p50_ms", rabbit->produce_p50_ms);
    report.Set("rabbitmq_produce_p99_ms", rabbit->produce_p99_ms);
    report.Set("produce_ratio", formica->produce_per_s / rabbit->produce_per_s);
    report.Set("e2e_ratio", formica->e2e_per_s / rabbit->e2e_per_s);
    report.SetSetup("rabbitmq",
                    "rabbitmq-server (Debian), durable classic queue, persistent messages, "
                    "publisher confirms, manual acks, librabbitmq");
  }
  report.Print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
