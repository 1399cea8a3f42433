// dmsd: the Formica message broker. See docs/dms.md.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "broker.h"
#include "formica/common/daemon.h"
#include "formica/common/logging.h"

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  absl::StatusOr<formica::DaemonArgs> args =
      formica::ParseDaemonArgs(argc, argv, "dmsd",
                               {{"listen", "server.listen"},
                                {"data-dir", "storage.data_dir"},
                                {"registry", "registry.addresses"}});
  if (!args.ok()) {
    bool help = absl::IsCancelled(args.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n",
                 help ? "" : "dmsd: ", std::string(args.status().message()).c_str());
    return help ? 0 : 2;
  }
  if (absl::Status st = formica::InitLogging("dmsd", args->log_level); !st.ok()) {
    std::fprintf(stderr, "dmsd: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  absl::StatusOr<formica::dms::BrokerOptions> options =
      formica::dms::LoadBrokerOptions(args->config);
  if (!options.ok()) {
    std::fprintf(stderr, "dmsd: invalid configuration: %s\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  auto server = formica::dms::Broker::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "dmsd: cannot start: %s\n",
                 std::string(server.status().message()).c_str());
    return 1;
  }
  // Tests and scripts read this line to learn the port.
  std::printf("dmsd ready on port %d\n", (*server)->port());
  std::fflush(stdout);
  int sig = formica::WaitForTerminationSignal();
  spdlog::info("signal {} received", sig);
  (*server)->Shutdown();
  return 0;
}
