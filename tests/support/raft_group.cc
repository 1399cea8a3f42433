#include "raft_group.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace formica::testing {

absl::StatusOr<std::unique_ptr<LineClient>> LineClient::Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, ": ", strerror(errno)));
  }
  return std::unique_ptr<LineClient>(new LineClient(fd));
}

LineClient::~LineClient() { ::close(fd_); }

bool LineClient::Send(const std::string& line) {
  std::string out = line + "\n";
  return ::send(fd_, out.data(), out.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(out.size());
}

std::string LineClient::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t eol = pending_.find('\n');
    if (eol != std::string::npos) {
      std::string line = pending_.substr(0, eol);
      pending_.erase(0, eol + 1);
      return line;
    }
    int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return "";
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[65536];
    ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n <= 0) return "";
    pending_.append(buf, static_cast<size_t>(n));
  }
}

std::string AskDemo(int port, const std::string& line, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<LineClient>> c = LineClient::Connect(port);
  if (!c.ok() || !(*c)->Send(line)) return "";
  return (*c)->ReadLine(timeout);
}

std::vector<std::string> ParseValues(const std::string& reply) {
  std::vector<std::string> words = absl::StrSplit(reply, ' ', absl::SkipEmpty());
  if (words.size() < 2 || words[0] != "VALUES") return {};
  return std::vector<std::string>(words.begin() + 2, words.end());
}

absl::StatusOr<std::unique_ptr<RaftDemoGroup>> RaftDemoGroup::Start(const std::string& dir,
                                                                    Options options) {
  std::unique_ptr<RaftDemoGroup> g(new RaftDemoGroup(dir, options));
  g->members_.resize(options.size);
  for (int i = 0; i < options.size; ++i) {
    Member& m = g->members_[i];
    m.id = i + 1;
    m.raft_port = PickFreePort();
    m.demo_port = PickFreePort();
    m.data_dir = absl::StrCat(dir, "/node", m.id);
    m.config_path = absl::StrCat(dir, "/node", m.id, ".yaml");
  }
  for (int i = 0; i < options.size; ++i) {
    std::ofstream(g->members_[i].config_path) << g->ConfigText(i);
  }
  for (int i = 0; i < options.size; ++i) {
    if (absl::Status st = g->StartMember(i); !st.ok()) return st;
  }
  return g;
}

std::string RaftDemoGroup::host(int i) const {
  return i < static_cast<int>(options_.hosts.size()) ? options_.hosts[i] : "127.0.0.1";
}

std::string RaftDemoGroup::ConfigText(int i) const {
  std::vector<std::string> peers;
  for (int j = 0; j < size(); ++j) {
    peers.push_back(
        absl::StrCat("\"", members_[j].id, "@", host(j), ":", members_[j].raft_port, "\""));
  }
  const Member& m = members_[i];
  return absl::StrCat(
      "raft:\n  node_id: ", m.id, "\n  data_dir: ", m.data_dir, "\n  peers: [",
      absl::StrJoin(peers, ", "), "]\n",
      options_.listen_on_loopback ? absl::StrCat("  listen: 127.0.0.1:", m.raft_port, "\n")
                                  : std::string(),
      "  election_timeout: ", absl::ToInt64Milliseconds(options_.election_timeout),
      "ms\n  heartbeat: ", absl::ToInt64Milliseconds(options_.heartbeat),
      "ms\n  snapshot_threshold: ", options_.snapshot_threshold,
      "\n  snapshot_trailing: ", options_.snapshot_trailing,
      "\n  snapshot_timeout: ", absl::ToInt64Milliseconds(options_.snapshot_timeout), "ms",
      "\ndemo:\n  listen: 127.0.0.1:", m.demo_port, "\n");
}

absl::Status RaftDemoGroup::StartMember(int i) {
  Member& m = members_[i];
  m.process.reset();
  m.log_paths.push_back(absl::StrCat(dir_, "/node", m.id, ".", m.log_paths.size() + 1, ".log"));
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
      {BinaryPath("tests/common/raft_node_demo"), "--config", m.config_path}, m.log_paths.back());
  if (!p.ok()) return p.status();
  m.process = *std::move(p);
  if (!m.process->WaitForOutput("raft_node_demo ready on port", absl::Seconds(20))) {
    return absl::UnavailableError(
        absl::StrCat("member ", m.id, " did not start: ", m.process->Output()));
  }
  return absl::OkStatus();
}

void RaftDemoGroup::Kill9(int i) {
  if (members_[i].process) members_[i].process->Kill();
}

void RaftDemoGroup::Signal(int i, int sig) {
  if (members_[i].process) members_[i].process->Signal(sig);
}

std::string RaftDemoGroup::Ask(int i, const std::string& line, absl::Duration timeout) {
  return AskDemo(members_[i].demo_port, line, timeout);
}

int RaftDemoGroup::WaitForLeader(absl::Duration timeout, int exclude) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int best = -1;
    uint64_t best_term = 0;
    for (int i = 0; i < size(); ++i) {
      if (i == exclude || !members_[i].process || !members_[i].process->running()) continue;
      std::vector<std::string> w =
          absl::StrSplit(Ask(i, "STATUS", absl::Seconds(1)), ' ', absl::SkipEmpty());
      uint64_t term = 0;
      if (w.size() == 6 && w[1] == "leader" && w[5] == "1" && absl::SimpleAtoi(w[2], &term) &&
          term >= best_term) {
        best = i;
        best_term = term;
      }
    }
    if (best >= 0) return best;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string RaftDemoGroup::Logs() const {
  std::string out;
  for (const Member& m : members_) {
    for (const std::string& path : m.log_paths) {
      std::ifstream in(path);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      absl::StrAppend(&out, "--- ", path, " ---\n", text);
    }
  }
  return out;
}

}  // namespace formica::testing
