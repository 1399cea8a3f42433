// RabbitMQ half of the message-broker benchmark.
//
// RunRabbitMq() starts a private broker node, runs two phases against it and tears it down:
//
//   1. produce: `producers` threads, each on its own connection in confirm mode, publish
//      persistent messages to a fresh durable queue, keeping up to `in_flight_per_producer`
//      unconfirmed; the publish -> confirm latency of every message is recorded.
//   2. e2e: a consumer (own connection, basic.qos prefetch, manual acks) is subscribed to a
//      fresh durable queue, then the producers run as in phase 1.
//
// The broker is the Debian rabbitmq-server package. Its /usr/sbin/rabbitmq-server wrapper
// changes to /var/lib/rabbitmq and, when run as root, re-runs itself as the `rabbitmq` user,
// which could not read a private temporary directory. So the node is started through the
// package's real start script, /usr/lib/rabbitmq/bin/rabbitmq-server, a /bin/sh script that
// starts `erl` (beam.smp) in the background, waits for it and turns SIGTERM into a graceful
// shutdown of the VM. All state of the node (Mnesia and message stores, logs, config, Erlang
// cookie, crash dumps) lives in a mkdtemp directory; only epmd, which Erlang shares between
// all nodes of a host, may outlive the run.

#include "rabbitmq_bench.h"

#include "bench_report.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

// rabbitmq-c 0.11 upstream installs its headers under rabbitmq-c/; Debian's librabbitmq-dev
// (0.11.0) still ships them flat in /usr/include.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

extern char** environ;

namespace formica::bench {
namespace {

using Clock = std::chrono::steady_clock;
using LogFn = void (*)(const std::string&);

// The package's start script (see the file comment for why not /usr/sbin/rabbitmq-server).
constexpr char kServerScript[] = "/usr/lib/rabbitmq/bin/rabbitmq-server";
constexpr char kServerPackage[] = "rabbitmq-server";
constexpr char kHost[] = "127.0.0.1";

constexpr std::chrono::seconds kStartupTimeout(60);
// Graceful shutdown normally takes ~2 s; after this the process group is killed.
constexpr std::chrono::seconds kStopTimeout(30);
// A phase is aborted when no message was confirmed, delivered or acked for this long
// (e.g. the broker raised a memory or disk alarm and blocked the publishers).
constexpr std::chrono::seconds kStallTimeout(60);
constexpr int kRpcTimeoutSeconds = 30;
constexpr int kFrameMax = 131072;
constexpr amqp_channel_t kChannel = 1;
constexpr int kLogTailLines = 25;

void Log(LogFn log, const std::string& line) {
  if (log != nullptr) log(absl::StrCat("rabbitmq: ", line));
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double Millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string Fixed(double value, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, value);
  return buf;
}

std::string ErrnoText(absl::string_view what) {
  return absl::StrCat(what, ": ", std::strerror(errno));
}

timeval ToTimeval(std::chrono::milliseconds ms) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

// Last `max_lines` lines of a text file, or "" when it cannot be read.
std::string FileTail(const std::string& path, int max_lines) {
  std::ifstream in(path);
  if (!in) return "";
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(std::move(line));
    if (lines.size() > static_cast<size_t>(2 * max_lines)) {
      lines.erase(lines.begin(), lines.end() - max_lines);
    }
  }
  size_t first = lines.size() > static_cast<size_t>(max_lines) ? lines.size() - max_lines : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&out, lines[i], "\n");
  return out;
}

// ---------------------------------------------------------------------------------------------
// Temporary directory and free ports.

// A mkdtemp directory that is removed, with everything in it, on destruction.
class TempDir {
 public:
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() { Remove(); }

  absl::Status Create() {
    const char* base = std::getenv("TMPDIR");
    std::string templ =
        absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/formica-rabbitmq-XXXXXX");
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      return absl::InternalError(ErrnoText(absl::StrCat("mkdtemp ", templ)));
    }
    path_ = buf.data();
    return absl::OkStatus();
  }

  // Removes the tree; returns false when something could not be removed.
  bool Remove() {
    if (path_.empty()) return true;
    auto remove_one = [](const char* p, const struct stat*, int, FTW*) { return ::remove(p); };
    bool ok = nftw(path_.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0;
    if (ok) path_.clear();
    return ok;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Picks `count` distinct TCP ports on 127.0.0.1 that are free right now. The sockets are held
// until all ports are chosen so the kernel does not hand out the same port twice.
absl::StatusOr<std::vector<int>> PickFreePorts(int count) {
  std::vector<int> fds;
  std::vector<int> ports;
  absl::Status status;
  for (int i = 0; i < count && status.ok(); ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      status = absl::InternalError(ErrnoText("socket"));
      break;
    }
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      status = absl::InternalError(ErrnoText("bind/getsockname on 127.0.0.1:0"));
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
  }
  for (int fd : fds) close(fd);
  if (!status.ok()) return status;
  return ports;
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping through /proc, used to make sure no process of the node survives it.

// Identifies one process; the start time guards against pid reuse.
struct ProcId {
  pid_t pid = 0;
  unsigned long long start_time = 0;
  std::string comm;
};

struct ProcStat {
  char state = '?';
  pid_t ppid = 0;
  unsigned long long start_time = 0;
  std::string comm;
};

// Reads /proc/<pid>/stat; false when the process does not exist.
bool ReadProcStat(pid_t pid, ProcStat* out) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text;
  if (!in || !std::getline(in, text)) return false;
  // "pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
  //  utime stime cutime cstime priority nice num_threads itrealvalue starttime ..."
  size_t open = text.find('(');
  size_t close_paren = text.rfind(')');
  if (open == std::string::npos || close_paren == std::string::npos) return false;
  out->comm = text.substr(open + 1, close_paren - open - 1);
  std::istringstream rest(text.substr(close_paren + 1));
  std::string field;
  std::vector<std::string> fields;
  while (rest >> field) fields.push_back(field);
  if (fields.size() < 20) return false;
  out->state = fields[0].empty() ? '?' : fields[0][0];
  out->ppid = static_cast<pid_t>(std::strtol(fields[1].c_str(), nullptr, 10));
  out->start_time = std::strtoull(fields[19].c_str(), nullptr, 10);
  return true;
}

// All living descendants of `root` (not `root` itself). The Erlang VM starts helpers in their
// own sessions (erl_child_setup, inet_gethost, the disk monitor's shell), so they are not in
// the node's process group; they are found through the parent links instead. epmd is shared
// by all Erlang nodes of the host and deliberately left alone.
std::vector<ProcId> Descendants(pid_t root) {
  std::map<pid_t, std::vector<std::pair<pid_t, ProcStat>>> children;
  if (DIR* dir = opendir("/proc")) {
    while (dirent* entry = readdir(dir)) {
      char* end = nullptr;
      long pid = std::strtol(entry->d_name, &end, 10);
      if (end == entry->d_name || *end != '\0' || pid <= 0) continue;
      ProcStat stat;
      if (ReadProcStat(static_cast<pid_t>(pid), &stat)) {
        children[stat.ppid].push_back({static_cast<pid_t>(pid), stat});
      }
    }
    closedir(dir);
  }
  std::vector<ProcId> out;
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    pid_t parent = todo.back();
    todo.pop_back();
    for (const auto& [pid, stat] : children[parent]) {
      todo.push_back(pid);
      if (stat.comm != "epmd" && stat.state != 'Z') {
        out.push_back(ProcId{pid, stat.start_time, stat.comm});
      }
    }
  }
  return out;
}

// True while the process still runs (a zombie counts as gone: it is its parent's to reap).
bool StillRunning(const ProcId& id) {
  ProcStat stat;
  return ReadProcStat(id.pid, &stat) && stat.start_time == id.start_time && stat.state != 'Z';
}

// ---------------------------------------------------------------------------------------------
// AMQP helpers.

std::string BytesToString(amqp_bytes_t bytes) {
  return std::string(static_cast<const char*>(bytes.bytes), bytes.len);
}

std::string ServerClose(const amqp_method_t& method) {
  if (method.id == AMQP_CONNECTION_CLOSE_METHOD) {
    const auto* m = static_cast<const amqp_connection_close_t*>(method.decoded);
    return absl::StrCat("broker closed the connection: ", m->reply_code, " ",
                        BytesToString(m->reply_text));
  }
  if (method.id == AMQP_CHANNEL_CLOSE_METHOD) {
    const auto* m = static_cast<const amqp_channel_close_t*>(method.decoded);
    return absl::StrCat("broker closed the channel: ", m->reply_code, " ",
                        BytesToString(m->reply_text));
  }
  return absl::StrCat("unexpected method 0x", absl::Hex(method.id));
}

absl::Status ReplyStatus(const amqp_rpc_reply_t& reply, absl::string_view what) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return absl::OkStatus();
    case AMQP_RESPONSE_NONE:
      return absl::InternalError(absl::StrCat(what, ": no RPC reply"));
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      return absl::UnavailableError(
          absl::StrCat(what, ": ", amqp_error_string2(reply.library_error)));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      return absl::InternalError(absl::StrCat(what, ": ", ServerClose(reply.reply)));
  }
  return absl::InternalError(absl::StrCat(what, ": unknown reply type"));
}

absl::Status LibraryStatus(int code, absl::string_view what) {
  if (code == AMQP_STATUS_OK) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", amqp_error_string2(code)));
}

// Lets any thread of a phase abort the whole phase: the first reason is kept, and every
// registered AMQP socket is shut down, which wakes threads blocked in send() or recv(). A
// watchdog cancels the phase when it stops making progress.
class PhaseControl {
 public:
  void Register(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.insert(fd);
    if (cancelled_.load()) shutdown(fd, SHUT_RDWR);
  }
  // Must be called before the socket is closed, so Cancel() never touches a reused fd.
  void Unregister(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.erase(fd);
  }

  void Cancel(const absl::Status& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_.load()) return;
    reason_ = why;
    cancelled_.store(true);
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    cv_.notify_all();
  }
  bool cancelled() const { return cancelled_.load(); }
  absl::Status reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }

  void NoteProgress() { progress_.fetch_add(1, std::memory_order_relaxed); }

  // Runs until Finish(); cancels the phase when the progress count stands still too long.
  void RunWatchdog() {
    std::unique_lock<std::mutex> lock(mu_);
    uint64_t last = progress_.load();
    Clock::time_point last_change = Clock::now();
    while (!finished_ && !cancelled_.load()) {
      cv_.wait_for(lock, std::chrono::milliseconds(250));
      uint64_t now_progress = progress_.load();
      if (now_progress != last) {
        last = now_progress;
        last_change = Clock::now();
      } else if (Clock::now() - last_change > kStallTimeout) {
        lock.unlock();
        Cancel(absl::DeadlineExceededError(absl::StrCat("no message confirmed or delivered for ",
                                                        kStallTimeout.count(),
                                                        " s (broker resource alarm or hang?)")));
        return;
      }
    }
  }
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<int> fds_;
  std::atomic<bool> cancelled_{false};
  absl::Status reason_;
  bool finished_ = false;
  std::atomic<uint64_t> progress_{0};
};

// One AMQP connection with channel kChannel open, logged in as guest/guest.
class AmqpConnection {
 public:
  // `control` (may be null) gets the socket registered for cancellation.
  static absl::StatusOr<std::unique_ptr<AmqpConnection>> Open(int port, PhaseControl* control) {
    amqp_connection_state_t state = amqp_new_connection();
    if (state == nullptr) return absl::ResourceExhaustedError("amqp_new_connection failed");
    std::unique_ptr<AmqpConnection> conn(new AmqpConnection(state));
    amqp_socket_t* socket = amqp_tcp_socket_new(state);
    if (socket == nullptr) return absl::ResourceExhaustedError("amqp_tcp_socket_new failed");
    timeval connect_timeout = ToTimeval(std::chrono::seconds(5));
    absl::Status status =
        LibraryStatus(amqp_socket_open_noblock(socket, kHost, port, &connect_timeout),
                      absl::StrCat("connect to ", kHost, ":", port));
    if (!status.ok()) return status;
    conn->fd_ = amqp_get_sockfd(state);
    if (control != nullptr) {
      conn->control_ = control;
      control->Register(conn->fd_);
    }
    timeval handshake_timeout = ToTimeval(std::chrono::seconds(10));
    amqp_set_handshake_timeout(state, &handshake_timeout);
    status = ReplyStatus(amqp_login(state, "/", 0, kFrameMax, /*heartbeat=*/0,
                                    AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
                         "login as guest");
    if (!status.ok()) return status;
    conn->logged_in_ = true;
    timeval rpc_timeout = ToTimeval(std::chrono::seconds(kRpcTimeoutSeconds));
    amqp_set_rpc_timeout(state, &rpc_timeout);
    amqp_channel_open(state, kChannel);
    status = conn->RpcStatus("channel.open");
    if (!status.ok()) return status;
    conn->channel_open_ = true;
    return conn;
  }

  AmqpConnection(const AmqpConnection&) = delete;
  AmqpConnection& operator=(const AmqpConnection&) = delete;

  ~AmqpConnection() {
    if (healthy_ && logged_in_) {
      // A short timeout: the broker may be gone already.
      timeval close_timeout = ToTimeval(std::chrono::seconds(5));
      amqp_set_rpc_timeout(state_, &close_timeout);
      if (channel_open_) amqp_channel_close(state_, kChannel, AMQP_REPLY_SUCCESS);
      amqp_connection_close(state_, AMQP_REPLY_SUCCESS);
    }
    if (control_ != nullptr) control_->Unregister(fd_);
    amqp_destroy_connection(state_);
  }

  amqp_connection_state_t get() const { return state_; }

  // After an error the connection is not closed gracefully (the broker may have closed the
  // channel, and would then ignore our channel.close until the RPC times out).
  void MarkBroken() { healthy_ = false; }

  // Status of the last RPC-style call (queue.declare, basic.qos, ...).
  absl::Status RpcStatus(absl::string_view what) {
    absl::Status status = ReplyStatus(amqp_get_rpc_reply(state_), what);
    if (!status.ok()) MarkBroken();
    return status;
  }

  // A durable queue: classic, or quorum (x-queue-type) when `quorum`.
  absl::Status DeclareQueue(const std::string& queue, bool quorum) {
    amqp_table_entry_t type;
    type.key = amqp_cstring_bytes("x-queue-type");
    type.value.kind = AMQP_FIELD_KIND_UTF8;
    type.value.value.bytes = amqp_cstring_bytes("quorum");
    amqp_table_t arguments = amqp_empty_table;
    if (quorum) {
      arguments.num_entries = 1;
      arguments.entries = &type;
    }
    amqp_queue_declare(state_, kChannel, amqp_cstring_bytes(queue.c_str()), /*passive=*/0,
                       /*durable=*/1, /*exclusive=*/0, /*auto_delete=*/0, arguments);
    return RpcStatus(absl::StrCat("queue.declare ", queue, quorum ? " (quorum)" : ""));
  }

  // The broker's "version" server property from connection.start, "" if it sent none.
  std::string ServerVersion() const {
    const amqp_table_t* props = amqp_get_server_properties(state_);
    for (int i = 0; props != nullptr && i < props->num_entries; ++i) {
      const amqp_table_entry_t& e = props->entries[i];
      if (BytesToString(e.key) == "version" &&
          (e.value.kind == AMQP_FIELD_KIND_UTF8 || e.value.kind == AMQP_FIELD_KIND_BYTES)) {
        return BytesToString(e.value.value.bytes);
      }
    }
    return "";
  }

  absl::Status DeleteQueue(const std::string& queue) {
    amqp_queue_delete(state_, kChannel, amqp_cstring_bytes(queue.c_str()), /*if_unused=*/0,
                      /*if_empty=*/0);
    return RpcStatus(absl::StrCat("queue.delete ", queue));
  }

 private:
  explicit AmqpConnection(amqp_connection_state_t state) : state_(state) {}

  amqp_connection_state_t state_;
  PhaseControl* control_ = nullptr;
  int fd_ = -1;
  bool logged_in_ = false;
  bool channel_open_ = false;
  bool healthy_ = true;
};

// ---------------------------------------------------------------------------------------------
// The private broker node.

class RabbitServer {
 public:
  RabbitServer(std::string dir, LogFn log) : dir_(std::move(dir)), log_(log) {}
  RabbitServer(const RabbitServer&) = delete;
  RabbitServer& operator=(const RabbitServer&) = delete;
  ~RabbitServer() { Stop().IgnoreError(); }

  // Writes the node's configuration into the directory and starts the start script in a new
  // session (and so its own process group) with the directory as working directory.
  // Makes this node one of a cluster, before Start: `node` is its name, `nodes` every member's
  // (its own included; the members find each other through the shared epmd at boot, by
  // classic_config peer discovery) and `cookie` the Erlang cookie they share.
  void SetCluster(std::string node, std::vector<std::string> nodes, std::string cookie) {
    node_ = std::move(node);
    cluster_nodes_ = std::move(nodes);
    cookie_ = std::move(cookie);
  }

  absl::Status Start() {
    static std::atomic<int> instance{0};
    if (cluster_nodes_.empty()) {
      node_ = absl::StrCat("formica-bench-", getpid(), "-", instance.fetch_add(1), "@localhost");
    }
    absl::StatusOr<std::vector<int>> ports = PickFreePorts(2);
    if (!ports.ok()) return ports.status();
    amqp_port_ = (*ports)[0];
    const int dist_port = (*ports)[1];

    const std::string mnesia_base = dir_ + "/mnesia";
    const std::string log_base = dir_ + "/log";
    for (const std::string& d : {mnesia_base, log_base}) {
      if (mkdir(d.c_str(), 0700) != 0) return absl::InternalError(ErrnoText("mkdir " + d));
    }
    log_file_ = absl::StrCat(log_base, "/", node_, ".log");
    out_file_ = dir_ + "/server.out";
    // rabbitmq.conf: logs only to the file. No plugins. An empty rabbitmq-env.conf so that
    // /etc/rabbitmq/rabbitmq-env.conf (which may name a node or port) is not read.
    std::string conf =
        "log.console = false\n"
        "log.file.level = info\n";
    if (!cluster_nodes_.empty()) {
      absl::StrAppend(&conf, "cluster_formation.peer_discovery_backend = classic_config\n");
      for (size_t i = 0; i < cluster_nodes_.size(); ++i) {
        absl::StrAppend(&conf, "cluster_formation.classic_config.nodes.", i + 1, " = ",
                        cluster_nodes_[i], "\n");
      }
    }
    absl::Status status = WriteFile(dir_ + "/rabbitmq.conf", conf);
    if (status.ok() && !cluster_nodes_.empty()) {
      // Erlang refuses a cookie file that others may read.
      const std::string cookie_file = dir_ + "/.erlang.cookie";
      status = WriteFile(cookie_file, cookie_);
      if (status.ok() && chmod(cookie_file.c_str(), 0400) != 0) {
        status = absl::InternalError(ErrnoText("chmod " + cookie_file));
      }
    }
    if (status.ok()) status = WriteFile(dir_ + "/enabled_plugins", "[].\n");
    if (status.ok()) status = WriteFile(dir_ + "/rabbitmq-env.conf", "");
    if (!status.ok()) return status;

    std::vector<std::string> env;
    bool have_path = false;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      absl::string_view var(*e);
      // Drop settings that would make the node differ from the one configured here, and
      // NOTIFY_SOCKET, which would make the script believe it runs under systemd.
      if (absl::StartsWith(var, "RABBITMQ_") || absl::StartsWith(var, "HOME=") ||
          absl::StartsWith(var, "NOTIFY_SOCKET=") || absl::StartsWith(var, "ERL_LIBS=") ||
          absl::StartsWith(var, "ERL_FLAGS=") || absl::StartsWith(var, "ERL_AFLAGS=") ||
          absl::StartsWith(var, "ERL_ZFLAGS=") || absl::StartsWith(var, "ERL_EPMD_ADDRESS=")) {
        continue;
      }
      if (absl::StartsWith(var, "PATH=")) have_path = true;
      env.emplace_back(var);
    }
    if (!have_path) {
      env.emplace_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    const std::vector<std::pair<std::string, std::string>> settings = {
        // The Erlang cookie is created in $HOME/.erlang.cookie.
        {"HOME", dir_},
        {"RABBITMQ_NODENAME", node_},
        {"RABBITMQ_NODE_IP_ADDRESS", kHost},
        {"RABBITMQ_NODE_PORT", absl::StrCat(amqp_port_)},
        {"RABBITMQ_DIST_PORT", absl::StrCat(dist_port)},
        {"RABBITMQ_MNESIA_BASE", mnesia_base},
        {"RABBITMQ_LOG_BASE", log_base},
        {"RABBITMQ_CONFIG_FILE", dir_ + "/rabbitmq.conf"},
        {"RABBITMQ_ADVANCED_CONFIG_FILE", dir_ + "/advanced.config"},
        {"RABBITMQ_CONF_ENV_FILE", dir_ + "/rabbitmq-env.conf"},
        {"RABBITMQ_ENABLED_PLUGINS_FILE", dir_ + "/enabled_plugins"},
        {"RABBITMQ_PID_FILE", dir_ + "/rabbitmq.pid"},
        // Distribution listener on loopback only; epmd too, when this node is the one that
        // starts it.
        {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}"},
        {"ERL_EPMD_ADDRESS", kHost},
    };
    for (const auto& [key, value] : settings) env.push_back(absl::StrCat(key, "=", value));

    // Everything the child needs is prepared before fork(): after it, only async-signal-safe
    // calls are allowed (this process may have other threads).
    std::vector<char*> envp;
    for (std::string& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string script = kServerScript;
    char* argv[] = {script.data(), nullptr};
    int out_fd = open(out_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out_fd < 0) return absl::InternalError(ErrnoText("open " + out_file_));
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
      close(out_fd);
      return absl::InternalError(ErrnoText("open /dev/null"));
    }
    const pid_t parent = getpid();
    const char* dir = dir_.c_str();

    pid_t pid = fork();
    if (pid == 0) {
      // Child. Own session and process group, no controlling terminal.
      setsid();
      // If the thread that started the node dies, the script gets SIGTERM and stops the VM.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(126);
      sigset_t all;
      sigemptyset(&all);
      sigprocmask(SIG_SETMASK, &all, nullptr);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD}) sigaction(sig, &dfl, nullptr);
      if (dup2(null_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0) _exit(126);
      if (chdir(dir) != 0) _exit(126);
#ifdef SYS_close_range
      if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
      {
        for (int fd = 3; fd < 4096; ++fd) close(fd);
      }
      execve(argv[0], argv, envp.data());
      _exit(127);
    }
    const int fork_errno = errno;
    close(out_fd);
    close(null_fd);
    if (pid < 0) {
      errno = fork_errno;
      return absl::InternalError(ErrnoText("fork"));
    }
    pid_ = pid;
    reaped_ = false;
    Log(log_, absl::StrCat("started ", kServerScript, " (pid ", pid_, ") as node ", node_,
                           ", AMQP on ", kHost, ":", amqp_port_, ", distribution port ", dist_port,
                           ", data in ", dir_));
    return absl::OkStatus();
  }

  // Waits until the AMQP port accepts a guest login.
  absl::Status WaitReady() {
    const Clock::time_point start = Clock::now();
    absl::Status last = absl::UnavailableError("not tried yet");
    while (Clock::now() - start < kStartupTimeout) {
      int wait_status = 0;
      pid_t r = waitpid(pid_, &wait_status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        return absl::InternalError(absl::StrCat("rabbitmq-server exited during startup (",
                                                DescribeWait(wait_status), ")\n", LogTail()));
      }
      absl::StatusOr<std::unique_ptr<AmqpConnection>> probe =
          AmqpConnection::Open(amqp_port_, nullptr);
      if (probe.ok()) {
        Log(log_, absl::StrCat("server accepts logins after ",
                               Fixed(Seconds(Clock::now() - start), 1), " s"));
        return absl::OkStatus();
      }
      last = probe.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "rabbitmq-server did not accept an AMQP login on ", kHost, ":", amqp_port_, " within ",
        kStartupTimeout.count(), " s (last error: ", last.message(), ")\n", LogTail()));
  }

  // Stops the node (SIGTERM to the start script, which shuts the VM down gracefully), kills
  // whatever is left after kStopTimeout, reaps the script and checks that no process of the
  // node survives. Idempotent.
  absl::Status Stop() {
    if (pid_ <= 0) return absl::OkStatus();
    const pid_t pid = pid_;
    pid_ = -1;
    const Clock::time_point start = Clock::now();
    // Remember the whole tree now: once the VM is gone its helpers are reparented.
    std::vector<ProcId> tree = Descendants(pid);
    if (!reaped_) {
      kill(pid, SIGTERM);
      int wait_status = 0;
      bool exited = false;
      while (Clock::now() - start < kStopTimeout) {
        pid_t r = waitpid(pid, &wait_status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
          exited = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (!exited) {
        Log(log_,
            absl::StrCat("server did not stop within ", kStopTimeout.count(), " s; killing it"));
        kill(-pid, SIGKILL);
        for (const ProcId& p : tree) {
          if (StillRunning(p)) kill(p.pid, SIGKILL);
        }
        while (waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
        }
      }
      reaped_ = true;
    }
    // Anything still in the node's process group (normally nothing).
    kill(-pid, SIGKILL);
    // The VM's helpers exit on their own once it is gone; give them a moment, then kill.
    std::vector<ProcId> left = WaitGone(tree, std::chrono::seconds(5));
    if (!left.empty()) {
      for (const ProcId& p : left) kill(p.pid, SIGKILL);
      left = WaitGone(left, std::chrono::seconds(2));
    }
    if (!left.empty()) {
      std::vector<std::string> names;
      for (const ProcId& p : left) names.push_back(absl::StrCat(p.pid, " (", p.comm, ")"));
      return absl::InternalError(absl::StrCat("processes of rabbitmq node ", node_,
                                              " survived SIGKILL: ", absl::StrJoin(names, ", ")));
    }
    Log(log_, absl::StrCat("server stopped in ", Fixed(Seconds(Clock::now() - start), 1), " s"));
    return absl::OkStatus();
  }

  int amqp_port() const { return amqp_port_; }
  const std::string& node() const { return node_; }

  // The members the cluster this node belongs to runs now (rabbitmqctl cluster_status), sorted.
  absl::StatusOr<std::vector<std::string>> RunningNodes() const {
    // The directory is a mkdtemp path and the node name is ours: nothing to quote.
    const std::string command = absl::StrCat(
        "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=", dir_, " ERL_EPMD_ADDRESS=", kHost,
        " /usr/lib/rabbitmq/bin/rabbitmqctl -n ", node_, " cluster_status --formatter json 2>&1");
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return absl::InternalError(ErrnoText("popen rabbitmqctl"));
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
    const int rc = pclose(pipe);
    const std::string key = "\"running_nodes\":[";
    const size_t at = out.find(key);
    const size_t end = at == std::string::npos ? at : out.find(']', at);
    if (rc != 0 || end == std::string::npos) {
      return absl::InternalError(
          absl::StrCat("rabbitmqctl cluster_status on ", node_, " failed: ", out.substr(0, 400)));
    }
    std::vector<std::string> nodes;
    for (absl::string_view name :
         absl::StrSplit(absl::string_view(out).substr(at + key.size(), end - at - key.size()), ',',
                        absl::SkipEmpty())) {
      nodes.emplace_back(absl::StripSuffix(absl::StripPrefix(name, "\""), "\""));
    }
    std::sort(nodes.begin(), nodes.end());
    return nodes;
  }

  // "" while the start script runs; otherwise a note that it exited, and how (it is reaped).
  std::string ExitNote() {
    if (pid_ <= 0 || reaped_) return "";
    int wait_status = 0;
    if (waitpid(pid_, &wait_status, WNOHANG) != pid_) return "";
    reaped_ = true;
    return absl::StrCat("rabbitmq-server exited unexpectedly (", DescribeWait(wait_status), ")");
  }

  // The end of the script's output and of the node's log, for error messages.
  std::string LogTail() const {
    std::string out;
    std::string script_out = FileTail(out_file_, kLogTailLines);
    if (!script_out.empty()) absl::StrAppend(&out, "--- ", out_file_, " ---\n", script_out);
    std::string node_log = FileTail(log_file_, kLogTailLines);
    if (!node_log.empty()) absl::StrAppend(&out, "--- ", log_file_, " ---\n", node_log);
    return out.empty() ? "(the server wrote no log)" : out;
  }

 private:
  static absl::Status WriteFile(const std::string& path, const std::string& content) {
    std::ofstream out(path, std::ios::trunc);
    out << content;
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  }

  static std::string DescribeWait(int status) {
    // The script exits 0 also when the VM failed or was killed; its log says why.
    if (WIFEXITED(status)) return absl::StrCat("start script exit code ", WEXITSTATUS(status));
    if (WIFSIGNALED(status))
      return absl::StrCat("start script killed by signal ", WTERMSIG(status));
    return "unknown status";
  }

  // Waits up to `timeout` for the processes to end; returns those still running.
  static std::vector<ProcId> WaitGone(std::vector<ProcId> procs, Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    while (true) {
      procs.erase(std::remove_if(procs.begin(), procs.end(),
                                 [](const ProcId& p) { return !StillRunning(p); }),
                  procs.end());
      if (procs.empty() || Clock::now() >= deadline) return procs;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  const std::string dir_;
  const LogFn log_;
  std::string node_;
  std::vector<std::string> cluster_nodes_;  // empty: a node of its own
  std::string cookie_;
  std::string log_file_;
  std::string out_file_;
  int amqp_port_ = 0;
  pid_t pid_ = -1;
  bool reaped_ = false;
};

// ---------------------------------------------------------------------------------------------
// Producers and the consumer.

struct ProducerOutcome {
  absl::Status status;
  std::vector<double> latencies_ms;
  Clock::time_point first_publish{};
  Clock::time_point last_confirm{};
};

// The id a message carries in its first bytes: producer and delivery tag.
std::string MessageId(int producer, uint64_t tag) { return absl::StrCat(producer, "-", tag, ";"); }

// Publishes `count` persistent messages on a connection already in confirm mode, keeping up
// to `window` unconfirmed, round-robin over `queues` (starting at queue `producer` % size);
// each body starts with MessageId(producer, tag). Delivery tags count publishes on the
// channel from 1.
void Produce(AmqpConnection* conn, const std::vector<std::string>& queues, int producer, int count,
             int window, const std::string& body, PhaseControl* control, ProducerOutcome* out) {
  amqp_connection_state_t state = conn->get();
  std::vector<Clock::time_point> sent(count + 1);
  std::vector<char> confirmed(count + 1, 0);
  out->latencies_ms.reserve(count);
  uint64_t next_tag = 1;            // tag of the next publish
  uint64_t lowest_unconfirmed = 1;  // every tag below is confirmed
  int outstanding = 0;
  int confirmed_count = 0;

  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
  props.delivery_mode = 2;  // persistent
  props.content_type = amqp_cstring_bytes("application/octet-stream");
  std::string message = body;
  amqp_bytes_t payload;
  payload.len = message.size();
  payload.bytes = message.data();

  auto confirm_one = [&](uint64_t tag, Clock::time_point now) {
    if (tag == 0 || tag > static_cast<uint64_t>(count) || confirmed[tag]) return;
    confirmed[tag] = 1;
    out->latencies_ms.push_back(Millis(now - sent[tag]));
    --outstanding;
    ++confirmed_count;
    control->NoteProgress();
  };

  // Handles one frame from the broker.
  auto handle_frame = [&](const amqp_frame_t& frame) -> absl::Status {
    if (frame.frame_type != AMQP_FRAME_METHOD) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
        uint64_t tag = ack->delivery_tag;
        if (tag >= next_tag) {
          return absl::InternalError(
              absl::StrCat("broker confirmed delivery tag ", tag, " before it was published"));
        }
        if (ack->multiple) {
          if (tag == 0) tag = next_tag - 1;  // "everything so far"
          for (uint64_t t = lowest_unconfirmed; t <= tag; ++t) confirm_one(t, now);
        } else {
          confirm_one(tag, now);
        }
        while (lowest_unconfirmed < next_tag && confirmed[lowest_unconfirmed]) {
          ++lowest_unconfirmed;
        }
        if (confirmed_count == count) out->last_confirm = now;
        return absl::OkStatus();
      }
      case AMQP_BASIC_NACK_METHOD: {
        const auto* nack = static_cast<const amqp_basic_nack_t*>(frame.payload.method.decoded);
        return absl::DataLossError(absl::StrCat("broker nacked delivery tag ", nack->delivery_tag,
                                                nack->multiple ? " (multiple)" : ""));
      }
      case AMQP_CHANNEL_CLOSE_METHOD:
      case AMQP_CONNECTION_CLOSE_METHOD:
        return absl::InternalError(ServerClose(frame.payload.method));
      default:
        return absl::OkStatus();  // e.g. basic.return; never expected (mandatory=false)
    }
  };

  // Reads frames for up to `wait` (zero: only what has arrived already) until none is left.
  auto read_frames = [&](std::chrono::milliseconds wait) -> absl::Status {
    timeval tv = ToTimeval(wait);
    while (true) {
      amqp_frame_t frame;
      int r = amqp_simple_wait_frame_noblock(state, &frame, &tv);
      if (r == AMQP_STATUS_TIMEOUT) break;
      if (r != AMQP_STATUS_OK) return LibraryStatus(r, "reading publisher confirms");
      absl::Status status = handle_frame(frame);
      if (!status.ok()) return status;
      tv = ToTimeval(std::chrono::milliseconds(0));  // then drain without blocking
    }
    amqp_maybe_release_buffers(state);
    return absl::OkStatus();
  };

  absl::Status status;
  while (status.ok() && confirmed_count < count) {
    if (control->cancelled()) {
      status = control->reason();
      break;
    }
    // Fill the window, picking up confirms that arrived in between.
    while (status.ok() && next_tag <= static_cast<uint64_t>(count) && outstanding < window) {
      const Clock::time_point now = Clock::now();
      if (next_tag == 1) out->first_publish = now;
      sent[next_tag] = now;
      const std::string id = MessageId(producer, next_tag);
      message.replace(0, id.size(), id);
      const std::string& queue = queues[(producer + next_tag) % queues.size()];
      int r =
          amqp_basic_publish(state, kChannel, amqp_empty_bytes, amqp_cstring_bytes(queue.c_str()),
                             /*mandatory=*/0, /*immediate=*/0, &props, payload);
      status = LibraryStatus(r, "basic.publish");
      if (!status.ok()) break;
      ++next_tag;
      ++outstanding;
      status = read_frames(std::chrono::milliseconds(0));
    }
    // Window full (or all published): wait for confirms.
    if (status.ok() && confirmed_count < count) {
      status = read_frames(std::chrono::milliseconds(1000));
    }
  }
  if (!status.ok()) {
    conn->MarkBroken();
    // The first failure of the phase is its cause; later ones are usually its consequences.
    control->Cancel(status);
    out->status = control->reason();
  }
}

struct ConsumerOutcome {
  absl::Status status;
  Clock::time_point last_ack{};
  int64_t duplicates = 0;
};

// Consumes and acks (one by one) deliveries of messages of `body_bytes` each from a connection
// that already has the consumers registered until `expected` distinct messages (by the id in
// their first bytes) were acked, counting deliveries of a message already had as duplicates;
// then checks that no message not published arrives.
void Consume(AmqpConnection* conn, int expected, int body_bytes, PhaseControl* control,
             ConsumerOutcome* out) {
  amqp_connection_state_t state = conn->get();
  int received = 0;
  std::set<std::string> seen;
  int wrong_size = 0;
  size_t first_wrong_size = 0;
  absl::Status status;

  // Receives one delivery into `envelope` within `wait`; false on timeout.
  auto receive = [&](amqp_envelope_t* envelope, std::chrono::milliseconds wait,
                     absl::Status* error) -> bool {
    timeval tv = ToTimeval(wait);
    amqp_maybe_release_buffers(state);
    amqp_rpc_reply_t reply = amqp_consume_message(state, envelope, &tv, 0);
    if (reply.reply_type == AMQP_RESPONSE_NORMAL) return true;
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_TIMEOUT) {
      return false;
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      // A frame other than a delivery arrived: see whether the broker closed something.
      amqp_frame_t frame;
      int r = amqp_simple_wait_frame(state, &frame);
      if (r != AMQP_STATUS_OK) {
        *error = LibraryStatus(r, "consumer reading a frame");
      } else if (frame.frame_type == AMQP_FRAME_METHOD &&
                 (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                  frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
                  frame.payload.method.id == AMQP_BASIC_CANCEL_METHOD)) {
        *error = absl::InternalError(frame.payload.method.id == AMQP_BASIC_CANCEL_METHOD
                                         ? std::string("broker cancelled the consumer")
                                         : ServerClose(frame.payload.method));
      }
      return false;
    }
    *error = ReplyStatus(reply, "basic.consume delivery");
    return false;
  };

  while (status.ok() && received < expected) {
    if (control->cancelled()) {
      status = control->reason();
      break;
    }
    amqp_envelope_t envelope;
    if (!receive(&envelope, std::chrono::milliseconds(1000), &status)) continue;
    if (envelope.message.body.len != static_cast<size_t>(body_bytes)) {
      if (wrong_size++ == 0) first_wrong_size = envelope.message.body.len;
    }
    const std::string text = BytesToString(envelope.message.body);
    const bool fresh = seen.insert(text.substr(0, text.find(';'))).second;
    int r = amqp_basic_ack(state, kChannel, envelope.delivery_tag, /*multiple=*/0);
    amqp_destroy_envelope(&envelope);
    status = LibraryStatus(r, "basic.ack");
    if (!status.ok()) break;
    if (!fresh) {
      ++out->duplicates;
      control->NoteProgress();
      continue;
    }
    ++received;
    control->NoteProgress();
    if (received == expected) out->last_ack = Clock::now();
  }
  if (status.ok()) {
    // Exactly `expected`: a duplicate or stray message would show up within this wait.
    amqp_envelope_t envelope;
    while (status.ok() && receive(&envelope, std::chrono::milliseconds(200), &status)) {
      const std::string text = BytesToString(envelope.message.body);
      amqp_basic_ack(state, kChannel, envelope.delivery_tag, /*multiple=*/0);
      amqp_destroy_envelope(&envelope);
      if (seen.count(text.substr(0, text.find(';'))) > 0) {
        ++out->duplicates;
      } else {
        status = absl::InternalError(
            absl::StrCat("consumer received a message beyond the ", expected, " published"));
      }
    }
  }
  if (status.ok() && wrong_size > 0) {
    status = absl::InternalError(absl::StrCat(
        wrong_size, " of ", expected, " messages had a wrong body size (first: ", first_wrong_size,
        " bytes, expected ", body_bytes, ")"));
  }
  if (!status.ok()) {
    conn->MarkBroken();
    control->Cancel(status);
    out->status = control->reason();
  }
}

struct PhaseResult {
  std::vector<double> latencies_ms;  // publish -> confirm, all producers
  Clock::time_point first_publish{};
  Clock::time_point last_confirm{};
  Clock::time_point last_ack{};  // with a consumer only
  int64_t duplicates = 0;        // with a consumer only
};

// Runs one phase on w.queues fresh durable queues named `name`-0, -1... and deletes them
// afterwards.
absl::StatusOr<PhaseResult> RunPhase(int port, AmqpConnection* admin, const std::string& name,
                                     const BrokerWorkload& w, bool with_consumer) {
  std::vector<std::string> queues;
  absl::Status status;
  for (int q = 0; q < w.queues && status.ok(); ++q) {
    queues.push_back(absl::StrCat(name, "-", q));
    status = admin->DeclareQueue(queues.back(), w.quorum);
  }
  if (!status.ok()) return status;

  PhaseControl control;
  // Connections are set up here, one after another, so that setup errors are reported
  // directly and the timed part starts with everything connected.
  std::unique_ptr<AmqpConnection> consumer_conn;
  if (with_consumer) {
    absl::StatusOr<std::unique_ptr<AmqpConnection>> conn = AmqpConnection::Open(port, &control);
    if (!conn.ok()) return conn.status();
    consumer_conn = std::move(*conn);
    // Per-consumer prefetch (quorum queues refuse a channel-wide one), split so that the
    // consumer holds at most consumer_prefetch over all queues.
    const int prefetch = std::max(1, w.consumer_prefetch / w.queues);
    amqp_basic_qos(consumer_conn->get(), kChannel, 0, static_cast<uint16_t>(prefetch),
                   /*global=*/0);
    status = consumer_conn->RpcStatus("basic.qos");
    if (!status.ok()) return status;
    for (const std::string& queue : queues) {
      amqp_basic_consume(consumer_conn->get(), kChannel, amqp_cstring_bytes(queue.c_str()),
                         amqp_empty_bytes, /*no_local=*/0, /*no_ack=*/0, /*exclusive=*/0,
                         amqp_empty_table);
      status = consumer_conn->RpcStatus("basic.consume");
      if (!status.ok()) return status;
    }
  }
  const int producers = std::min(w.producers, w.messages);
  std::vector<std::unique_ptr<AmqpConnection>> producer_conns;
  for (int i = 0; i < producers; ++i) {
    absl::StatusOr<std::unique_ptr<AmqpConnection>> conn = AmqpConnection::Open(port, &control);
    if (!conn.ok()) return conn.status();
    amqp_confirm_select((*conn)->get(), kChannel);
    status = (*conn)->RpcStatus("confirm.select");
    if (!status.ok()) return status;
    producer_conns.push_back(std::move(*conn));
  }

  const std::string body = [&] {
    std::string b(w.body_bytes, '\0');
    for (int i = 0; i < w.body_bytes; ++i) b[i] = static_cast<char>('a' + i % 26);
    return b;
  }();

  std::thread watchdog([&control] { control.RunWatchdog(); });
  ConsumerOutcome consumer_outcome;
  std::thread consumer_thread;
  if (with_consumer) {
    consumer_thread = std::thread(Consume, consumer_conn.get(), w.messages, w.body_bytes, &control,
                                  &consumer_outcome);
  }
  std::vector<ProducerOutcome> outcomes(producers);
  std::vector<std::thread> producer_threads;
  for (int i = 0; i < producers; ++i) {
    // The first messages % producers producers take one message more.
    const int count = w.messages / producers + (i < w.messages % producers ? 1 : 0);
    producer_threads.emplace_back(Produce, producer_conns[i].get(), std::cref(queues), i, count,
                                  w.in_flight_per_producer, std::cref(body), &control,
                                  &outcomes[i]);
  }
  for (std::thread& t : producer_threads) t.join();
  if (consumer_thread.joinable()) consumer_thread.join();
  control.Finish();
  watchdog.join();

  if (control.cancelled()) return control.reason();
  PhaseResult result;
  bool first = true;
  for (ProducerOutcome& o : outcomes) {
    if (!o.status.ok()) return o.status;
    if (first || o.first_publish < result.first_publish) result.first_publish = o.first_publish;
    if (first || o.last_confirm > result.last_confirm) result.last_confirm = o.last_confirm;
    first = false;
    result.latencies_ms.insert(result.latencies_ms.end(), o.latencies_ms.begin(),
                               o.latencies_ms.end());
  }
  if (with_consumer) {
    if (!consumer_outcome.status.ok()) return consumer_outcome.status;
    result.last_ack = consumer_outcome.last_ack;
    result.duplicates = consumer_outcome.duplicates;
  }
  // Close the phase's connections before the queue goes away.
  consumer_conn.reset();
  producer_conns.clear();
  for (const std::string& queue : queues) {
    status = admin->DeleteQueue(queue);
    if (!status.ok()) return status;
  }
  return result;
}

absl::Status ValidateWorkload(const BrokerWorkload& w) {
  if (w.messages <= 0) return absl::InvalidArgumentError("messages must be positive");
  if (w.body_bytes < 32) {
    return absl::InvalidArgumentError("body_bytes must be at least 32 (the message id)");
  }
  if (w.queues <= 0) return absl::InvalidArgumentError("queues must be positive");
  if (w.producers <= 0) return absl::InvalidArgumentError("producers must be positive");
  if (w.in_flight_per_producer <= 0) {
    return absl::InvalidArgumentError("in_flight_per_producer must be positive");
  }
  if (w.consumer_prefetch <= 0 || w.consumer_prefetch > 65535) {
    return absl::InvalidArgumentError("consumer_prefetch must be in 1..65535 (basic.qos)");
  }
  return absl::OkStatus();
}

// The part of RunRabbitMq that needs the running node: every workload in turn, each on
// queues of its own (named after its index).
absl::StatusOr<RabbitMqRun> RunWorkloads(RabbitServer* server,
                                         const std::vector<BrokerWorkload>& workloads, LogFn log) {
  absl::StatusOr<std::unique_ptr<AmqpConnection>> admin =
      AmqpConnection::Open(server->amqp_port(), nullptr);
  if (!admin.ok()) return admin.status();
  AmqpConnection* admin_conn = admin->get();
  RabbitMqRun run;
  run.version = admin_conn->ServerVersion();
  Log(log, absl::StrCat("broker version ", run.version.empty() ? "(not sent)" : run.version));
  for (size_t i = 0; i < workloads.size(); ++i) {
    const BrokerWorkload& w = workloads[i];
    const int producers = std::min(w.producers, w.messages);
    const std::string shape = absl::StrCat(
        w.messages, " persistent messages of ", w.body_bytes, " bytes, ", producers,
        " producers with ", w.in_flight_per_producer, " in flight each, over ", w.queues, " ",
        w.quorum ? "quorum" : "classic", " queue", w.queues == 1 ? "" : "s");
    BrokerFigures figures;

    Log(log, absl::StrCat("phase 1 (produce): ", shape));
    absl::StatusOr<PhaseResult> produce = RunPhase(
        server->amqp_port(), admin_conn, absl::StrCat("formica-bench-produce-", i), w, false);
    if (!produce.ok()) {
      return absl::Status(produce.status().code(),
                          absl::StrCat("phase 1 (produce): ", produce.status().message()));
    }
    const double produce_s = Seconds(produce->last_confirm - produce->first_publish);
    figures.produce_per_s = produce_s > 0 ? w.messages / produce_s : 0;
    figures.produce_p50_ms = Percentile(produce->latencies_ms, 50);
    figures.produce_p99_ms = Percentile(produce->latencies_ms, 99);
    Log(log, absl::StrCat("phase 1 (produce): ", Fixed(figures.produce_per_s, 0), " msg/s over ",
                          Fixed(produce_s, 2), " s; confirm latency p50 ",
                          Fixed(figures.produce_p50_ms, 2), " ms, p99 ",
                          Fixed(figures.produce_p99_ms, 2), " ms"));

    Log(log, absl::StrCat("phase 2 (e2e): ", shape, ", 1 consumer with prefetch ",
                          w.consumer_prefetch, " in all"));
    absl::StatusOr<PhaseResult> e2e =
        RunPhase(server->amqp_port(), admin_conn, absl::StrCat("formica-bench-e2e-", i), w, true);
    if (!e2e.ok()) {
      return absl::Status(e2e.status().code(),
                          absl::StrCat("phase 2 (e2e): ", e2e.status().message()));
    }
    const double e2e_s = Seconds(e2e->last_ack - e2e->first_publish);
    figures.e2e_per_s = e2e_s > 0 ? w.messages / e2e_s : 0;
    figures.duplicates = e2e->duplicates;
    Log(log, absl::StrCat("phase 2 (e2e): ", Fixed(figures.e2e_per_s, 0), " msg/s over ",
                          Fixed(e2e_s, 2), " s (first publish to last consumer ack), ",
                          figures.duplicates, " duplicates"));
    run.figures.push_back(figures);
  }
  return run;
}

// The workloads are valid and the broker is installed.
absl::Status Preflight(const std::vector<BrokerWorkload>& workloads) {
  for (const BrokerWorkload& w : workloads) {
    if (absl::Status st = ValidateWorkload(w); !st.ok()) return st;
  }
  if (access(kServerScript, X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("RabbitMQ is not installed (no ", kServerScript, "); install the Debian ",
                     "package: apt-get install -y --no-install-recommends ", kServerPackage));
  }
  return absl::OkStatus();
}

// Removes a run's directory; a run that could not remove it is not ok.
void RemoveRunDir(TempDir& dir, absl::StatusOr<RabbitMqRun>* figures, LogFn log) {
  const std::string path = dir.path();
  if (dir.Remove()) return;
  Log(log, absl::StrCat("could not remove ", path, " completely"));
  if (figures->ok()) {
    *figures = absl::InternalError(absl::StrCat("could not remove ", path, " completely"));
  }
}

}  // namespace

absl::StatusOr<RabbitMqRun> RunRabbitMq(const std::vector<BrokerWorkload>& workloads, LogFn log) {
  absl::Status status = Preflight(workloads);
  if (!status.ok()) return status;

  TempDir dir;
  status = dir.Create();
  if (!status.ok()) return status;

  absl::StatusOr<RabbitMqRun> figures;
  {
    RabbitServer server(dir.path(), log);
    status = server.Start();
    if (status.ok()) status = server.WaitReady();
    if (status.ok()) {
      figures = RunWorkloads(&server, workloads, log);
    } else {
      figures = status;
    }
    if (!figures.ok() && status.ok()) {
      // Broker-side failures usually explain themselves in the node's log.
      std::string exit_note = server.ExitNote();
      figures = absl::Status(figures.status().code(),
                             absl::StrCat(figures.status().message(), exit_note.empty() ? "" : "; ",
                                          exit_note, "\n", server.LogTail()));
    }
    absl::Status stop = server.Stop();
    if (!stop.ok()) {
      Log(log, stop.ToString());
      if (figures.ok()) figures = stop;
    }
  }
  RemoveRunDir(dir, &figures, log);
  return figures;
}

absl::StatusOr<RabbitMqRun> RunRabbitMqCluster(const std::vector<BrokerWorkload>& workloads,
                                               int nodes, LogFn log) {
  if (nodes < 1) return absl::InvalidArgumentError("a cluster needs at least one node");
  absl::Status status = Preflight(workloads);
  if (!status.ok()) return status;
  TempDir dir;
  status = dir.Create();
  if (!status.ok()) return status;

  absl::StatusOr<RabbitMqRun> figures;
  {
    static std::atomic<int> cluster{0};
    const std::string prefix = absl::StrCat("formica-bench-", getpid(), "-c", cluster++, "-");
    std::vector<std::string> names;
    for (int i = 1; i <= nodes; ++i) names.push_back(absl::StrCat(prefix, i, "@localhost"));
    // A cookie of this run's own; only these nodes and rabbitmqctl read it.
    std::string cookie = absl::StrCat("FORMICABENCH", getpid(), "X",
                                      std::chrono::steady_clock::now().time_since_epoch().count());
    std::vector<std::unique_ptr<RabbitServer>> servers;
    for (int i = 0; i < nodes && status.ok(); ++i) {
      const std::string node_dir = absl::StrCat(dir.path(), "/node", i + 1);
      if (mkdir(node_dir.c_str(), 0700) != 0) {
        status = absl::InternalError(ErrnoText("mkdir " + node_dir));
        break;
      }
      servers.push_back(std::make_unique<RabbitServer>(node_dir, log));
      servers.back()->SetCluster(names[i], names, cookie);
    }
    // The first node forms the cluster alone; the others, started once it runs, join it at
    // boot (started together, two could each form a cluster of their own).
    if (status.ok()) status = servers[0]->Start();
    if (status.ok()) status = servers[0]->WaitReady();
    for (size_t i = 1; i < servers.size() && status.ok(); ++i) status = servers[i]->Start();
    for (size_t i = 1; i < servers.size() && status.ok(); ++i) status = servers[i]->WaitReady();
    if (status.ok()) {
      absl::StatusOr<std::vector<std::string>> running = servers[0]->RunningNodes();
      std::vector<std::string> want = names;
      std::sort(want.begin(), want.end());
      if (!running.ok()) {
        status = running.status();
      } else if (*running != want) {
        status =
            absl::InternalError(absl::StrCat("the cluster runs ", absl::StrJoin(*running, ", "),
                                             ", not ", absl::StrJoin(want, ", ")));
      } else {
        Log(log, absl::StrCat("cluster of ", nodes, " formed: ", absl::StrJoin(*running, ", ")));
      }
    }
    if (status.ok()) {
      figures = RunWorkloads(servers[0].get(), workloads, log);
      if (figures.ok()) figures->cluster_nodes = nodes;
    } else {
      figures = status;
    }
    if (!figures.ok()) {
      std::string tails;
      for (const auto& s : servers) {
        std::string exit_note = s->ExitNote();
        absl::StrAppend(&tails, "\n", s->node(), exit_note.empty() ? "" : ": ", exit_note, "\n",
                        s->LogTail());
      }
      figures =
          absl::Status(figures.status().code(), absl::StrCat(figures.status().message(), tails));
    }
    // The followers first, so the first node does not wait on them leaving.
    for (auto it = servers.rbegin(); it != servers.rend(); ++it) {
      absl::Status stop = (*it)->Stop();
      if (!stop.ok()) {
        Log(log, stop.ToString());
        if (figures.ok()) figures = stop;
      }
    }
  }
  RemoveRunDir(dir, &figures, log);
  return figures;
}

}  // namespace formica::bench
