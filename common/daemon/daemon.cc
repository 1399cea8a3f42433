#include "formica/internal/daemon.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

#include <spdlog/spdlog.h>

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formica/common/logging.h"
#include "formica/common/tls.h"
#include "formica/internal/permissions.h"

namespace formica {

absl::StatusOr<DaemonArgs> ParseDaemonArgs(int argc, char** argv, absl::string_view program,
                                           const std::map<std::string, std::string>& flag_to_key) {
  std::string usage = absl::StrCat(
      "usage: ", program, " [--config FILE.yaml] [--log-level LEVEL] [--set key=value]...");
  for (const auto& [flag, key] : flag_to_key) {
    absl::StrAppend(&usage, " [--", flag, " V]");
  }
  absl::StrAppend(&usage, "\n  flags override the config file; --", "set takes any config key");
  for (const auto& [flag, key] : flag_to_key) {
    absl::StrAppend(&usage, "\n  --", flag, " overrides ", key);
  }
  std::string config_path;
  std::vector<std::pair<std::string, std::string>> overrides;
  DaemonArgs out;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      return absl::CancelledError(usage);
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'\n", usage));
    }
    std::string name = arg.substr(2);
    std::string value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value\n", usage));
    }
    if (name == "config") {
      config_path = value;
    } else if (name == "log-level") {
      out.log_level = value;
    } else if (name == "set") {
      size_t e = value.find('=');
      if (e == std::string::npos || e == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--set wants key.path=value, got '", value, "'"));
      }
      overrides.emplace_back(value.substr(0, e), value.substr(e + 1));
    } else if (auto it = flag_to_key.find(name); it != flag_to_key.end()) {
      overrides.emplace_back(it->second, value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "\n", usage));
    }
  }
  if (!config_path.empty()) {
    absl::StatusOr<Config> loaded = Config::LoadFile(config_path);
    if (!loaded.ok()) {
      return loaded.status();
    }
    out.config = *std::move(loaded);
  }
  for (const auto& [key, value] : overrides) {
    if (absl::Status st = out.config.Set(key, value); !st.ok()) {
      return st;
    }
  }
  return out;
}

namespace {

// Self-pipe: the handler only writes the signal number; the main thread reads
// it. Works whichever thread the kernel picks to deliver the signal.
int g_signal_pipe[2] = {-1, -1};

void OnTerminationSignal(int sig) {
  unsigned char byte = static_cast<unsigned char>(sig);
  ssize_t ignored = write(g_signal_pipe[1], &byte, 1);
  (void)ignored;
}

}  // namespace

void InstallTerminationHandler() {
  if (g_signal_pipe[0] >= 0) {
    return;
  }
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    return;
  }
  struct sigaction action {};
  action.sa_handler = OnTerminationSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

int WaitForTerminationSignal() {
  unsigned char byte = 0;
  while (true) {
    ssize_t n = read(g_signal_pipe[0], &byte, 1);
    if (n == 1) {
      return byte;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    return 0;
  }
}

namespace daemon_internal {

int SetUp(absl::string_view program, const absl::StatusOr<DaemonArgs>& args) {
  if (!args.ok()) {
    bool help = absl::IsCancelled(args.status());
    std::fprintf(help ? stdout : stderr, "%s%s\n", help ? "" : absl::StrCat(program, ": ").c_str(),
                 std::string(args.status().message()).c_str());
    return help ? 0 : 2;
  }
  if (absl::Status st = InitLogging(program, args->log_level); !st.ok()) {
    return Fail(program, "", st, 2);
  }
  return -1;
}

int Fail(absl::string_view program, absl::string_view what, const absl::Status& status, int code) {
  std::fprintf(stderr, "%s: %s%s\n", std::string(program).c_str(), std::string(what).c_str(),
               std::string(status.message()).c_str());
  return code;
}

void ServeUntilSignal(absl::string_view program, int port) {
  std::printf("%s ready on port %d\n", std::string(program).c_str(), port);
  std::fflush(stdout);
  int sig = WaitForTerminationSignal();
  spdlog::info("signal {} received", sig);
}

}  // namespace daemon_internal

namespace daemon_internal {

absl::StatusOr<Config> UseTlsSection(const Config& config) {
  ConfigReader r(config, "tls");
  TlsOptions tls;
  tls.ca_file = r.String("tls.ca_file", "");
  tls.cert_file = r.String("tls.cert_file", "");
  tls.key_file = r.String("tls.key_file", "");
  tls.crl_file = r.String("tls.crl_file", "");
  tls.reload_interval =
      r.Duration("tls.reload_interval", tls.reload_interval, absl::Seconds(1), absl::Hours(24));
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  std::vector<std::string> missing;
  if (tls.ca_file.empty()) missing.push_back("tls.ca_file");
  if (tls.cert_file.empty()) missing.push_back("tls.cert_file");
  if (tls.key_file.empty()) missing.push_back("tls.key_file");
  if (missing.size() == 3) return config.Without("tls");
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.source(), ": ", missing[0],
                     ": not set; tls.ca_file, tls.cert_file and tls.key_file are given together"));
  }
  if (absl::Status st = UseTls(tls); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(config.source(), ": tls: ", st.message()));
  }
  spdlog::info("tls: mutual TLS with CA {}, certificate {}", tls.ca_file, tls.cert_file);
  return config.Without("tls");
}

absl::StatusOr<Config> UseSecuritySection(const Config& config) {
  ConfigReader r(config, "security");
  std::string file = r.String("security.permissions_file", "");
  absl::Duration reload = r.Duration("security.permissions_reload", absl::Seconds(5),
                                     absl::Milliseconds(100), absl::Hours(24));
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  if (file.empty()) return config.Without("security");
  if (absl::Status st = UsePermissions(file, reload); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.source(), ": security.permissions_file: ", st.message()));
  }
  spdlog::info("permissions: calls are checked against {}", file);
  return config.Without("security");
}

}  // namespace daemon_internal

}  // namespace formica
