// dtsd's gRPC side: formica.dts.v1.Coordinator over the engines (the
// activity state machine, group commit, the phase-two scheduler, recovery
// and retention), and how they are put together, started and stopped.
#include <sys/resource.h>

#include "coordinator.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "activity_engine.h"
#include "activity_store.h"
#include "formica/common/config.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/audit_log.h"
#include "formica/internal/credentials.h"
#include "formica/internal/metrics_endpoint.h"
#include "formica/internal/permissions.h"
#include "formica/internal/server_options.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/server.h"
#include "group_commit.h"
#include "leadership.h"
#include "phase_two.h"
#include "recovery.h"
#include "replicated_activity_store.h"
#include "rpc_phase_two_sender.h"

namespace formica::dts {
namespace {

constexpr int kMaxBatch = 1000;

// The API runs on gRPC's callback threads. Enlists and decisions are written
// without a sync and answered from the group-commit thread once a sync that
// covers them is done: no thread parked per call.
class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  CoordinatorService(ActivityEngine* engine, GroupCommit* commit, ActivityStore* store,
                     RpcPhaseTwoSender* sender)
      : engine_(engine), commit_(commit), store_(store), sender_(sender) {}

 private:
  using Reactor = grpc::ServerUnaryReactor;

  static Reactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& st) {
    Reactor* r = ctx->DefaultReactor();
    r->Finish(ToGrpcStatus(st));
    return r;
  }

  // Answers once the writes made so far are durable; runs `then` first
  // (e.g. starts phase two of a decision now on disk).
  // `generation`: the store's, read before the writes were made.
  Reactor* AnswerDurable(grpc::CallbackServerContext* ctx, uint64_t generation,
                         const absl::Status& st, std::function<void()> then = nullptr) {
    // Errors wait for the sync too: a refusal may name a concurrent
    // decision that is not on disk yet.
    // A replicated dtsd's sync fails when it loses its leadership: the
    // answer is then that failure (the outcome is the next leader's).
    Reactor* r = ctx->DefaultReactor();
    commit_->AfterSync(generation, [r, st, then = std::move(then)](const absl::Status& synced) {
      if (!synced.ok()) return r->Finish(ToGrpcStatus(synced));
      if (then) then();
      r->Finish(ToGrpcStatus(st));
    });
    return r;
  }

  // The caller's certificate identity ("" over plaintext): the engine
  // lets only an activity's initiator decide it and only an action's
  // participant report on it (docs/security.md).
  static std::string Identity(grpc::CallbackServerContext* ctx) {
    return PeerIdentity(*ctx->auth_context());
  }
  static absl::Status Logged(absl::Status st) {
    if (absl::IsPermissionDenied(st)) SPDLOG_WARN("{}", std::string(st.message()));
    return st;
  }

  Reactor* Begin(grpc::CallbackServerContext* ctx, const v1::BeginRequest* req,
                 v1::BeginResponse* resp) override {
    return Answer(ctx, engine_->Begin(*req, resp, Identity(ctx)));
  }
  Reactor* Enlist(grpc::CallbackServerContext* ctx, const v1::EnlistRequest* req,
                  v1::EnlistResponse*) override {
    const uint64_t generation = commit_->generation();
    return AnswerDurable(ctx, generation, Logged(engine_->Enlist(*req, Identity(ctx))));
  }
  Reactor* Commit(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                  v1::DecisionResponse* resp) override {
    const uint64_t generation = commit_->generation();
    std::function<void()> start;
    absl::Status st = Logged(engine_->Decide(*req, true, resp, &start, Identity(ctx)));
    return AnswerDurable(ctx, generation, st, std::move(start));
  }
  Reactor* Rollback(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                    v1::DecisionResponse* resp) override {
    const uint64_t generation = commit_->generation();
    std::function<void()> start;
    absl::Status st = Logged(engine_->Decide(*req, false, resp, &start, Identity(ctx)));
    return AnswerDurable(ctx, generation, st, std::move(start));
  }
  Reactor* Batch(grpc::CallbackServerContext* ctx, const v1::BatchRequest* req,
                 v1::BatchResponse* resp) override {
    if (req->ops_size() > kMaxBatch) {
      return Answer(ctx, absl::InvalidArgumentError(absl::StrCat(
                             "a batch holds at most ", kMaxBatch, " ops, got ", req->ops_size())));
    }
    const uint64_t generation = commit_->generation();
    std::vector<std::function<void()>> starters;
    bool durable = false;
    const std::string identity = Identity(ctx);
    for (const v1::CoordinatorOp& op : req->ops()) {
      v1::OpResult* result = resp->add_results();
      absl::Status st;
      switch (op.op_case()) {
        case v1::CoordinatorOp::kBegin: {
          v1::BeginResponse begun;
          st = engine_->Begin(op.begin(), &begun, identity);
          result->set_activity_id(begun.activity_id());
          break;
        }
        case v1::CoordinatorOp::kEnlist:
          st = Logged(engine_->Enlist(op.enlist(), identity));
          durable = true;
          break;
        case v1::CoordinatorOp::kCommit:
        case v1::CoordinatorOp::kRollback: {
          bool commit = op.op_case() == v1::CoordinatorOp::kCommit;
          std::function<void()> start;
          v1::DecisionResponse decision;
          st = Logged(engine_->Decide(commit ? op.commit() : op.rollback(), commit, &decision,
                                      &start, identity));
          result->set_state(decision.state());
          if (start) starters.push_back(std::move(start));
          durable = true;
          break;
        }
        case v1::CoordinatorOp::kResolve: {
          std::function<void()> start;
          v1::ActivityState state = v1::ACTIVITY_STATE_UNSPECIFIED;
          v1::ActionState action_state = v1::ACTION_STATE_UNSPECIFIED;
          st = Logged(engine_->Resolve(op.resolve(), &state, &action_state, &start, identity));
          result->set_state(state);
          result->set_action_state(action_state);
          if (start) {
            starters.push_back(std::move(start));
            durable = true;
          }
          break;
        }
        default:
          st = absl::InvalidArgumentError(
              "a batch op must be begin, enlist, commit, rollback or resolve");
      }
      result->set_code(static_cast<int>(st.code()));
      result->set_message(std::string(st.message()));
    }
    if (!durable) return Answer(ctx, absl::OkStatus());
    return AnswerDurable(ctx, generation, absl::OkStatus(), [starters = std::move(starters)] {
      for (const auto& start : starters) start();
    });
  }
  Reactor* Get(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
               v1::Activity* resp) override {
    absl::StatusOr<v1::Activity> a = engine_->Get(req->activity_id());
    if (a.ok()) *resp = *std::move(a);
    return Answer(ctx, a.status());
  }
  Reactor* List(grpc::CallbackServerContext* ctx, const v1::ListRequest* req,
                v1::ListResponse* resp) override {
    return Answer(ctx, engine_->List(*req, resp));
  }
  Reactor* Retry(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                 v1::DecisionResponse* resp) override {
    absl::Status st = CheckCaller(ctx, "operate", "dts");
    if (st.ok()) st = engine_->Retry(*req, resp);
    RecordAct(ctx, "dts.retry", absl::StrCat("activity=", req->activity_id()), st);
    return Answer(ctx, st);
  }
  Reactor* Settle(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                  v1::DecisionResponse* resp) override {
    absl::Status st = CheckCaller(ctx, "operate", "dts");
    if (st.ok()) st = engine_->Settle(*req, resp);
    RecordAct(ctx, "dts.settle", absl::StrCat("activity=", req->activity_id()), st);
    return Answer(ctx, st);
  }
  Reactor* GetStats(grpc::CallbackServerContext* ctx, const v1::StatsRequest*,
                    v1::Stats* s) override {
    ActivityStats a = engine_->stats();
    s->set_begun(a.begun);
    s->set_committed(a.committed);
    s->set_rolled_back(a.rolled_back);
    s->set_timed_out(a.timed_out);
    s->set_unfinished(a.unfinished);
    s->set_phase_two_calls(sender_->calls());
    s->set_phase_two_failures(a.phase_two_failures);
    s->set_synced_writes(a.synced_writes);
    s->set_wal_syncs(store_->syncs());
    s->set_stored_bytes(store_->written_bytes());
    s->set_check_backs(a.check_backs);
    struct rusage usage {};
    if (getrusage(RUSAGE_SELF, &usage) == 0) {
      auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
      s->set_cpu_seconds(secs(usage.ru_utime) + secs(usage.ru_stime));
    }
    return Answer(ctx, absl::OkStatus());
  }

  ActivityEngine* const engine_;
  GroupCommit* const commit_;
  ActivityStore* const store_;
  RpcPhaseTwoSender* const sender_;
};

}  // namespace

// The pieces of a running dtsd, in the order they are made (and the
// reverse of the order they go).
class Coordinator::Impl {
 public:
  CoordinatorOptions options;
  std::unique_ptr<ActivityStore> store;
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<rpc::Client> rpc;
  std::unique_ptr<RpcPhaseTwoSender> sender;
  std::unique_ptr<PhaseTwoScheduler> scheduler;
  std::unique_ptr<ActivityEngine> engine;
  std::unique_ptr<GroupCommit> commit;
  std::unique_ptr<RetentionSweeper> sweeper;
  std::unique_ptr<CoordinatorService> service;
  // Replicated (options.raft): the store is a ReplicatedActivityStore on
  // `node`, and `leadership` serves, drives and publishes only while leading.
  ReplicatedActivityStore* replicated = nullptr;
  std::unique_ptr<rpc::Discovery> registry_discovery;
  std::unique_ptr<LeaderDiscovery> discovery;
  std::unique_ptr<RaftNode> node;
  std::unique_ptr<CoordinatorLeadership> leadership;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<AuditLog> audit;  // operator acts (docs/security.md)
  std::unique_ptr<MetricsEndpoint> metrics;
  uint64_t epoch = 0;
  bool shut_down = false;

  // dtsd's own counters, as GetStats answers them (docs/metrics.md).
  void WriteMetrics(PrometheusText& out) {
    ActivityStats a = engine->stats();
    out.Counter("formica_dts_begun_total", "Business activities begun.", a.begun);
    out.Counter("formica_dts_committed_total", "Activities decided to commit (confirm).",
                a.committed);
    out.Counter("formica_dts_rolled_back_total", "Activities decided to roll back (cancel).",
                a.rolled_back);
    out.Counter("formica_dts_timed_out_total",
                "Activities rolled back because their deadline passed undecided.", a.timed_out);
    out.Gauge("formica_dts_unfinished_activities",
              "Activities not yet finished (active, or decided with phase two owed).",
              a.unfinished);
    out.Counter("formica_dts_check_backs_total", "Participants' check-back (Resolve) calls.",
                a.check_backs);
    out.Counter("formica_dts_phase_two_calls_total",
                "Confirm and cancel calls made to participants.", sender->calls());
    out.Counter("formica_dts_phase_two_failures_total",
                "Confirm and cancel calls that failed and are retried.", a.phase_two_failures);
    out.Counter("formica_dts_wal_syncs_total", "Syncs of the activity log to disk.",
                store->syncs());
    out.Counter("formica_dts_synced_writes_total",
                "Enlists and decisions written and covered by a sync.", a.synced_writes);
    out.Counter("formica_dts_written_bytes_total", "Bytes written to the activity log.",
                store->written_bytes());
    out.Counter("formica_dts_phase_two_retries_total",
                "Confirm and cancel calls made again after a failed one.", a.phase_two_retries);
    UnfinishedView u = engine->Unfinished();
    out.Family("formica_dts_unfinished_by_state", "gauge",
               "Unfinished activities by state (ACTIVE, COMMITTING, ROLLING_BACK).");
    for (const char* state : {"ACTIVE", "COMMITTING", "ROLLING_BACK"}) {
      auto it = u.by_state.find(state);
      out.Sample("formica_dts_unfinished_by_state", {{"state", state}},
                 it == u.by_state.end() ? 0 : static_cast<double>(it->second));
    }
    out.Gauge("formica_dts_oldest_unfinished_age_seconds",
              "Age of the oldest unfinished activity (0 when none).",
              u.oldest_begun_unix_ms == 0 ? 0 : (u.now_unix_ms - u.oldest_begun_unix_ms) / 1e3);
    commit->sync_latency().Write(out, "formica_dts_wal_sync_duration_seconds",
                                 "Time each group-commit sync of the activity log took.");
  }

  void Shutdown() {
    if (shut_down) return;
    shut_down = true;
    if (server != nullptr) server->Shutdown();  // unpublish, drain API calls
    UseAuditLog(nullptr);
    if (metrics != nullptr) metrics->Stop();        // its scrapes read the engine
    if (leadership != nullptr) leadership->Stop();  // steps down: nothing more is written
    if (commit != nullptr) commit->Stop();          // answers every call still owed a sync
    if (node != nullptr) node->Stop();
    if (scheduler != nullptr) scheduler->Stop();
    if (sweeper != nullptr) sweeper->Stop();
    if (scheduler != nullptr) {
      // Phase-two calls out now end by their deadline (call_timeout): wait
      // for every one, since their completions use the engine.
      scheduler->WaitIdle();
      SPDLOG_INFO("dtsd stopped with {} unfinished activities on disk", engine->stats().unfinished);
    }
    rpc.reset();
  }
};

namespace {

// Joins the group (docs/ha.md) once the server runs: its address goes into
// the log with each epoch this member takes as leader, for followers to name.
absl::Status StartReplication(Coordinator::Impl& impl) {
  const CoordinatorOptions& o = impl.options;
  impl.replicated->SetApiAddress(impl.server->address());
  Clock* clock = Clock::Real();
  LeadershipParts parts;
  parts.store = impl.replicated;
  parts.engine = impl.engine.get();
  parts.scheduler = impl.scheduler.get();
  parts.discovery = impl.discovery.get();
  ActivityStore* store = impl.store.get();
  parts.make_sweeper = [store, clock, retention = o.finished_retention,
                        interval = o.sweep_interval] {
    return std::make_unique<RetentionSweeper>(store, clock, retention, interval);
  };
  // The node starts before the leadership follows it: roles reported
  // meanwhile are read back from its status at Start.
  impl.leadership = std::make_unique<CoordinatorLeadership>(o.raft->node_id, parts);
  CoordinatorLeadership* leadership = impl.leadership.get();
  absl::StatusOr<std::unique_ptr<RaftNode>> node = RaftNode::Start(
      *o.raft, impl.replicated, [leadership](const RaftNodeStatus& s) { leadership->OnRole(s); });
  if (!node.ok()) return node.status();
  impl.node = *std::move(node);
  impl.replicated->Attach(impl.node.get());
  impl.leadership->Start(impl.node.get());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("dtsd needs at least one registry (dsrd) address");
  }
  if (options.retry_initial <= absl::ZeroDuration() || options.retry_max < options.retry_initial) {
    return absl::InvalidArgumentError(
        "phase_two.retry_initial must be positive and at most retry_max");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  const CoordinatorOptions& o = impl->options;
  absl::StatusOr<std::unique_ptr<ActivityStore>> store = OpenRocksDbActivityStore(o.data_dir);
  if (!store.ok()) return store.status();
  impl->store = *std::move(store);
  if (o.raft.has_value()) {
    // A new group starts from empty stores: activities already here (a
    // single dtsd's) would be on this member only.
    std::error_code ec;
    bool fresh_group = !std::filesystem::exists(o.raft->data_dir, ec) ||
                       std::filesystem::is_empty(o.raft->data_dir, ec);
    bool holds_activities = false;
    absl::Status scanned = impl->store->Scan([&](const v1::Activity&) {
      holds_activities = true;
      return false;
    });
    if (!scanned.ok()) return scanned;
    if (fresh_group && holds_activities) {
      return absl::FailedPreconditionError(absl::StrCat(
          "storage.data_dir ", o.data_dir, " holds activities, but raft.data_dir ",
          o.raft->data_dir,
          " is new: a replicated group starts from an empty storage.data_dir on every member "
          "(finish or move these activities with a single dtsd first)"));
    }
    auto replicated =
        std::make_unique<ReplicatedActivityStore>(std::move(impl->store), o.raft->node_id);
    impl->replicated = replicated.get();
    impl->store = std::move(replicated);
  }
  absl::StatusOr<std::unique_ptr<AuditLog>> audit =
      AuditLog::Open(o.data_dir + "/formica-audit.log", "dtsd");
  if (!audit.ok()) return audit.status();
  impl->audit = *std::move(audit);
  UseAuditLog(impl->audit.get());
  if (impl->replicated == nullptr) {  // replicated: each leader takes one through the log
    absl::StatusOr<uint64_t> epoch = impl->store->NextBootEpoch();
    if (!epoch.ok()) return epoch.status();
    impl->epoch = *epoch;
  }

  registry::ClientOptions ro;
  ro.registries = o.registries;
  ro.client_name = "dtsd";
  absl::StatusOr<std::unique_ptr<registry::Client>> registry = registry::Client::Create(ro);
  if (!registry.ok()) return registry.status();
  impl->registry = *std::move(registry);
  rpc::ClientOptions co;
  co.app_name = "dtsd";
  co.zone = o.zone;
  co.default_timeout = o.call_timeout;
  absl::StatusOr<std::unique_ptr<rpc::Client>> rpc = rpc::Client::Create(co, impl->registry.get());
  if (!rpc.ok()) return rpc.status();
  impl->rpc = *std::move(rpc);

  Clock* clock = Clock::Real();
  impl->sender = std::make_unique<RpcPhaseTwoSender>(impl->rpc.get(), o.call_timeout);
  impl->scheduler = std::make_unique<PhaseTwoScheduler>(
      clock, PhaseTwoOptions{o.retry_initial, o.retry_max, o.max_in_flight, 0}, impl->sender.get());
  impl->engine = std::make_unique<ActivityEngine>(
      impl->store.get(), clock, impl->scheduler.get(),
      ActivityLimits{o.default_timeout, o.max_timeout, o.max_actions, o.retry_initial,
                     o.finished_retention},
      impl->epoch);
  impl->scheduler->Attach(impl->engine.get());
  impl->commit = std::make_unique<GroupCommit>(impl->store.get(),
                                               /*abort_on_failure=*/impl->replicated == nullptr);
  impl->sweeper = std::make_unique<RetentionSweeper>(impl->store.get(), clock, o.finished_retention,
                                                     o.sweep_interval);
  impl->service = std::make_unique<CoordinatorService>(impl->engine.get(), impl->commit.get(),
                                                       impl->store.get(), impl->sender.get());

  if (impl->replicated != nullptr) {
    impl->engine->StopServing("this dtsd is starting; it serves once it leads its group");
    impl->commit->Start();
    impl->registry_discovery = std::make_unique<rpc::RegistryDiscovery>(impl->registry.get());
    impl->discovery = std::make_unique<LeaderDiscovery>(impl->registry_discovery.get());
  } else {
    if (absl::Status st = RecoverActivities(*impl->store, *impl->engine); !st.ok()) return st;
    impl->scheduler->Start();
    impl->commit->Start();
    impl->sweeper->Start();
  }

  rpc::ServerOptions so;
  so.listen = o.listen;
  so.advertise_host = o.advertise_host;
  so.zone = o.zone;
  so.unpublish_grace = o.unpublish_grace;
  so.drain_timeout = o.drain_timeout;
  std::vector<rpc::HostedService> hosted = {
      {v1::Coordinator::service_full_name(), impl->service.get()},
      {"formica.dts.Audit", impl->audit->service()}};
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      impl->discovery != nullptr ? rpc::Server::Start(so, hosted, impl->discovery.get())
                                 : rpc::Server::Start(so, hosted, impl->registry.get());
  if (!server.ok()) {
    impl->Shutdown();
    return server.status();
  }
  impl->server = *std::move(server);
  if (impl->replicated != nullptr) {
    if (absl::Status st = StartReplication(*impl); !st.ok()) {
      impl->Shutdown();
      return st;
    }
  }
  if (!o.metrics_listen.empty()) {
    Impl* raw = impl.get();
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> metrics = MetricsEndpoint::Start(
        o.metrics_listen,
        {[raw](PrometheusText& out) { raw->WriteMetrics(out); },
         [](PrometheusText& out) { out.Append(rpc::CallMetricsPrometheusText()); }});
    if (!metrics.ok()) {
      impl->Shutdown();
      return metrics.status();
    }
    impl->metrics = *std::move(metrics);
    SPDLOG_INFO("dtsd metrics on port {} (GET /metrics)", impl->metrics->port());
  }
  if (impl->replicated != nullptr) {
    SPDLOG_INFO("dtsd on {}: raft member {} of {}, serving while it leads", impl->server->address(),
                o.raft->node_id, o.raft->peers.size());
  } else {
    SPDLOG_INFO("dtsd serving on {} (boot epoch {:x})", impl->server->address(), impl->epoch);
  }
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() { Shutdown(); }
int Coordinator::port() const { return impl_->server->port(); }
void Coordinator::Shutdown() { impl_->Shutdown(); }

absl::StatusOr<CoordinatorOptions> LoadCoordinatorOptions(const Config& config) {
  CoordinatorOptions o;
  ConfigReader r(config);
  ServerSection server = ReadServerSectionInto(r, &o);
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  o.default_timeout = r.Duration("activity.default_timeout", o.default_timeout,
                                 absl::Milliseconds(10), absl::Hours(24 * 7));
  o.max_timeout = r.Duration("activity.max_timeout", o.max_timeout, absl::Milliseconds(10),
                             absl::Hours(24 * 30));
  o.max_actions = static_cast<int>(r.Int("activity.max_actions", o.max_actions, 1, 100000));
  o.finished_retention = r.Duration("activity.finished_retention", o.finished_retention,
                                    absl::Seconds(1), absl::Hours(24 * 366));
  o.sweep_interval = r.Duration("activity.sweep_interval", o.sweep_interval,
                                absl::Milliseconds(100), absl::Hours(24));
  o.call_timeout = r.Duration("phase_two.call_timeout", o.call_timeout, absl::Milliseconds(10),
                              absl::Minutes(10));
  o.retry_initial =
      r.Duration("phase_two.retry_initial", o.retry_initial, absl::Milliseconds(1), absl::Hours(1));
  o.retry_max =
      r.Duration("phase_two.retry_max", o.retry_max, absl::Milliseconds(1), absl::Hours(24));
  o.max_in_flight = static_cast<int>(r.Int("phase_two.max_in_flight", o.max_in_flight, 1, 100000));
  // Replicated when any raft.* key is given (docs/ha.md).
  for (const char* key :
       {"raft.node_id", "raft.peers", "raft.data_dir", "raft.listen", "raft.election_timeout",
        "raft.heartbeat", "raft.snapshot_threshold", "raft.snapshot_trailing"}) {
    if (!r.Has(key)) continue;
    RaftNodeOptions raft;
    ReadRaftSection(r, &raft);
    o.raft = std::move(raft);
    break;
  }
  CheckServerSection(r, server);
  if (o.retry_max < o.retry_initial) {
    r.Fail("phase_two.retry_max", "must be at least phase_two.retry_initial");
  }
  if (o.default_timeout > o.max_timeout) {
    r.Fail("activity.default_timeout", "must be at most activity.max_timeout");
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

}  // namespace formica::dts
