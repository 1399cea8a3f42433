// dsrd: the Formica service registry daemon. See docs/registry.md.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "formica/common/daemon.h"
#include "formica/common/logging.h"
#include "registry_server.h"

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  absl::StatusOr<formica::DaemonArgs> args = formica::ParseDaemonArgs(
      argc, argv, "dsrd",
      {{"listen", "server.listen"}, {"data-dir", "storage.data_dir"}, {"lease", "session.lease"}});
  if (!args.ok()) {
    bool help = absl::IsCancelled(args.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n",
                 help ? "" : "dsrd: ", std::string(args.status().message()).c_str());
    return help ? 0 : 2;
  }
  if (absl::Status st = formica::InitLogging("dsrd", args->log_level); !st.ok()) {
    std::fprintf(stderr, "dsrd: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  absl::StatusOr<formica::registry::RegistryServerOptions> options =
      formica::registry::LoadRegistryServerOptions(args->config);
  if (!options.ok()) {
    std::fprintf(stderr, "dsrd: invalid configuration: %s\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  auto server = formica::registry::RegistryServer::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "dsrd: cannot start: %s\n",
                 std::string(server.status().message()).c_str());
    return 1;
  }
  // Tests and scripts read this line to learn the port.
  std::printf("dsrd ready on port %d\n", (*server)->port());
  std::fflush(stdout);
  int sig = formica::WaitForTerminationSignal();
  spdlog::info("signal {} received", sig);
  (*server)->Shutdown();
  return 0;
}
