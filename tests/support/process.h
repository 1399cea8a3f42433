// Test support: real processes, free ports and temp dirs, cleaned up even
// when a test fails. Every test and benchmark that starts a daemon goes
// through here.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::testing {

// A free TCP port on 127.0.0.1 (bound and released; good enough for tests),
// never one this process was given before.
int PickFreePort();

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process whose stdout and stderr go to one log file. The destructor
// kills it (SIGKILL) if it still runs.
class Subprocess {
 public:
  // `run_as`: a user to run it as (the caller must be root), or "".
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                           const std::string& log_path,
                                                           const std::string& run_as = "");
  ~Subprocess();

  pid_t pid() const { return pid_; }
  bool running();
  void Signal(int sig);
  // SIGKILL and reap.
  void Kill();
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status as
  // from waitpid's WEXITSTATUS, or 128+signal if killed.
  int Terminate(absl::Duration grace = absl::Seconds(10));
  // Waits for the process to exit by itself; -1 on timeout.
  int Wait(absl::Duration timeout);
  // Everything it printed so far.
  std::string Output() const;
  // How many times `text` occurs in its output so far.
  size_t CountInOutput(const std::string& text) const;
  // Waits until its output contains `text`; false on timeout or exit.
  bool WaitForOutput(const std::string& text, absl::Duration timeout);
  // The rest of the first output line that starts with `marker` (e.g. the
  // address after "serving on "), or empty.
  std::string LineAfter(const std::string& marker) const;

 private:
  Subprocess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string log_path_;
  bool reaped_ = false;
  int exit_code_ = -1;
};

// A dsrd started as a user would start it: the real binary with a YAML
// config file, on a loopback port, with its own data directory.
class DsrdProcess {
 public:
  struct Options {
    std::string data_dir;                       // required; survives restarts
    int port = 0;                               // 0: pick a free one (kept on restart)
    std::map<std::string, std::string> config;  // dotted key -> value, written as YAML
  };
  static absl::StatusOr<std::unique_ptr<DsrdProcess>> Start(Options options);
  ~DsrdProcess();

  std::string address() const;
  int port() const { return options_.port; }
  Subprocess* process() { return process_.get(); }
  // SIGTERM and wait; returns the exit code.
  int Stop();
  void Kill9();
  // Starts again on the same port and data directory.
  absl::Status Restart();

 private:
  explicit DsrdProcess(Options options) : options_(std::move(options)) {}
  absl::Status Launch();
  Options options_;
  std::unique_ptr<Subprocess> process_;
  int launches_ = 0;
};

// Path of a binary built by this project, e.g. BinaryPath("dsrd").
std::string BinaryPath(const std::string& name);

}  // namespace formica::testing
