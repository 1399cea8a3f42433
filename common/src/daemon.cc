#include "formica/common/daemon.h"

#include <csignal>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

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

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace formica
