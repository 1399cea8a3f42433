// raft_node_demo: a replicated history (an ordered list of values) over
// RaftNode, for the tests and the benchmark that run a group as real
// processes. Its config is the `raft.*` section plus `demo.listen`, where it
// answers one line per request on TCP:
//
//   PROPOSE <value>  ->  OK <index> <term> <position>  (committed and applied)
//                        NOT_LEADER <id> <address>     (id 0 and "-": none known)
//                        UNAVAILABLE <reason>          (outcome unknown / stopping)
//   READ             ->  VALUES <n> <v1> ... <vn>       (after a barrier: linearizable)
//   LOCAL            ->  VALUES <n> <v1> ... <vn>       (this member's state, no barrier)
//   STATUS           ->  STATUS <role> <term> <leader id> <last applied> <ready 0|1>
//
// It prints "role <role> term <term> leader <id>" on stdout at every role
// change RaftNode reports.
// Values are single words. Exit 2 on a bad config, naming the key.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/config.h"
#include "formica/internal/address.h"
#include "formica/internal/daemon.h"
#include "formica/internal/raft_node.h"

namespace formica {
namespace {

struct DemoOptions {
  RaftNodeOptions raft;
  std::string listen = "127.0.0.1:0";
};

absl::StatusOr<DemoOptions> LoadDemoOptions(const Config& config) {
  DemoOptions o;
  ConfigReader r(config);
  ReadRaftSection(r, &o.raft);
  o.listen = r.String("demo.listen", o.listen);
  if (absl::Status st = ValidateAddress(o.listen); !st.ok()) r.Fail("demo.listen", st.message());
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

// The replicated state: every value applied, in log order.
class HistoryMachine : public RaftStateMachine {
 public:
  std::string Apply(uint64_t /*index*/, absl::string_view entry) override {
    absl::MutexLock l(&mu_);
    values_.emplace_back(entry);
    return absl::StrCat(values_.size());
  }
  absl::StatusOr<std::string> Snapshot() override {
    absl::MutexLock l(&mu_);
    return absl::StrJoin(values_, "\n");
  }
  absl::Status Restore(absl::string_view snapshot) override {
    absl::MutexLock l(&mu_);
    values_.clear();
    if (!snapshot.empty()) values_ = absl::StrSplit(snapshot, '\n');
    return absl::OkStatus();
  }
  std::string Render() const {
    absl::MutexLock l(&mu_);
    return absl::StrCat("VALUES ", values_.size(), values_.empty() ? "" : " ",
                        absl::StrJoin(values_, " "));
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> values_ ABSL_GUARDED_BY(mu_);
};

class DemoServer {
 public:
  static absl::StatusOr<std::unique_ptr<DemoServer>> Start(DemoOptions options) {
    std::unique_ptr<DemoServer> s(new DemoServer());
    std::string host = options.listen.substr(0, options.listen.rfind(':'));
    int port = std::stoi(options.listen.substr(options.listen.rfind(':') + 1));
    s->listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(s->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) !=
            1 ||
        ::bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(s->listen_fd_, 128) != 0) {
      return absl::UnavailableError(
          absl::StrCat("demo.listen: cannot listen on ", options.listen, ": ", strerror(errno)));
    }
    socklen_t len = sizeof(addr);
    ::getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    s->port_ = ntohs(addr.sin_port);
    // Every role change, as the tests read it: "role leader term 3 leader 1".
    auto on_role = [](const RaftNodeStatus& st) {
      std::printf("role %s term %llu leader %llu\n", RaftRoleName(st.role),
                  static_cast<unsigned long long>(st.term),
                  static_cast<unsigned long long>(st.leader.id));
      std::fflush(stdout);
    };
    absl::StatusOr<std::unique_ptr<RaftNode>> node =
        RaftNode::Start(options.raft, &s->machine_, on_role);
    if (!node.ok()) return node.status();
    s->node_ = *std::move(node);
    DemoServer* raw = s.get();
    s->acceptor_ = std::thread([raw] { raw->Accept(); });
    return s;
  }

  int port() const { return port_; }

  void Shutdown() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    acceptor_.join();
    {
      absl::MutexLock l(&mu_);
      for (int fd : connections_) ::shutdown(fd, SHUT_RDWR);
    }
    // First the node: a worker waiting for a commit that cannot come (no
    // majority) gets UNAVAILABLE and finishes.
    node_->Stop();
    for (std::thread& t : workers_) t.join();
  }

 private:
  DemoServer() = default;

  void Accept() {
    while (!stopping_) {
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) {
        if (stopping_) return;
        continue;
      }
      absl::MutexLock l(&mu_);
      connections_.push_back(fd);
      workers_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    std::string pending;
    char buf[4096];
    while (true) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      pending.append(buf, static_cast<size_t>(n));
      size_t eol;
      while ((eol = pending.find('\n')) != std::string::npos) {
        std::string reply = Handle(pending.substr(0, eol)) + "\n";
        pending.erase(0, eol + 1);
        if (::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL) < 0) break;
      }
    }
    absl::MutexLock l(&mu_);  // Shutdown must not shut down a reused number
    connections_.erase(std::find(connections_.begin(), connections_.end(), fd));
    ::close(fd);
  }

  static std::string Refusal(const ProposeResult& r) {
    if (r.not_leader) {
      return absl::StrCat("NOT_LEADER ", r.leader.id, " ",
                          r.leader.address.empty() ? "-" : r.leader.address);
    }
    return absl::StrCat("UNAVAILABLE ", r.status.message());
  }

  std::string Handle(absl::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (absl::ConsumePrefix(&line, "PROPOSE ")) {
      ProposeResult r = node_->Propose(std::string(line)).get();
      if (!r.status.ok()) return Refusal(r);
      return absl::StrCat("OK ", r.index, " ", r.term, " ", r.output);
    }
    if (line == "READ") {
      ProposeResult r = node_->Barrier().get();
      if (!r.status.ok()) return Refusal(r);
      return machine_.Render();
    }
    if (line == "LOCAL") return machine_.Render();
    if (line == "STATUS") {
      RaftNodeStatus s = node_->status();
      return absl::StrCat("STATUS ", RaftRoleName(s.role), " ", s.term, " ", s.leader.id, " ",
                          s.last_applied, " ", s.leader_ready ? 1 : 0);
    }
    return absl::StrCat("ERROR unknown request '", line, "'");
  }

  HistoryMachine machine_;
  std::unique_ptr<RaftNode> node_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<int> connections_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;  // appended by Accept only, joined after it ends
};

}  // namespace
}  // namespace formica

int main(int argc, char** argv) {
  return formica::RunDaemon(argc, argv, "raft_node_demo", {{"listen", "demo.listen"}},
                            formica::LoadDemoOptions, formica::DemoServer::Start);
}
