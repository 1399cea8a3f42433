#include "registry_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <filesystem>

#include <optional>
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "embedded_backend.h"
#include "etcd_backend.h"
#include "formica/common/config.h"
#include "formica/internal/audit_log.h"
#include "formica/internal/credentials.h"
#include "formica/internal/metrics_endpoint.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_core.h"
#include "registry_service.h"
#include "registry_store.h"

namespace formica::registry {

namespace {

// dsrd's headline gauges (docs/metrics.md), read from the core at each scrape.
void WriteRegistryMetrics(RegistryCore& core, PrometheusText& out) {
  v1::ListSessionsResponse sessions;
  core.ListSessions(&sessions);
  out.Gauge("formica_registry_sessions", "Client sessions open on this node.",
            sessions.sessions_size());
  v1::ListServicesResponse services;
  uint64_t instances = 0;
  uint64_t subscribers = 0;
  if (core.ListServices(&services).ok()) {
    for (const v1::ServiceSummary& s : services.services()) {
      instances += s.instances();
      subscribers += s.subscribers();
    }
  }
  out.Gauge("formica_registry_services", "Services the registry lists.", services.services_size());
  out.Gauge("formica_registry_publications", "Published instances, over those services.",
            static_cast<double>(instances));
  out.Gauge("formica_registry_subscriptions", "Subscribers, over those services.",
            static_cast<double>(subscribers));
  v1::PushSwitchState push = core.SetStopPush(std::nullopt);
  out.Gauge("formica_registry_push_stopped", "1 while the operator's stop-push switch is on.",
            push.stop_push() ? 1 : 0);
  out.Gauge("formica_registry_warming_up", "1 while pushes wait for the start-up warm-up.",
            push.warming_up() ? 1 : 0);
  core.WritePushMetrics(out);
  out.Family("formica_registry_store_up", "gauge",
             "1 while the registry's store answers (store=\"etcd\": the etcd cluster, in "
             "cluster mode; \"embedded\": the node's own), else 0.");
  out.Sample("formica_registry_store_up",
             {{"store", core.BackendName() == "etcd" ? "etcd" : "embedded"}},
             core.BackendReachable() ? 1 : 0);
}

}  // namespace

class RegistryServer::Impl {
 public:
  std::unique_ptr<RegistryCore> core;
  std::unique_ptr<RegistryBackend> backend;
  std::unique_ptr<RegistryService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<MetricsEndpoint> metrics;
  std::unique_ptr<AuditLog> audit;  // operator acts (docs/security.md)
  absl::Duration shutdown_grace;
  int port = 0;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<RegistryServer>> RegistryServer::Start(
    RegistryServerOptions options) {
  if (options.registry_id.empty()) {
    options.registry_id = options.listen;
  }
  const bool cluster = options.engine == "etcd";
  RegistryCoreOptions core_options;
  core_options.registry_id = options.registry_id;
  core_options.default_lease = options.default_lease;
  core_options.min_lease = options.min_lease;
  core_options.max_lease = options.max_lease;
  core_options.merge_window = options.merge_window;
  core_options.push_retry = options.push_retry;
  core_options.sweep_interval = options.sweep_interval;
  core_options.limits = options.limits;
  // Negative: one default lease embedded (clients republish meanwhile);
  // none in cluster mode (etcd kept the publications).
  core_options.warmup = options.warmup >= absl::ZeroDuration() ? options.warmup
                        : cluster                              ? absl::ZeroDuration()
                                                               : options.default_lease;

  auto impl = std::make_unique<Impl>();
  impl->shutdown_grace = options.shutdown_grace;
  uint64_t epoch = 0;
  if (cluster) {
    impl->core = std::make_unique<RegistryCore>(core_options, options.clock);
    EtcdBackend::Options backend_options;
    backend_options.registry_id = options.registry_id;
    backend_options.cluster = options.cluster;
    if (backend_options.cluster.node_address.empty()) {
      backend_options.cluster.node_address = options.listen;
    }
    backend_options.limits = options.limits;
    absl::StatusOr<std::unique_ptr<EtcdBackend>> backend =
        EtcdBackend::Start(std::move(backend_options), impl->core.get(), impl->core->tables());
    if (!backend.ok()) {
      return backend.status();
    }
    impl->backend = std::move(*backend);
  } else {
    absl::StatusOr<std::unique_ptr<RegistryStore>> store =
        OpenRocksDbRegistryStore(options.data_dir);
    if (!store.ok()) {
      return store.status();
    }
    impl->core = std::make_unique<RegistryCore>(core_options, options.clock);
    EmbeddedBackend::Options backend_options;
    backend_options.registry_id = options.registry_id;
    backend_options.listen = options.listen;
    backend_options.limits = options.limits;
    absl::StatusOr<std::unique_ptr<EmbeddedBackend>> backend =
        EmbeddedBackend::Open(std::move(backend_options), std::move(*store), impl->core->tables());
    if (!backend.ok()) {
      return backend.status();
    }
    epoch = (*backend)->boot_epoch();
    impl->backend = std::move(*backend);
  }
  impl->core->AttachBackend(impl->backend.get());
  impl->core->StartMaintenance();
  impl->service = std::make_unique<RegistryService>(impl->core.get());
  {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir, ec);
    auto audit = AuditLog::Open(options.data_dir + "/formica-audit.log", "dsrd");
    if (!audit.ok()) {
      impl->backend->Shutdown();
      impl->core->StopMaintenance();
      return audit.status();
    }
    impl->audit = std::move(*audit);
    UseAuditLog(impl->audit.get());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, formica::ServerCredentials(), &impl->port);
  builder.RegisterService(impl->service.get());
  builder.RegisterService(impl->audit->service());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second dsrd on the same port would
  // then silently share its traffic. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    impl->backend->Shutdown();
    impl->core->StopMaintenance();
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "': the address is malformed or in use"));
  }
  impl->server->GetHealthCheckService()->SetServingStatus(v1::Registry::service_full_name(), true);
  if (!options.metrics_listen.empty()) {
    RegistryCore* core = impl->core.get();
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> metrics =
        MetricsEndpoint::Start(options.metrics_listen,
                               {[core](PrometheusText& out) { WriteRegistryMetrics(*core, out); }});
    if (!metrics.ok()) {
      impl->server->Shutdown();
      impl->backend->Shutdown();
      impl->core->StopMaintenance();
      return metrics.status();
    }
    impl->metrics = *std::move(metrics);
    SPDLOG_INFO("dsrd metrics on port {} (GET /metrics)", impl->metrics->port());
  }
  if (cluster) {
    SPDLOG_INFO(
        "dsrd listening on {} (port {}), node '{}' of cluster '{}', data in etcd at {} "
        "under {}",
        options.listen, impl->port, options.registry_id, options.cluster.cluster_name,
        absl::StrJoin(options.cluster.endpoints, ","), options.cluster.prefix);
  } else {
    SPDLOG_INFO("dsrd listening on {} (port {}), boot epoch {}, data in {}", options.listen,
                impl->port, epoch, options.data_dir);
  }
  return std::unique_ptr<RegistryServer>(new RegistryServer(std::move(impl)));
}

RegistryServer::RegistryServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RegistryServer::~RegistryServer() { Shutdown(); }

int RegistryServer::port() const { return impl_->port; }

void RegistryServer::Shutdown() {
  if (impl_->shut_down) {
    return;
  }
  impl_->shut_down = true;
  SPDLOG_INFO("dsrd shutting down");
  if (impl_->metrics != nullptr) impl_->metrics->Stop();  // its scrapes read the core
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  impl_->core->CloseAllStreams("the registry is shutting down");
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + impl_->shutdown_grace));
  impl_->server->Wait();
  impl_->service->StopWorker();
  UseAuditLog(nullptr);
  impl_->backend->Shutdown();  // its threads call into the core
  impl_->core->StopMaintenance();
  impl_->core.reset();
  impl_->backend.reset();  // closes the store
  SPDLOG_INFO("dsrd stopped");
}

// ---------------------------------------------------------------------------
// Options from YAML

absl::StatusOr<RegistryServerOptions> LoadRegistryServerOptions(const Config& config) {
  RegistryServerOptions o;
  ConfigReader r(config);
  o.listen = r.String("server.listen", o.listen);
  o.registry_id = r.String("server.id", o.registry_id);
  o.metrics_listen = r.String("metrics.listen", o.metrics_listen);
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  o.engine = r.String("storage.engine", o.engine);
  ClusterOptions& c = o.cluster;
  c.endpoints = r.StringList("storage.etcd.endpoints", c.endpoints);
  c.prefix = r.String("storage.etcd.prefix", c.prefix);
  c.request_timeout = r.Duration("storage.etcd.request_timeout", c.request_timeout,
                                 absl::Milliseconds(100), absl::Minutes(5));
  c.dial_timeout = r.Duration("storage.etcd.dial_timeout", c.dial_timeout, absl::Milliseconds(100),
                              absl::Minutes(10));
  c.cluster_name = r.String("cluster.name", c.cluster_name);
  c.node_address = r.String("cluster.advertise", c.node_address);
  c.node_lease =
      r.Duration("cluster.node_lease", c.node_lease, absl::Seconds(2), absl::Minutes(10));
  o.default_lease =
      r.Duration("session.lease", o.default_lease, absl::Milliseconds(200), absl::Hours(1));
  o.min_lease =
      r.Duration("session.min_lease", o.min_lease, absl::Milliseconds(100), absl::Hours(1));
  o.max_lease =
      r.Duration("session.max_lease", o.max_lease, absl::Milliseconds(200), absl::Hours(24));
  o.merge_window =
      r.Duration("push.merge_window", o.merge_window, absl::ZeroDuration(), absl::Seconds(10));
  o.push_retry =
      r.Duration("push.retry_interval", o.push_retry, absl::Milliseconds(10), absl::Minutes(10));
  if (r.Has("push.warmup")) {
    o.warmup = r.Duration("push.warmup", o.warmup, absl::ZeroDuration(), absl::Hours(1));
  }
  o.sweep_interval = r.Duration("session.sweep_interval", o.sweep_interval, absl::Milliseconds(5),
                                absl::Seconds(10));
  o.keepalive_time =
      r.Duration("server.keepalive_time", o.keepalive_time, absl::Seconds(1), absl::Hours(2));
  o.keepalive_timeout = r.Duration("server.keepalive_timeout", o.keepalive_timeout,
                                   absl::Milliseconds(100), absl::Minutes(10));
  o.shutdown_grace = r.Duration("server.shutdown_grace", o.shutdown_grace, absl::ZeroDuration(),
                                absl::Minutes(10));
  Limits& l = o.limits;
  l.max_name_length = static_cast<int>(r.Int("limits.max_name_length", l.max_name_length, 1, 4096));
  l.max_weight = static_cast<int>(r.Int("limits.max_weight", l.max_weight, 1, 1000000));
  l.max_tags = static_cast<int>(r.Int("limits.max_tags", l.max_tags, 0, 1024));
  l.max_metadata_bytes =
      r.Bytes("limits.max_metadata_bytes", l.max_metadata_bytes, 0, int64_t{1} << 24);
  l.max_config_value_bytes =
      r.Bytes("limits.max_config_value_bytes", l.max_config_value_bytes, 0, int64_t{64} << 20);
  if (o.listen.empty()) {
    r.Fail("server.listen", "must be host:port");
  }
  if (o.engine != "rocksdb" && o.engine != "etcd") {
    r.Fail("storage.engine", "must be 'rocksdb' (one node) or 'etcd' (cluster mode)");
  }
  if (o.engine == "rocksdb" && o.data_dir.empty()) {
    r.Fail("storage.data_dir", "must name a directory");
  }
  if (o.engine == "etcd") {
    if (c.endpoints.empty()) {
      r.Fail("storage.etcd.endpoints", "must list the etcd members (host:port) in cluster mode");
    }
    if (c.prefix.empty() || c.prefix.back() != '/') {
      r.Fail("storage.etcd.prefix", "must end with '/'");
    }
    if (c.cluster_name.empty()) {
      r.Fail("cluster.name", "must not be empty");
    }
  }
  if (o.min_lease > o.max_lease) {
    r.Fail("session.min_lease", "must not exceed session.max_lease");
  }
  if (o.default_lease < o.min_lease || o.default_lease > o.max_lease) {
    r.Fail("session.lease", "must lie between session.min_lease and session.max_lease");
  }
  if (absl::Status st = r.Finish(); !st.ok()) {
    return st;
  }
  return o;
}

}  // namespace formica::registry
