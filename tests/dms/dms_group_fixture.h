// A replicated dmsd broker group (docs/ha.md) as real processes: a dsrd and
// three dmsd members on 127.0.0.1 random ports, each with its own YAML
// config (a `raft` section), storage and Raft data dirs. Killed on
// destruction.
#pragma once

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "registry_fixture.h"

namespace formica::dms::testing {

using formica::testing::Subprocess;

class DmsGroupTest : public formica::registry::testing::RegistryTest {
 protected:
  struct Member {
    int id = 0;
    int port = 0;  // server.listen
    int raft_port = 0;
    std::string config_path;
    std::unique_ptr<Subprocess> process;
    int runs = 0;
  };

  // Writes the three members' configs with `topics` (NAME:QUEUES each).
  // Snapshots: dmsd's defaults unless given.
  // With `broker_group`, the group's name (docs/dms.md, "Several broker
  // groups").
  void WriteConfigs(const std::vector<std::string>& topics, int snapshot_threshold = 4096,
                    int snapshot_trailing = 65536, const std::string& broker_group = "") {
    members_.resize(3);
    for (int i = 0; i < 3; ++i) {
      members_[i].id = i + 1;
      members_[i].port = formica::testing::PickFreePort();
      members_[i].raft_port = formica::testing::PickFreePort();
    }
    std::vector<std::string> peers;
    for (const Member& m : members_) {
      peers.push_back(absl::StrCat("\"", m.id, "@127.0.0.1:", m.raft_port, "\""));
    }
    std::vector<std::string> quoted;
    for (const std::string& t : topics) quoted.push_back(absl::StrCat("\"", t, "\""));
    for (Member& m : members_) {
      m.config_path = dir_.File(absl::StrCat("dmsd", m.id, ".yaml"));
      std::ofstream(m.config_path) << absl::StrCat(
          broker_group.empty() ? "" : absl::StrCat("broker_group: ", broker_group, "\n"),
          "server:\n  listen: 127.0.0.1:", m.port, "\n  unpublish_grace: 0s\n",
          "registry:\n  addresses: [\"", dsrd_->address(), "\"]\n",
          "storage:\n  data_dir: ", dir_.File(absl::StrCat("dmsd", m.id)), "\n",
          "topics:\n  create: [", absl::StrJoin(quoted, ", "), "]\n",
          "consume:\n  retry_initial: 50ms\n  retry_max: 200ms\n", "raft:\n  node_id: ", m.id,
          "\n  data_dir: ", dir_.File(absl::StrCat("raft", m.id)), "\n  peers: [",
          absl::StrJoin(peers, ", "), "]\n  snapshot_threshold: ", snapshot_threshold,
          "\n  snapshot_trailing: ", snapshot_trailing, "\n");
    }
  }

  void StartMember(int i) {
    Member& m = members_[i];
    m.process.reset();
    auto p =
        Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--config", m.config_path},
                          dir_.File(absl::StrCat("dmsd", m.id, ".", ++m.runs, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    m.process = std::move(*p);
    ASSERT_TRUE(m.process->WaitForOutput("dmsd ready on port", absl::Seconds(20)))
        << m.process->Output();
  }

  void StartAll() {
    for (int i = 0; i < 3; ++i) StartMember(i);
  }

  // The member whose broker answers (the ready leader), skipping `exclude`;
  // -1 when none within `timeout`.
  int WaitForLeader(absl::Duration timeout, int exclude = -1) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      for (int i = 0; i < static_cast<int>(members_.size()); ++i) {
        if (i == exclude || members_[i].process == nullptr) continue;
        if (Answers(i).ok()) return i;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return -1;
  }

  // ListTopics straight to member `i`: OK on the leader, UNAVAILABLE naming
  // the leader on a follower.
  grpc::Status Answers(int i) {
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", members_[i].port),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::Broker::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    v1::ListTopicsRequest req;
    v1::ListTopicsReply reply;
    return stub->ListTopics(&ctx, req, &reply);
  }

  void Kill9(int i) {
    members_[i].process->Signal(SIGKILL);
    members_[i].process->Wait(absl::Seconds(10));
    members_[i].process.reset();
  }

  std::string Logs() {
    std::string out;
    for (const Member& m : members_) {
      if (m.process != nullptr) {
        out += absl::StrCat("---- dmsd ", m.id, "\n", m.process->Output(), "\n");
      }
    }
    return out;
  }

  std::vector<Member> members_;
};

}  // namespace formica::dms::testing
