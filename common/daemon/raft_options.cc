// The `raft.*` section of a replicated daemon's config (raft_node.h).
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/common/config.h"
#include "formica/internal/raft_node.h"
#include "raft_named_transport.h"

namespace formica {

std::string RaftNodeOptions::SelfAddress() const {
  for (const RaftPeer& p : peers) {
    if (p.id == node_id) return p.address;
  }
  return "";
}

namespace {

// "ID@HOST:PORT" -> peer, or an error saying what is wrong with it.
absl::StatusOr<RaftPeer> ParsePeer(const std::string& text) {
  size_t at = text.find('@');
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not ID@HOST:PORT (e.g. 1@10.0.0.1:7390 or 1@dmsd-0.dmsd:7390)"));
  }
  RaftPeer peer;
  if (!absl::SimpleAtoi(text.substr(0, at), &peer.id) || peer.id == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "': the id before '@' must be a whole number >= 1"));
  }
  peer.address = text.substr(at + 1);
  if (absl::Status st = ValidateRaftAddress(peer.address); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "': ", st.message()));
  }
  return peer;
}

}  // namespace

void ReadRaftSection(ConfigReader& r, RaftNodeOptions* o) {
  int64_t id = r.Int("raft.node_id", static_cast<int64_t>(o->node_id), 0, int64_t{1} << 62);
  o->node_id = static_cast<uint64_t>(id);
  std::vector<std::string> peer_texts;
  for (const RaftPeer& p : o->peers) peer_texts.push_back(absl::StrCat(p.id, "@", p.address));
  peer_texts = r.StringList("raft.peers", peer_texts);
  o->listen = r.String("raft.listen", o->listen);
  o->data_dir = r.String("raft.data_dir", o->data_dir);
  o->election_timeout = r.Duration("raft.election_timeout", o->election_timeout,
                                   absl::Milliseconds(100), absl::Minutes(1));
  o->heartbeat =
      r.Duration("raft.heartbeat", o->heartbeat, absl::Milliseconds(10), absl::Seconds(30));
  o->snapshot_threshold = static_cast<uint32_t>(
      r.Int("raft.snapshot_threshold", o->snapshot_threshold, 16, int64_t{1} << 30));
  o->snapshot_trailing = static_cast<uint32_t>(
      r.Int("raft.snapshot_trailing", o->snapshot_trailing, 0, int64_t{1} << 30));
  o->snapshot_timeout =
      r.Duration("raft.snapshot_timeout", o->snapshot_timeout, absl::Seconds(1), absl::Hours(1));

  if (o->node_id == 0) {
    r.Fail("raft.node_id", "set this member's id, a whole number >= 1 listed in raft.peers");
  }
  if (peer_texts.empty()) {
    r.Fail("raft.peers", "list every member of the group as ID@HOST:PORT, this one included");
  }
  o->peers.clear();
  std::map<uint64_t, std::string> ids;
  std::map<std::string, uint64_t> addresses;
  for (size_t i = 0; i < peer_texts.size(); ++i) {
    absl::StatusOr<RaftPeer> peer = ParsePeer(peer_texts[i]);
    if (!peer.ok()) {
      r.Fail("raft.peers", absl::StrCat("entry ", i + 1, ": ", peer.status().message()));
      return;
    }
    if (auto [it, fresh] = ids.emplace(peer->id, peer->address); !fresh) {
      r.Fail("raft.peers", absl::StrCat("node id ", peer->id, " is listed twice (", it->second,
                                        " and ", peer->address, "); each member needs its own"));
      return;
    }
    if (auto [it, fresh] = addresses.emplace(peer->address, peer->id); !fresh) {
      r.Fail("raft.peers", absl::StrCat("address ", peer->address, " is listed twice (ids ",
                                        it->second, " and ", peer->id, ")"));
      return;
    }
    o->peers.push_back(*std::move(peer));
  }
  if (!o->peers.empty() && o->peers.size() % 2 == 0) {
    r.Fail("raft.peers",
           absl::StrCat("a group of ", o->peers.size(),
                        " members is even: it tolerates no more failures than one member fewer "
                        "and can split its vote; list an odd number (3 or 5)"));
  }
  if (o->node_id != 0 && !o->peers.empty() && ids.count(o->node_id) == 0) {
    std::vector<std::string> listed;
    for (const auto& [pid, unused] : ids) listed.push_back(absl::StrCat(pid));
    r.Fail("raft.node_id", absl::StrCat("node ", o->node_id, " is not in raft.peers (ids ",
                                        absl::StrJoin(listed, ", "), ")"));
  }
  if (!o->listen.empty()) {
    if (absl::Status st = ValidateRaftAddress(o->listen); !st.ok())
      r.Fail("raft.listen", st.message());
  }
  if (o->data_dir.empty()) {
    r.Fail("raft.data_dir", "set the directory for this member's log and snapshots");
  }
  if (o->heartbeat * 2 > o->election_timeout) {
    r.Fail("raft.heartbeat", absl::StrCat(absl::FormatDuration(o->heartbeat),
                                          " is more than half raft.election_timeout (",
                                          absl::FormatDuration(o->election_timeout),
                                          "): followers would start elections between heartbeats"));
  }
}

}  // namespace formica
