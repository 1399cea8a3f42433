// The `raft.*` section: what a replicated daemon refuses at start, by key.
#include <gtest/gtest.h>

#include <string>

#include "formica/common/config.h"
#include "formica/internal/raft_node.h"

namespace formica {
namespace {

absl::Status Read(const std::string& yaml, RaftNodeOptions* options) {
  absl::StatusOr<Config> config = Config::Parse(yaml, "raft.yaml");
  if (!config.ok()) return config.status();
  ConfigReader r(*config);
  ReadRaftSection(r, options);
  return r.Finish();
}

absl::Status Read(const std::string& yaml) {
  RaftNodeOptions options;
  return Read(yaml, &options);
}

constexpr char kGood[] = R"(raft:
  node_id: 2
  data_dir: /tmp/raft-2
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7003"]
)";

TEST(RaftSection, ReadsAGroupOfThreeWithDefaults) {
  RaftNodeOptions o;
  ASSERT_TRUE(Read(kGood, &o).ok());
  EXPECT_EQ(o.node_id, 2u);
  ASSERT_EQ(o.peers.size(), 3u);
  EXPECT_EQ(o.peers[2].id, 3u);
  EXPECT_EQ(o.peers[2].address, "127.0.0.1:7003");
  EXPECT_EQ(o.SelfAddress(), "127.0.0.1:7002");
  EXPECT_EQ(o.election_timeout, absl::Seconds(1));
  EXPECT_EQ(o.heartbeat, absl::Milliseconds(100));
  EXPECT_EQ(o.snapshot_threshold, 1024u);
}

TEST(RaftSection, ReadsTimingAndSnapshotKeys) {
  RaftNodeOptions o;
  ASSERT_TRUE(Read(std::string(kGood) + "  election_timeout: 500ms\n  heartbeat: 50ms\n"
                                        "  snapshot_threshold: 64\n  snapshot_trailing: 8\n"
                                        "  listen: 0.0.0.0:7002\n",
                   &o)
                  .ok());
  EXPECT_EQ(o.election_timeout, absl::Milliseconds(500));
  EXPECT_EQ(o.heartbeat, absl::Milliseconds(50));
  EXPECT_EQ(o.snapshot_threshold, 64u);
  EXPECT_EQ(o.snapshot_trailing, 8u);
  EXPECT_EQ(o.listen, "0.0.0.0:7002");
}

void ExpectRefused(const std::string& yaml, const std::string& key, const std::string& why) {
  absl::Status st = Read(yaml);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find(key), std::string::npos) << st;
  EXPECT_NE(st.message().find(why), std::string::npos) << st;
}

TEST(RaftSection, RefusesAnEvenSizedGroup) {
  ExpectRefused(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7003", "4@127.0.0.1:7004"]
)",
                "raft.peers", "a group of 4 members is even");
}

TEST(RaftSection, RefusesADuplicateNodeId) {
  ExpectRefused(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "2@127.0.0.1:7003"]
)",
                "raft.peers", "node id 2 is listed twice");
}

TEST(RaftSection, RefusesADuplicateAddress) {
  ExpectRefused(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7002"]
)",
                "raft.peers", "address 127.0.0.1:7002 is listed twice");
}

TEST(RaftSection, RefusesAPeerThatIsNotIdAtAddress) {
  ExpectRefused(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "127.0.0.1:7002", "3@127.0.0.1:7003"]
)",
                "raft.peers", "entry 2: '127.0.0.1:7002' is not ID@HOST:PORT");
  ExpectRefused(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:99999", "3@127.0.0.1:7003"]
)",
                "raft.peers", "entry 2");
}

TEST(RaftSection, AcceptsMembersNamedByHostName) {
  RaftNodeOptions o;
  ASSERT_TRUE(Read(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  listen: 0.0.0.0:7391
  peers: ["1@dmsd-0.dmsd.formica.svc.cluster.local:7391", "2@localhost:7391", "3@10.0.0.3:7391"]
)",
                   &o)
                  .ok());
  ASSERT_EQ(o.peers.size(), 3u);
  EXPECT_EQ(o.SelfAddress(), "dmsd-0.dmsd.formica.svc.cluster.local:7391");
  EXPECT_EQ(o.peers[1].address, "localhost:7391");
  // A name that resolves nowhere (yet) is no reason to refuse: DNS may come later.
  ASSERT_TRUE(Read(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  listen: my-host:7001
  peers: ["1@my-host:7001", "2@no-such-member.invalid:7002", "3@x9:7003"]
)",
                   &o)
                  .ok());
  EXPECT_EQ(o.listen, "my-host:7001");
  // One trailing dot: an absolute name.
  ASSERT_TRUE(Read(R"(raft:
  node_id: 1
  data_dir: /tmp/r
  listen: 0.0.0.0:7001
  peers: ["1@dtsd-0.dtsd.formica.svc.cluster.local.:7001", "2@b:7002", "3@c:7003"]
)",
                   &o)
                  .ok());
  EXPECT_EQ(o.SelfAddress(), "dtsd-0.dtsd.formica.svc.cluster.local.:7001");
}

TEST(RaftSection, ReadsTheSnapshotTimeoutWithinItsRange) {
  RaftNodeOptions o;
  EXPECT_EQ(o.snapshot_timeout, absl::Seconds(30)) << "libraft's own default";
  const std::string base = R"(raft:
  node_id: 1
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001"]
)";
  ASSERT_TRUE(Read(base + "  snapshot_timeout: 5s\n", &o).ok());
  EXPECT_EQ(o.snapshot_timeout, absl::Seconds(5));
  absl::Status st = Read(base + "  snapshot_timeout: 10ms\n", &o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("raft.snapshot_timeout"), absl::string_view::npos) << st;
}

TEST(RaftSection, RefusesAHostThatIsNeitherIpv4NorAName) {
  const std::string head = "raft:\n  node_id: 1\n  data_dir: /tmp/r\n  peers: [\"1@a:7001\", ";
  const std::string tail = ", \"3@c:7003\"]\n";
  ExpectRefused(head + "\"2@dmsd_1.dmsd:7002\"" + tail, "raft.peers",
                "entry 2: '2@dmsd_1.dmsd:7002': 'dmsd_1.dmsd' is not a host name (label 'dmsd_1' "
                "has '_'");
  ExpectRefused(head + "\"2@-dmsd.x:7002\"" + tail, "raft.peers",
                "label '-dmsd' starts or ends with '-'");
  ExpectRefused(head + "\"2@dmsd..x:7002\"" + tail, "raft.peers", "an empty label");
  ExpectRefused(head + "\"2@" + std::string(64, 'a') + ":7002\"" + tail, "raft.peers",
                "is over 63 characters");
  ExpectRefused(head + "\"2@10.0.0.256:7002\"" + tail, "raft.peers",
                "'10.0.0.256' is not an IPv4 address");
  ExpectRefused(head + "\"2@[::1]:7002\"" + tail, "raft.peers", "raft members speak IPv4 only");
  ExpectRefused(head + "\"2@dmsd-1.dmsd\"" + tail, "raft.peers", "no port");
  ExpectRefused(std::string(kGood) + "  listen: \"[::]:7002\"\n", "raft.listen",
                "raft members speak IPv4 only");
  ExpectRefused(std::string(kGood) + "  listen: bad_host:7002\n", "raft.listen",
                "'bad_host' is not a host name");
}

TEST(RaftSection, RefusesANodeMissingFromThePeers) {
  ExpectRefused(R"(raft:
  node_id: 4
  data_dir: /tmp/r
  peers: ["1@127.0.0.1:7001", "2@127.0.0.1:7002", "3@127.0.0.1:7003"]
)",
                "raft.node_id", "node 4 is not in raft.peers");
}

TEST(RaftSection, RefusesMissingIdPeersOrDataDir) {
  ExpectRefused("raft:\n  data_dir: /tmp/r\n  peers: [\"1@127.0.0.1:7001\"]\n", "raft.node_id",
                "set this member's id");
  ExpectRefused("raft:\n  node_id: 1\n  data_dir: /tmp/r\n", "raft.peers", "list every member");
  ExpectRefused("raft:\n  node_id: 1\n  peers: [\"1@127.0.0.1:7001\"]\n", "raft.data_dir",
                "set the directory");
}

TEST(RaftSection, RefusesAHeartbeatOverHalfTheElectionTimeout) {
  ExpectRefused(std::string(kGood) + "  election_timeout: 300ms\n  heartbeat: 200ms\n",
                "raft.heartbeat", "more than half raft.election_timeout");
}

TEST(RaftSection, RefusesAnUnknownKey) {
  ExpectRefused(std::string(kGood) + "  election_timout: 300ms\n", "raft.election_timout", "");
}

}  // namespace
}  // namespace formica
