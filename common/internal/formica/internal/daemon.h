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

// The steps of RunDaemon that do not depend on the daemon's types.
namespace daemon_internal {
// Prints usage or the flag error, sets up logging. -1: go on; else the exit code.
int SetUp(absl::string_view program, const absl::StatusOr<DaemonArgs>& args);
// Prints "<program>: <what><status message>" to stderr and returns `code`.
int Fail(absl::string_view program, absl::string_view what, const absl::Status& status, int code);
// Reads the `tls` section (ca_file, cert_file, key_file, reload_interval:
// formica/common/tls.h) and puts it in force for the process; returns the
// config without it for the daemon's own loader. INVALID_ARGUMENT naming
// the key or file at fault.
absl::StatusOr<Config> UseTlsSection(const Config& config);
// The same for the `security` section: permissions_file and
// permissions_reload (formica/internal/permissions.h).
absl::StatusOr<Config> UseSecuritySection(const Config& config);
// Prints "<program> ready on port N" (tests and scripts read it) and waits
// for SIGTERM or SIGINT.
void ServeUntilSignal(absl::string_view program, int port);
}  // namespace daemon_internal

// A daemon's whole main(): flags and config (exit 2 on a bad one, naming
// it), logging, the transport and permissions (the `tls` and `security`
// sections), `load` (options from the config; exit 2 when invalid),
// `start` (exit 1 when it cannot), the ready line, then waiting for SIGTERM
// and Shutdown(). `start` returns a unique_ptr to something with port() and
// Shutdown().
//
//   int main(int argc, char** argv) {
//     return formica::RunDaemon(argc, argv, "dtsd", {{"listen", "server.listen"}},
//                               dts::LoadCoordinatorOptions, dts::Coordinator::Start);
//   }
template <typename Load, typename Start>
int RunDaemon(int argc, char** argv, absl::string_view program,
              const std::map<std::string, std::string>& flag_to_key, Load load, Start start) {
  InstallTerminationHandler();
  absl::StatusOr<DaemonArgs> args = ParseDaemonArgs(argc, argv, program, flag_to_key);
  if (int code = daemon_internal::SetUp(program, args); code >= 0) return code;
  absl::StatusOr<Config> config = daemon_internal::UseTlsSection(args->config);
  if (config.ok()) config = daemon_internal::UseSecuritySection(*config);
  if (!config.ok()) {
    return daemon_internal::Fail(program, "invalid configuration: ", config.status(), 2);
  }
  auto options = load(*config);
  if (!options.ok()) {
    return daemon_internal::Fail(program, "invalid configuration: ", options.status(), 2);
  }
  auto daemon = start(*std::move(options));
  if (!daemon.ok()) return daemon_internal::Fail(program, "cannot start: ", daemon.status(), 1);
  daemon_internal::ServeUntilSignal(program, (*daemon)->port());
  (*daemon)->Shutdown();
  return 0;
}

}  // namespace formica
