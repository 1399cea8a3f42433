#include "process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace formica::testing {

int PickFreePort() {
  // A port handed out once is never handed out again by this process: the
  // kernel may give the same free port to two picks in a row, and a test
  // that picks several ports before binding them (a group's API and Raft
  // ports) would then start two listeners on one port.
  static absl::Mutex mu(absl::kConstInit);
  static std::set<int>* given = new std::set<int>();
  absl::MutexLock lock(&mu);
  int port = 0;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    close(fd);
    if (given->insert(port).second) break;
  }
  return port;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/formica-test-XXXXXX");
  char* made = mkdtemp(templ.data());
  path_ = made != nullptr ? made : templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const std::vector<std::string>& argv,
                                                              const std::string& log_path,
                                                              const std::string& run_as) {
  if (argv.empty()) {
    return absl::InvalidArgumentError("empty argv");
  }
  uid_t uid = 0;
  gid_t gid = 0;
  if (!run_as.empty()) {
    struct passwd* pw = getpwnam(run_as.c_str());
    if (pw == nullptr) return absl::NotFoundError(absl::StrCat("no user ", run_as));
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open log file ", log_path));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    if (!run_as.empty() && (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) {
      _exit(126);
    }
    // Die with the test: no orphan daemons even if the test crashes (set
    // after the user change, which would clear it).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, STDIN_FILENO);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(log_fd);
  return std::unique_ptr<Subprocess>(new Subprocess(pid, log_path));
}

Subprocess::~Subprocess() {
  if (!reaped_) {
    Kill();
  }
}

bool Subprocess::running() {
  if (reaped_) {
    return false;
  }
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

void Subprocess::Signal(int sig) {
  if (!reaped_) {
    kill(pid_, sig);
  }
}

void Subprocess::Kill() {
  if (reaped_) {
    return;
  }
  kill(pid_, SIGKILL);
  Wait(absl::Seconds(30));
}

int Subprocess::Wait(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() >= deadline) {
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return exit_code_;
}

int Subprocess::Terminate(absl::Duration grace) {
  Signal(SIGTERM);
  int code = Wait(grace);
  if (code == -1) {
    Kill();
    code = exit_code_;
  }
  return code;
}

std::string Subprocess::Output() const {
  std::ifstream in(log_path_);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

size_t Subprocess::CountInOutput(const std::string& text) const {
  std::string out = Output();
  size_t n = 0;
  for (size_t at = out.find(text); at != std::string::npos; at = out.find(text, at + 1)) ++n;
  return n;
}

bool Subprocess::WaitForOutput(const std::string& text, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Output().find(text) != std::string::npos) {
      return true;
    }
    if (!running()) {
      return Output().find(text) != std::string::npos;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

std::string Subprocess::LineAfter(const std::string& marker) const {
  std::string out = Output();
  size_t at = out.find(marker);
  if (at == std::string::npos) return "";
  size_t end = out.find('\n', at);
  return out.substr(at + marker.size(),
                    end == std::string::npos ? std::string::npos : end - at - marker.size());
}

std::string BinaryPath(const std::string& name) {
  return absl::StrCat(FORMICA_BINARY_DIR, "/", name);
}

absl::StatusOr<std::unique_ptr<DsrdProcess>> DsrdProcess::Start(Options options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("DsrdProcess needs a data_dir");
  }
  if (options.port == 0) {
    options.port = PickFreePort();
  }
  std::unique_ptr<DsrdProcess> d(new DsrdProcess(std::move(options)));
  if (absl::Status st = d->Launch(); !st.ok()) {
    return st;
  }
  return d;
}

DsrdProcess::~DsrdProcess() {
  if (process_ != nullptr) {
    process_->Kill();
  }
}

std::string DsrdProcess::address() const { return absl::StrCat("127.0.0.1:", options_.port); }

absl::Status DsrdProcess::Launch() {
  std::filesystem::create_directories(options_.data_dir);
  // Nested YAML from dotted keys: storage.etcd.prefix ->
  // storage:\n  etcd:\n    prefix: ...
  std::map<std::string, std::string> values = options_.config;
  values.emplace("server.listen", address());
  values.emplace("storage.data_dir", absl::StrCat(options_.data_dir, "/store"));
  std::string config_path = absl::StrCat(options_.data_dir, "/dsrd.yaml");
  {
    std::ofstream out(config_path, std::ios::trunc);
    std::vector<std::string> open;  // the sections written so far, outermost first
    for (const auto& [key, value] : values) {
      std::vector<std::string> parts = absl::StrSplit(key, '.');
      if (parts.size() < 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("config key '", key, "' needs section.name"));
      }
      size_t common = 0;
      while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) {
        ++common;
      }
      open.resize(common);
      for (size_t i = common; i + 1 < parts.size(); ++i) {
        out << std::string(2 * i, ' ') << parts[i] << ":\n";
        open.push_back(parts[i]);
      }
      out << std::string(2 * (parts.size() - 1), ' ') << parts.back() << ": \"" << value << "\"\n";
    }
  }
  std::string log = absl::StrCat(options_.data_dir, "/dsrd.", ++launches_, ".log");
  auto process = Subprocess::Start({BinaryPath("registry/dsrd"), "--config", config_path}, log);
  if (!process.ok()) {
    return process.status();
  }
  process_ = std::move(*process);
  if (!process_->WaitForOutput("dsrd ready on port", absl::Seconds(20))) {
    return absl::UnavailableError(absl::StrCat("dsrd did not start: ", process_->Output()));
  }
  return absl::OkStatus();
}

int DsrdProcess::Stop() {
  if (process_ == nullptr) {
    return -1;
  }
  int code = process_->Terminate();
  return code;
}

void DsrdProcess::Kill9() {
  if (process_ != nullptr) {
    process_->Kill();
  }
}

absl::Status DsrdProcess::Restart() {
  if (process_ != nullptr && process_->running()) {
    process_->Terminate();
  }
  return Launch();
}

}  // namespace formica::testing
