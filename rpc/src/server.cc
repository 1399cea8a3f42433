#include "formica/rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "balancer.h"
#include "formica/registry/client.h"

namespace formica::rpc {

class Server::Impl {
 public:
  ServerOptions options;
  std::vector<HostedService> services;
  registry::Client* registry = nullptr;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  absl::Time started;
  std::thread warmup_thread;
  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool stopped = false;

  std::string Address() const { return absl::StrCat(options.advertise_host, ":", port); }

  absl::Status PublishAll(int32_t weight) {
    for (const HostedService& h : services) {
      registry::Instance inst;
      inst.service = h.name;
      inst.address = Address();
      inst.zone = options.zone;
      inst.weight = weight;
      inst.tags = options.tags;
      if (absl::Status st = registry->Publish(inst); !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }

  // Republishes the ramping weight until it is full.
  void WarmUp() {
    while (true) {
      absl::Duration uptime = absl::Now() - started;
      int32_t weight = WarmedWeight(options.weight, uptime, options.warmup);
      absl::Status st = PublishAll(weight);
      if (!st.ok()) {
        SPDLOG_WARN("warm-up republish failed: {}", st.ToString());
      }
      if (weight >= options.weight) return;
      absl::MutexLock lock(&mu);
      if (mu.AwaitWithTimeout(absl::Condition(&stopping), options.warmup_step)) return;
    }
  }
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options,
                                                      std::vector<HostedService> services,
                                                      registry::Client* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("rpc::Server needs a registry::Client");
  }
  if (services.empty()) {
    return absl::InvalidArgumentError("rpc::Server needs at least one service to host");
  }
  for (const HostedService& h : services) {
    if (h.service == nullptr || h.name.empty()) {
      return absl::InvalidArgumentError("every HostedService needs a name and a service");
    }
  }
  if (options.weight < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServerOptions.weight ", options.weight, " is negative"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->services = std::move(services);
  impl->registry = registry;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(impl->options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (const HostedService& h : impl->services) {
    builder.RegisterService(h.service);
  }
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", impl->options.listen, "': malformed or in use"));
  }
  impl->started = absl::Now();
  int32_t first = WarmedWeight(impl->options.weight, absl::ZeroDuration(), impl->options.warmup);
  if (absl::Status st = impl->PublishAll(first); !st.ok()) {
    impl->server->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot publish to the registry: ", st.message()));
  }
  if (first < impl->options.weight) {
    Impl* raw = impl.get();
    impl->warmup_thread = std::thread([raw] { raw->WarmUp(); });
  }
  SPDLOG_INFO("rpc server on {} ({} service(s), zone '{}', weight {})", impl->Address(),
              impl->services.size(), impl->options.zone, impl->options.weight);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Shutdown(); }

int Server::port() const { return impl_->port; }
std::string Server::address() const { return impl_->Address(); }

void Server::Shutdown() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->warmup_thread.joinable()) impl_->warmup_thread.join();
  // 1. Leave the registry: callers stop picking this provider.
  for (const HostedService& h : impl_->services) {
    absl::Status st = impl_->registry->Unpublish(h.name, impl_->Address());
    if (!st.ok() && !absl::IsNotFound(st)) {
      SPDLOG_WARN("unpublish of {} failed: {}", h.name, st.ToString());
    }
  }
  // 2. Keep serving while the removal reaches every caller.
  absl::SleepFor(impl_->options.unpublish_grace);
  // 3. Refuse new calls, let in-flight ones finish, then stop.
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + impl_->options.drain_timeout));
  impl_->server->Wait();
  SPDLOG_INFO("rpc server on {} stopped", impl_->Address());
}

}  // namespace formica::rpc
