// Test support: a group of raft_node_demo processes (tests/common/
// raft_node_demo.cc) on 127.0.0.1 random ports, each with its own data
// directory, and a line client for their protocol. Killed on destruction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "process.h"

namespace formica::testing {

// One TCP connection speaking raft_node_demo's line protocol.
class LineClient {
 public:
  static absl::StatusOr<std::unique_ptr<LineClient>> Connect(int port);
  ~LineClient();
  bool Send(const std::string& line);
  // The next reply line, or "" on timeout or a closed connection.
  std::string ReadLine(absl::Duration timeout);

 private:
  explicit LineClient(int fd) : fd_(fd) {}
  int fd_;
  std::string pending_;
};

// One request on a fresh connection; "" when the member does not answer.
std::string AskDemo(int port, const std::string& line, absl::Duration timeout = absl::Seconds(10));

// The values of a "VALUES n v1 ... vn" reply; empty for anything else.
std::vector<std::string> ParseValues(const std::string& reply);

class RaftDemoGroup {
 public:
  struct Options {
    int size = 3;
    absl::Duration election_timeout = absl::Seconds(1);
    absl::Duration heartbeat = absl::Milliseconds(100);
    int snapshot_threshold = 1024;
    int snapshot_trailing = 128;
    // The demo's snapshots are small: a dropped one is sent again soon.
    absl::Duration snapshot_timeout = absl::Seconds(5);
    // The host each member is listed under in raft.peers, by index (none:
    // 127.0.0.1 for all), e.g. "localhost" to name members by host name.
    std::vector<std::string> hosts;
    // Every member binds 127.0.0.1 (raft.listen) whatever it is listed as.
    bool listen_on_loopback = false;
  };
  struct Member {
    int id = 0;  // raft node id, index + 1
    int raft_port = 0;
    int demo_port = 0;
    std::string data_dir;
    std::string config_path;
    std::vector<std::string> log_paths;  // one per launch, the last one current
    std::unique_ptr<Subprocess> process;
  };

  // Writes every member's config under `dir` and starts them all.
  static absl::StatusOr<std::unique_ptr<RaftDemoGroup>> Start(const std::string& dir,
                                                              Options options);

  int size() const { return static_cast<int>(members_.size()); }
  Member& member(int i) { return members_[i]; }
  // The host member `i` is listed under in raft.peers.
  std::string host(int i) const;
  // The YAML config of member `i` as the group writes it.
  std::string ConfigText(int i) const;

  // (Re)starts member `i` on its ports and data dir; waits for its ready line.
  absl::Status StartMember(int i);
  void Kill9(int i);
  void Signal(int i, int sig);

  std::string Ask(int i, const std::string& line, absl::Duration timeout = absl::Seconds(10));
  // The index of a member that answers STATUS as a ready leader (the one
  // with the highest term), skipping `exclude`; -1 when none within `timeout`.
  int WaitForLeader(absl::Duration timeout, int exclude = -1);
  // Everything every member printed, for failure messages.
  std::string Logs() const;

 private:
  RaftDemoGroup(std::string dir, Options options) : dir_(std::move(dir)), options_(options) {}
  std::string dir_;
  Options options_;
  std::vector<Member> members_;
};

}  // namespace formica::testing
