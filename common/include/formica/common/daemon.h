// What every Formica daemon's main() does the same way: read --config FILE,
// apply flag overrides onto config keys, set up logging, and wait for
// SIGTERM or SIGINT.
#pragma once

#include <map>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "formica/common/config.h"

namespace formica {

struct DaemonArgs {
  Config config;
  std::string log_level = "info";
};

// Parses `--config FILE`, `--log-level L`, `--set key.path=value`, and the
// daemon's own flags given in `flag_to_key` (e.g. {"listen", "server.listen"}),
// which override the file. Both `--flag value` and `--flag=value` work.
// `--help` yields a CANCELLED status whose message is the usage text.
absl::StatusOr<DaemonArgs> ParseDaemonArgs(int argc, char** argv, absl::string_view program,
                                           const std::map<std::string, std::string>& flag_to_key);

// Catches SIGTERM and SIGINT so that WaitForTerminationSignal() returns
// instead of the process dying. Call first in main().
void InstallTerminationHandler();

// Waits until SIGTERM or SIGINT arrives; returns the signal number.
int WaitForTerminationSignal();

}  // namespace formica
