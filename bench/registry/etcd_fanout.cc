#include "etcd_fanout.h"

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cluster_link.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "process.h"

namespace formica::bench {
namespace {

using Clock = std::chrono::steady_clock;
using WatchReactor =
    grpc::ClientBidiReactor<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;

constexpr char kEtcdBinary[] = "/usr/bin/etcd";
constexpr char kMemberName[] = "fanout";
constexpr char kPrefix[] = "/formica-bench/fanout/";
// Round keys are kPrefix + kRoundKey + n; churn keys kPrefix + "churn-" + writer.
constexpr char kRoundKey[] = "key-";
constexpr int kMaxWatchers = 20000;
constexpr int kMaxRounds = 100000;
constexpr absl::Duration kStartupTimeout = absl::Seconds(20);
constexpr absl::Duration kProbeDeadline = absl::Milliseconds(500);
constexpr absl::Duration kProbeInterval = absl::Milliseconds(50);
constexpr absl::Duration kCreateTimeout = absl::Seconds(60);
constexpr absl::Duration kRpcDeadline = absl::Seconds(10);
// As long as the registry side waits for a round (registry_bench.cc).
constexpr absl::Duration kRoundTimeout = absl::Seconds(30);
constexpr absl::Duration kCancelTimeout = absl::Seconds(10);
constexpr absl::Duration kEtcdStopGrace = absl::Seconds(10);

std::string Describe(const grpc::Status& status) {
  return absl::StrCat("gRPC code ", static_cast<int>(status.error_code()), ": ",
                      status.error_message());
}

// One socket per watcher plus the etcd control channel, gRPC's own fds and
// some slack.
absl::Status EnsureFdLimit(int watchers) {
  rlim_t needed = static_cast<rlim_t>(watchers) + 256;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return absl::InternalError("getrlimit(RLIMIT_NOFILE) failed");
  }
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max == RLIM_INFINITY ? needed : std::min(needed, limit.rlim_max);
    if (raised.rlim_cur < needed || setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(watchers, " watchers need about ", needed, " file descriptors, but ",
                       "RLIMIT_NOFILE is ", limit.rlim_cur, " (hard ", limit.rlim_max, ")"));
    }
  }
  return absl::OkStatus();
}

// What the watchers report to the thread running the rounds. Every watcher
// holds a reference, so a watcher whose stream never finished (see ~Run)
// cannot outlive it.
struct Board {
  absl::Mutex mu;
  int watchers ABSL_GUARDED_BY(mu) = 0;
  int created ABSL_GUARDED_BY(mu) = 0;
  std::vector<bool> done ABSL_GUARDED_BY(mu);
  int done_count ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::string failure ABSL_GUARDED_BY(mu);  // first one wins
  // Round revision -> watcher -> when that watcher first saw it.
  std::map<int64_t, std::map<int, Clock::time_point>> arrivals ABSL_GUARDED_BY(mu);
  // Rounds up to this revision are over; their late arrivals are not kept.
  int64_t closed_through ABSL_GUARDED_BY(mu) = 0;

  void Fail(std::string why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (failure.empty() && !stopping) {
      failure = std::move(why);
    }
  }
};

// One Watch stream on the prefix, on its own channel. Callbacks run on gRPC's
// threads; this object must live until OnDone has run (Run::~Run waits).
class Watcher : public WatchReactor {
 public:
  Watcher(int id, std::shared_ptr<grpc::Channel> channel, std::shared_ptr<Board> board)
      : id_(id),
        channel_(std::move(channel)),
        stub_(etcdserverpb::Watch::NewStub(channel_)),
        board_(std::move(board)) {}

  void Start() {
    etcdserverpb::WatchCreateRequest* create = request_.mutable_create_request();
    create->set_key(kPrefix);
    create->set_range_end(registry::EtcdPrefixEnd(kPrefix));
    stub_->async()->Watch(&context_, this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    Clock::time_point now = Clock::now();
    if (!ok) {
      return;  // the stream is over; OnDone tells why
    }
    {
      absl::MutexLock lock(&board_->mu);
      if (response_.created()) {
        ++board_->created;
      }
      if (response_.canceled()) {
        board_->Fail(absl::StrCat("etcd canceled watch ", id_, ": ", response_.cancel_reason()));
      }
      for (const mvccpb::Event& event : response_.events()) {
        if (event.kv().mod_revision() > board_->closed_through &&
            absl::StartsWith(event.kv().key(), absl::StrCat(kPrefix, kRoundKey))) {
          board_->arrivals[event.kv().mod_revision()].emplace(id_, now);  // first arrival only
        }
      }
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    // The owner may delete this watcher as soon as it sees it done, so keep
    // the board alive on our own and touch no member after the lock is gone.
    std::shared_ptr<Board> board = board_;
    int id = id_;
    absl::MutexLock lock(&board->mu);
    board->Fail(absl::StrCat("watch stream ", id, " ended: ", Describe(status)));
    board->done[id] = true;
    ++board->done_count;
  }

 private:
  const int id_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<etcdserverpb::Watch::Stub> stub_;
  std::shared_ptr<Board> board_;
  grpc::ClientContext context_;
  etcdserverpb::WatchRequest request_;
  etcdserverpb::WatchResponse response_;
};

// One measurement: etcd, its watchers and its temp dir. The destructor tears
// everything down in order, whatever state the run failed in.
class Run {
 public:
  Run() = default;
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  ~Run() {
    StopChurn();
    StopWatchers();
    if (etcd_ != nullptr) {
      etcd_->Terminate(kEtcdStopGrace);
    }
    // Then etcd_ (already reaped) and dir_ (removed) go, in that order.
  }

  absl::Status StartEtcd(bool fsync) {
    if (access(kEtcdBinary, X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(kEtcdBinary, " not found (package etcd-server)"));
    }
    int client_port = formica::testing::PickFreePort();
    int peer_port = formica::testing::PickFreePort();
    for (int i = 0; i < 20 && peer_port == client_port; ++i) {
      peer_port = formica::testing::PickFreePort();
    }
    if (peer_port == client_port) {
      return absl::InternalError("could not pick two distinct free ports");
    }
    endpoint_ = absl::StrCat("127.0.0.1:", client_port);
    std::string client_url = absl::StrCat("http://", endpoint_);
    std::string peer_url = absl::StrCat("http://127.0.0.1:", peer_port);
    log_path_ = dir_.File("etcd.log");
    std::vector<std::string> argv = {kEtcdBinary,
                                     "--name",
                                     kMemberName,
                                     "--data-dir",
                                     dir_.File("etcd-data"),
                                     "--listen-client-urls",
                                     client_url,
                                     "--advertise-client-urls",
                                     client_url,
                                     "--listen-peer-urls",
                                     peer_url,
                                     "--initial-advertise-peer-urls",
                                     peer_url,
                                     "--initial-cluster",
                                     absl::StrCat(kMemberName, "=", peer_url),
                                     "--initial-cluster-state",
                                     "new"};
    if (!fsync) argv.push_back("--unsafe-no-fsync");
    absl::StatusOr<std::unique_ptr<formica::testing::Subprocess>> etcd =
        formica::testing::Subprocess::Start(argv, log_path_);
    if (!etcd.ok()) {
      return etcd.status();
    }
    etcd_ = std::move(*etcd);
    return absl::OkStatus();
  }

  // Polls a Range on the prefix until etcd answers it.
  absl::Status WaitReady() {
    grpc::ChannelArguments args;
    // Retry the connection quickly while etcd starts (gRPC's default first
    // backoff is a second, growing to two minutes).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 250);
    kv_ = etcdserverpb::KV::NewStub(
        grpc::CreateCustomChannel(endpoint_, grpc::InsecureChannelCredentials(), args));
    absl::Time give_up = absl::Now() + kStartupTimeout;
    grpc::Status last;
    while (absl::Now() < give_up) {
      if (!etcd_->running()) {
        return absl::UnavailableError(absl::StrCat("etcd exited while starting:\n", LogTail()));
      }
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + kProbeDeadline));
      // Wait for the connection within the deadline instead of failing fast:
      // a fail-fast call returns at once while the channel is in
      // TRANSIENT_FAILURE, and then no thread of ours polls the reconnect
      // attempt, which only gRPC's 5 s backup poller would then complete.
      context.set_wait_for_ready(true);
      etcdserverpb::RangeRequest request;
      request.set_key(kPrefix);
      request.set_range_end(registry::EtcdPrefixEnd(kPrefix));
      request.set_count_only(true);
      etcdserverpb::RangeResponse response;
      last = kv_->Range(&context, request, &response);
      if (last.ok()) {
        return absl::OkStatus();
      }
      absl::SleepFor(kProbeInterval);
    }
    return absl::DeadlineExceededError(absl::StrCat("etcd not ready after ",
                                                    absl::FormatDuration(kStartupTimeout),
                                                    " (last: ", Describe(last), "):\n", LogTail()));
  }

  absl::Status OpenWatchers(int count) {
    {
      absl::MutexLock lock(&board_->mu);
      board_->watchers = count;
      board_->done.assign(count, false);
    }
    watchers_.reserve(count);
    for (int i = 0; i < count; ++i) {
      grpc::ChannelArguments args;
      // A subchannel (TCP connection) of its own, as a separate process has.
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      watchers_.push_back(std::make_unique<Watcher>(
          i, grpc::CreateCustomChannel(endpoint_, grpc::InsecureChannelCredentials(), args),
          board_));
      watchers_.back()->Start();
    }
    absl::MutexLock lock(&board_->mu);
    auto settled = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(board_->mu) {
      return board_->created == count || !board_->failure.empty();
    };
    board_->mu.AwaitWithDeadline(absl::Condition(&settled), absl::Now() + kCreateTimeout);
    if (!board_->failure.empty()) {
      return absl::UnavailableError(board_->failure);
    }
    if (board_->created != count) {
      return absl::DeadlineExceededError(absl::StrCat("only ", board_->created, " of ", count,
                                                      " watches created in ",
                                                      absl::FormatDuration(kCreateTimeout)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Version() { return EtcdVersion(endpoint_); }

  // Puts churn keys `per_s` times a second, on a schedule, until StopChurn():
  // kChurnWriters writers, each with a key of its own, take the slots in
  // turn (a Put waits for its answer, so one writer alone would fall behind
  // while etcd sends events) -- as the registry side's churn publishers do.
  static constexpr int kChurnWriters = 20;
  void StartChurn(int per_s) {
    if (per_s <= 0) return;
    auto channel = grpc::CreateChannel(endpoint_, grpc::InsecureChannelCredentials());
    const absl::Duration every = absl::Seconds(1) / per_s;
    const absl::Time start = absl::Now();
    for (int k = 0; k < kChurnWriters; ++k) {
      churn_.emplace_back([this, channel, every, start, k] {
        auto kv = etcdserverpb::KV::NewStub(channel);
        for (int64_t n = 0; !churn_stop_.load(); ++n) {
          absl::SleepFor(start + every * static_cast<double>(n * kChurnWriters + k) - absl::Now());
          if (churn_stop_.load()) break;
          etcdserverpb::PutRequest request;
          request.set_key(absl::StrCat(kPrefix, "churn-", k));
          request.set_value(absl::StrCat("churn ", n));
          etcdserverpb::PutResponse response;
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
          ++churn_puts_;
          if (!kv->Put(&context, request, &response).ok()) ++churn_failures_;
        }
      });
    }
  }
  void StopChurn() {
    churn_stop_ = true;
    for (std::thread& t : churn_) t.join();
    churn_.clear();
  }
  int64_t churn_puts() const { return churn_puts_.load(); }
  int64_t churn_failures() const { return churn_failures_.load(); }

  // One Put and its fan-out; appends a latency in ms per watcher that saw it
  // to `samples` and returns how many watchers did not see it in time.
  absl::StatusOr<int> Round(int round, std::vector<double>& samples) {
    etcdserverpb::PutRequest request;
    request.set_key(absl::StrCat(kPrefix, kRoundKey, round));
    request.set_value(absl::StrCat("round ", round));
    etcdserverpb::PutResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
    Clock::time_point start = Clock::now();
    grpc::Status put = kv_->Put(&context, request, &response);
    if (!put.ok()) {
      return absl::UnavailableError(absl::StrCat("round ", round, ": Put: ", Describe(put)));
    }
    int64_t revision = response.header().revision();

    absl::MutexLock lock(&board_->mu);
    int count = board_->watchers;
    auto settled = [this, count, revision]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(board_->mu) {
      auto it = board_->arrivals.find(revision);
      return (it != board_->arrivals.end() && static_cast<int>(it->second.size()) >= count) ||
             !board_->failure.empty();
    };
    board_->mu.AwaitWithDeadline(absl::Condition(&settled), absl::Now() + kRoundTimeout);
    if (!board_->failure.empty()) {
      return absl::UnavailableError(absl::StrCat("round ", round, ": ", board_->failure));
    }
    std::map<int, Clock::time_point> arrived = std::move(board_->arrivals[revision]);
    // Later arrivals of this revision are not kept: the round is over.
    board_->arrivals.erase(revision);
    board_->closed_through = revision;
    for (const auto& [watcher, at] : arrived) {
      samples.push_back(std::chrono::duration<double, std::milli>(at - start).count());
    }
    int missing = count - static_cast<int>(arrived.size());
    if (missing > 0) {
      std::fprintf(stderr,
                   "etcd round %d (revision %lld): %d of %d watchers did not get the "
                   "event within %s\n",
                   round, static_cast<long long>(revision), missing, count,
                   absl::FormatDuration(kRoundTimeout).c_str());
    }
    return missing;
  }

 private:
  // Cancels every stream and waits (bounded) for its OnDone. A watcher whose
  // OnDone never comes is leaked rather than freed under gRPC's feet.
  void StopWatchers() {
    if (watchers_.empty()) {
      return;
    }
    {
      absl::MutexLock lock(&board_->mu);
      board_->stopping = true;
    }
    for (const std::unique_ptr<Watcher>& w : watchers_) {
      w->Cancel();
    }
    int started = static_cast<int>(watchers_.size());
    {
      absl::MutexLock lock(&board_->mu);
      auto all_done = [this, started]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(board_->mu) {
        return board_->done_count >= started;
      };
      board_->mu.AwaitWithDeadline(absl::Condition(&all_done), absl::Now() + kCancelTimeout);
      for (int i = 0; i < started; ++i) {
        if (!board_->done[i]) {
          (void)watchers_[i].release();  // leaked on purpose: gRPC may still call it
        }
      }
    }
    // The rest have had their OnDone, which touches nothing of theirs after
    // it drops the lock.
    watchers_.clear();
  }

  std::string LogTail() const {
    std::string log = etcd_ != nullptr ? etcd_->Output() : "";
    constexpr size_t kTail = 4000;
    return log.size() > kTail ? log.substr(log.size() - kTail) : log;
  }

  formica::testing::TempDir dir_;
  std::string log_path_;
  std::unique_ptr<formica::testing::Subprocess> etcd_;
  std::string endpoint_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::shared_ptr<Board> board_ = std::make_shared<Board>();
  std::vector<std::unique_ptr<Watcher>> watchers_;
  std::vector<std::thread> churn_;
  std::atomic<bool> churn_stop_{false};
  std::atomic<int64_t> churn_puts_{0};
  std::atomic<int64_t> churn_failures_{0};
};

// Nearest rank: the smallest sample with at least p of all samples at or
// below it. `sorted` is non-empty and ascending.
double Percentile(const std::vector<double>& sorted, double p) {
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

absl::StatusOr<std::string> EtcdVersion(const std::string& endpoint) {
  auto maintenance = etcdserverpb::Maintenance::NewStub(
      grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
  etcdserverpb::StatusResponse response;
  grpc::Status st = maintenance->Status(&context, etcdserverpb::StatusRequest(), &response);
  if (!st.ok()) {
    return absl::UnavailableError(
        absl::StrCat("etcd Maintenance.Status at ", endpoint, ": ", Describe(st)));
  }
  return response.version();
}

absl::StatusOr<FanoutResult> MeasureEtcdFanout(const EtcdFanoutOptions& options) {
  const int watchers = options.watchers;
  const int rounds = options.rounds;
  if (watchers < 1 || watchers > kMaxWatchers || rounds < 1 || rounds > kMaxRounds) {
    return absl::InvalidArgumentError(absl::StrCat("watchers must be in 1..", kMaxWatchers,
                                                   " and rounds in 1..", kMaxRounds, ", got ",
                                                   watchers, " and ", rounds));
  }
  if (absl::Status st = EnsureFdLimit(watchers); !st.ok()) {
    return st;
  }
  Run run;
  if (absl::Status st = run.StartEtcd(options.fsync); !st.ok()) {
    return st;
  }
  if (absl::Status st = run.WaitReady(); !st.ok()) {
    return st;
  }
  FanoutResult result;
  absl::StatusOr<std::string> version = run.Version();
  if (!version.ok()) {
    return version.status();
  }
  result.version = *version;
  if (absl::Status st = run.OpenWatchers(watchers); !st.ok()) {
    return st;
  }
  absl::Time churn_start = absl::Now();
  run.StartChurn(options.churn_per_s);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(watchers) * static_cast<size_t>(rounds));
  for (int round = 0; round < rounds; ++round) {
    absl::SleepFor(options.spacing);
    absl::StatusOr<int> missing = run.Round(round, samples);
    if (!missing.ok()) {
      return missing.status();
    }
    result.missing += *missing;
  }
  run.StopChurn();
  double churn_seconds = absl::ToDoubleSeconds(absl::Now() - churn_start);
  std::sort(samples.begin(), samples.end());
  result.p50_ms = samples.empty() ? 0 : Percentile(samples, 0.50);
  result.p99_ms = samples.empty() ? 0 : Percentile(samples, 0.99);
  result.watchers = watchers;
  result.rounds = rounds;
  result.samples = static_cast<int64_t>(samples.size());
  result.churn_puts = run.churn_puts();
  result.churn_failures = run.churn_failures();
  result.churn_per_s = churn_seconds > 0 ? result.churn_puts / churn_seconds : 0;
  return result;
}

absl::StatusOr<double> MeasureEtcdPuts(const std::string& endpoints, int clients, int per_client) {
  std::vector<std::string> list = absl::StrSplit(endpoints, ',');
  std::atomic<int> failures{0};
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> kvs;
  std::vector<int64_t> leases;
  for (int c = 0; c < clients; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel =
        grpc::CreateCustomChannel(list[c % list.size()], grpc::InsecureChannelCredentials(), args);
    kvs.push_back(etcdserverpb::KV::NewStub(channel));
    auto lease = etcdserverpb::Lease::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
    etcdserverpb::LeaseGrantRequest grant;
    grant.set_ttl(300);
    etcdserverpb::LeaseGrantResponse granted;
    grpc::Status st = lease->LeaseGrant(&context, grant, &granted);
    if (!st.ok()) {
      return absl::UnavailableError(absl::StrCat("etcd lease grant: ", Describe(st)));
    }
    leases.push_back(granted.id());
  }
  absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int k = 0; k < per_client; ++k) {
        etcdserverpb::PutRequest put;
        put.set_key(absl::StrCat("/formica-bench/puts/", c, "/", k));
        put.set_value(std::string(60, 'x'));  // about an instance's size
        put.set_lease(leases[c]);
        etcdserverpb::PutResponse response;
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
        if (!kvs[c]->Put(&context, put, &response).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (failures > 0) {
    return absl::UnavailableError(absl::StrCat(failures.load(), " etcd puts failed"));
  }
  return clients * per_client / seconds;
}

}  // namespace formica::bench
