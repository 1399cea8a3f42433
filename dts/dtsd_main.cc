// dtsd: the Formica transaction coordinator. See docs/dts.md.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "coordinator.h"
#include "formica/common/daemon.h"
#include "formica/common/logging.h"

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  absl::StatusOr<formica::DaemonArgs> args =
      formica::ParseDaemonArgs(argc, argv, "dtsd",
                               {{"listen", "server.listen"},
                                {"data-dir", "storage.data_dir"},
                                {"registry", "registry.addresses"}});
  if (!args.ok()) {
    bool help = absl::IsCancelled(args.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n",
                 help ? "" : "dtsd: ", std::string(args.status().message()).c_str());
    return help ? 0 : 2;
  }
  if (absl::Status st = formica::InitLogging("dtsd", args->log_level); !st.ok()) {
    std::fprintf(stderr, "dtsd: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  absl::StatusOr<formica::dts::CoordinatorOptions> options =
      formica::dts::LoadCoordinatorOptions(args->config);
  if (!options.ok()) {
    std::fprintf(stderr, "dtsd: invalid configuration: %s\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  auto server = formica::dts::Coordinator::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "dtsd: cannot start: %s\n",
                 std::string(server.status().message()).c_str());
    return 1;
  }
  // Tests and scripts read this line to learn the port.
  std::printf("dtsd ready on port %d\n", (*server)->port());
  std::fflush(stdout);
  int sig = formica::WaitForTerminationSignal();
  spdlog::info("signal {} received", sig);
  (*server)->Shutdown();
  return 0;
}
