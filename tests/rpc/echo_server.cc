// A provider process for RPC tests: hosts formica.test.Echo with
// rpc::Server and publishes it to dsrd. Prints "serving on HOST:PORT".
//   echo_server --registry H:P [--zone Z] [--weight W] [--tag k=v]... [--warmup-ms N]
//               [--grace-ms N] [--delay-ms N] [--max-concurrent N] [--config FILE]
//               [--echo-context no] [--fail-percent N] [--count-calls no] [--pid-dir DIR]
// The handler runs inside rpc::Serve: it reads the caller's context from
// CurrentCallContext(), echoes it in the reply (not with --echo-context no:
// replies then carry the same fields whoever calls, as benchmarks need) and
// forwards with that context implied.
#include <grpcpp/grpcpp.h>

#include <unistd.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "formica/common/config.h"
#include "formica/common/tls.h"
#include "formica/internal/daemon.h"
#include "formica/registry/client.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/test/echo.grpc.pb.h"

namespace {

int g_delay_ms = 0;      // every call sleeps this long: a slow provider
int g_fail_percent = 0;  // this share of calls fails with INTERNAL: a bad version
std::atomic<uint64_t> g_calls{0};
bool g_echo_context = true;  // the reply carries the caller's context

class EchoImpl final : public formica::test::Echo::Service {
 public:
  EchoImpl(std::string zone, formica::rpc::Client* downstream)
      : zone_(std::move(zone)), downstream_(downstream) {}
  std::string address;

  grpc::Status Echo(grpc::ServerContext* context, const formica::test::EchoRequest* request,
                    formica::test::EchoResponse* response) override {
    return formica::rpc::Serve(context, [&] { return Handle(*context, *request, response); });
  }

 private:
  grpc::Status Handle(const grpc::ServerContext& context, const formica::test::EchoRequest& req,
                      formica::test::EchoResponse* response) {
    const formica::test::EchoRequest* request = &req;
    if (request->sleep_ms() + g_delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(request->sleep_ms() + g_delay_ms));
    }
    const formica::rpc::CallContext& c = *formica::rpc::CurrentCallContext();
    response->set_message(request->message());
    response->set_served_by(address);
    response->set_zone(zone_);
    if (g_echo_context) {
      response->set_caller_app(c.caller_app);
      response->set_user_id(c.user_id);
      response->set_txn_id(c.txn_id);
      response->set_traceparent(c.traceparent);
    }
    response->set_deadline_left_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       context.deadline() - std::chrono::system_clock::now())
                                       .count());
    if (!request->report_joined().empty()) formica::rpc::ReportJoined(request->report_joined());
    // Every (100 / N)th call, spread evenly: a deterministic failure rate.
    uint64_t n = g_calls.fetch_add(1);
    if (g_fail_percent > 0 && (n * g_fail_percent) / 100 != ((n + 1) * g_fail_percent) / 100) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "failing as configured (--fail-percent)");
    }
    if (request->fail()) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "asked to fail");
    }
    if (!request->forward_to().empty()) {
      formica::test::EchoRequest next;
      next.set_message(request->message());
      if (!request->report_joined().empty()) {
        next.set_report_joined(request->report_joined() + " downstream");
      }
      formica::rpc::CallOptions options;  // the served call's context and deadline are implied
      absl::Status st = downstream_->Call(
          request->forward_to(), options,
          [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
            return formica::test::Echo::NewStub(channel)->Echo(ctx, next,
                                                               response->mutable_downstream());
          });
      if (!st.ok()) {
        return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
      }
    }
    return grpc::Status::OK;
  }

  std::string zone_;
  formica::rpc::Client* downstream_;
};

}  // namespace

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", st.ToString().c_str());
    return 2;
  }
  formica::registry::ClientOptions registry_options;
  registry_options.client_name = "echo_server";
  formica::rpc::ServerOptions options;
  std::string pid_dir;
  options.unpublish_grace = absl::Milliseconds(500);
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::string value = argv[i + 1];
    if (flag == "--registry") {
      registry_options.registries.push_back(value);
    } else if (flag == "--zone") {
      options.zone = value;
    } else if (flag == "--weight") {
      options.weight = std::atoi(value.c_str());
    } else if (flag == "--tag") {
      options.tags[value.substr(0, value.find('='))] = value.substr(value.find('=') + 1);
    } else if (flag == "--warmup-ms") {
      options.warmup = absl::Milliseconds(std::atoi(value.c_str()));
      options.warmup_step = absl::Milliseconds(100);
    } else if (flag == "--delay-ms") {
      g_delay_ms = std::atoi(value.c_str());
    } else if (flag == "--pid-dir") {
      // For scripts that stop a provider by its address (deploy commands in
      // release tests): DIR/PORT.pid holds its pid.
      pid_dir = value;
    } else if (flag == "--count-calls") {
      options.count_calls = value != "no";
    } else if (flag == "--fail-percent") {
      g_fail_percent = std::atoi(value.c_str());
    } else if (flag == "--max-concurrent") {
      options.max_concurrent_calls = std::atoi(value.c_str());
    } else if (flag == "--grace-ms") {
      options.unpublish_grace = absl::Milliseconds(std::atoi(value.c_str()));
    } else if (flag == "--echo-context") {
      g_echo_context = value != "no";
    } else if (flag == "--listen") {
      options.listen = value;
    } else if (flag == "--config") {
      // rpc.server and rpc.client sections, as a service's own file has them.
      auto config = formica::Config::LoadFile(value);
      if (!config.ok()) {
        std::fprintf(stderr, "echo_server: %s\n", config.status().ToString().c_str());
        return 2;
      }
      auto loaded = formica::rpc::LoadServerOptions(*config);
      if (!loaded.ok()) {
        std::fprintf(stderr, "echo_server: invalid configuration: %s\n",
                     std::string(loaded.status().message()).c_str());
        return 2;
      }
      options = *loaded;
    } else {
      std::fprintf(stderr, "echo_server: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  auto registry = formica::registry::Client::Create(registry_options);
  if (!registry.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", registry.status().ToString().c_str());
    return 2;
  }
  formica::rpc::ClientOptions client_options;
  client_options.app_name = "echo_server";
  client_options.zone = options.zone;
  auto downstream = formica::rpc::Client::Create(client_options, registry->get());
  EchoImpl impl(options.zone, downstream->get());
  auto server = formica::rpc::Server::Start(
      options, {{formica::test::Echo::service_full_name(), &impl}}, registry->get());
  if (!server.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  impl.address = (*server)->address();
  if (!pid_dir.empty()) {
    std::string pid_file = pid_dir + "/" + std::to_string((*server)->port()) + ".pid";
    if (FILE* f = std::fopen(pid_file.c_str(), "w")) {
      std::fprintf(f, "%d\n", static_cast<int>(getpid()));
      std::fclose(f);
    }
  }
  std::printf("serving on %s\n", impl.address.c_str());
  std::fflush(stdout);
  formica::WaitForTerminationSignal();
  (*server)->Shutdown();
  std::printf("stopped\n");
  return 0;
}
