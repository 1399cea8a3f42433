#include "broker.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "formica/common/config.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/names.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "group_cursor.h"
#include "group_progress.h"
#include "threaded_stream.h"
#include "topic.h"
#include "transactions.h"
#include "formica/internal/address.h"

namespace formica::dms {
namespace {

constexpr int kMaxKeyBytes = 1024;
constexpr int kMaxTags = 32;
constexpr int kMaxTagBytes = 128;
constexpr int kMaxDedupKeyBytes = 256;
constexpr int kMaxPropertiesBytes = 64 << 10;
constexpr int kMaxInFlightPerConsumer = 10000;
constexpr size_t kMaxMessagesPerReply = 256;
// A Consume reply's encoded size: gRPC's default limit on a message a client
// receives, so a client that keeps it gets every reply; larger only when one
// message alone is.
constexpr size_t kMaxReplyBytes = 4 << 20;
// Offsets a queue may skip at start (see NeverReuseOffsets): more is not a
// damaged tail but a wrong data directory.
constexpr uint64_t kMaxLostOffsets = 1 << 22;

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

// Topics, groups, producer groups and consumer ids: the names of docs/dms.md.
absl::Status ValidName(absl::string_view what, absl::string_view name) {
  return CheckName(NameRule{what, 128, IsPlainNameChar, kPlainNameChars}, name);
}

std::string Sep() { return std::string(1, '\0'); }

// Meta store keys.
//   d/<topic>\0<dedup key>            -> "<queue> <offset> <born ms>"
//   m/<topic>\0<queue>                -> next offset whose dedup key is not indexed yet
//   l/<group>\0<topic>\0<queue:5>\0<offset:20> -> DeadLetter
std::string DedupKey(absl::string_view topic, absl::string_view key) {
  return absl::StrCat("d/", topic, Sep(), key);
}
std::string MarkKey(absl::string_view topic, int queue) {
  return absl::StrCat("m/", topic, Sep(), queue);
}
std::string LetterPrefix(absl::string_view group) { return absl::StrCat("l/", group, Sep()); }
std::string LetterKey(absl::string_view group, absl::string_view topic, int queue,
                      uint64_t offset) {
  return absl::StrCat(LetterPrefix(group), topic, Sep(), absl::StrFormat("%05d", queue), Sep(),
                      absl::StrFormat("%020u", offset));
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("dmsd meta store: ", what, ": ", s.ToString()));
}

bool TagsMatch(const absl::flat_hash_set<std::string>& wanted, const v1::StoredMessage& m) {
  if (wanted.empty()) return true;
  for (const std::string& t : m.tags()) {
    if (wanted.contains(t)) return true;
  }
  return false;
}

}  // namespace

struct DedupCall;

// A topic and the bookkeeping of producer dedup keys in it.
struct TopicState {
  std::string name;
  std::unique_ptr<Topic> topic;
  // Dedup keys being stored now (a second send with one waits for it), and
  // per queue the offsets of dedup'd messages written but not indexed yet.
  absl::Mutex dedup_mu;
  absl::flat_hash_set<std::string> pending ABSL_GUARDED_BY(dedup_mu);
  std::vector<std::multiset<uint64_t>> unindexed ABSL_GUARDED_BY(dedup_mu);
  std::vector<uint64_t> marks ABSL_GUARDED_BY(dedup_mu);
  // Calls waiting for a key in `pending`; started again when a call ends.
  std::vector<std::shared_ptr<DedupCall>> parked ABSL_GUARDED_BY(dedup_mu);
};

// A produce with dedup keys, from its start to its answer.
struct DedupCall {
  TopicState* topic = nullptr;
  std::shared_ptr<const std::vector<v1::StoredMessage>> stored;
  v1::ProduceReply* reply = nullptr;
  std::function<void(absl::Status)> finish;
  std::vector<int> to_store;              // indexes of the messages written
  std::vector<std::pair<int, int>> same;  // (i, earlier index in this request)
  std::vector<std::string> claimed;       // keys this call put in `pending`
  std::vector<Produced> placed;           // where to_store[j] went
  std::map<int, uint64_t> last;           // per queue written: the last offset
};

// One consumer stream.
struct Member {
  uint64_t id = 0;
  std::string consumer_id;
  int max_in_flight = 64;
  int out = 0;  // messages it holds
  std::vector<v1::Delivered> outbox;
  std::vector<v1::MessageRef> acked;
  bool closed = false;
};

// A dead letter being delivered to its group again.
struct Replay {
  v1::DeadLetter letter;
  int attempts = 0;
  bool out = false;
  absl::Time due;
  uint64_t owner = 0;
};

struct Spec {
  absl::flat_hash_set<std::string> tags;
  bool ordered = false;
  int max_attempts = 0;
  absl::Duration ack_timeout;
  bool operator==(const Spec& o) const {
    return tags == o.tags && ordered == o.ordered && max_attempts == o.max_attempts &&
           ack_timeout == o.ack_timeout;
  }
};

// Where one consumer group (or one broadcast member) stands in one topic.
struct GroupState {
  std::string name;         // the progress name: the group, or "<group>@<consumer>" in broadcast
  std::string base;         // the group as named by consumers
  std::string member_name;  // broadcast: the consumer id
  TopicState* topic = nullptr;
  absl::Mutex mu;
  Spec spec ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<GroupCursor>> cursors ABSL_GUARDED_BY(mu);
  std::map<uint64_t, std::shared_ptr<Member>> members ABSL_GUARDED_BY(mu);
  std::map<std::pair<int, uint64_t>, uint64_t> owners ABSL_GUARDED_BY(mu);  // -> member id
  std::map<std::pair<int, uint64_t>, Replay> replays ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> persisted ABSL_GUARDED_BY(mu);  // committed offsets written
  size_t next_queue ABSL_GUARDED_BY(mu) = 0;
  size_t next_member ABSL_GUARDED_BY(mu) = 0;
  uint64_t lost_to_retention ABSL_GUARDED_BY(mu) = 0;
  absl::Time last_read_error ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

class Broker::Impl final
    : public v1::Broker::WithCallbackMethod_CheckBack<v1::Broker::WithCallbackMethod_Consume<
          v1::Broker::WithCallbackMethod_Produce<v1::Broker::Service>>> {
 public:
  BrokerOptions options;
  std::unique_ptr<GroupProgress> progress;
  std::unique_ptr<rocksdb::DB> meta;
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<rpc::Client> rpc;  // to dtsd, for messages joined to activities
  std::unique_ptr<Transactions> txns;
  std::unique_ptr<rpc::Server> server;

  absl::Mutex topics_mu;
  std::map<std::string, std::unique_ptr<TopicState>> topics ABSL_GUARDED_BY(topics_mu);
  // At start: who has progress in which topic (read once for all topics).
  std::map<std::string, std::vector<GroupQueue>> progress_at_start ABSL_GUARDED_BY(topics_mu);
  absl::Mutex groups_mu;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<GroupState>> groups
      ABSL_GUARDED_BY(groups_mu);  // (progress name, topic)
  std::atomic<uint64_t> next_member_id{1};

  absl::Mutex kick_mu;
  bool kicked ABSL_GUARDED_BY(kick_mu) = false;
  bool stopping ABSL_GUARDED_BY(kick_mu) = false;
  std::atomic<bool> streams_stop{false};
  LiveStreams live_streams;  // Consume and CheckBack
  std::thread dispatcher, housekeeper;

  absl::Mutex disk_mu;
  std::string disk_full ABSL_GUARDED_BY(disk_mu);  // why produce is refused, or empty
  bool shut_down = false;

  // ---- start-up -------------------------------------------------------

  absl::Status Open() {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir + "/topics", ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", options.data_dir, "/topics: ", ec.message()));
    }
    absl::StatusOr<std::unique_ptr<GroupProgress>> p =
        GroupProgress::Open(options.data_dir + "/progress");
    if (!p.ok()) return p.status();
    progress = *std::move(p);
    rocksdb::Options ro;
    ro.create_if_missing = true;
    ro.max_open_files = 64;
    ro.keep_log_file_num = 4;
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(ro, options.data_dir + "/meta", &raw);
    if (!s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot open the meta store in '", options.data_dir, "/meta': ", s.ToString()));
    }
    meta.reset(raw);
    absl::StatusOr<std::vector<GroupQueue>> known = progress->Queues();
    if (!known.ok()) return known.status();
    {
      absl::MutexLock lock(&topics_mu);
      for (GroupQueue& q : *known) progress_at_start[q.topic].push_back(std::move(q));
    }
    std::vector<std::string> names;
    std::string topics_dir = options.data_dir + "/topics";
    // Listed whole first: some are renamed or moved below.
    std::vector<std::filesystem::directory_entry> entries{
        std::filesystem::directory_iterator(topics_dir), std::filesystem::directory_iterator()};
    for (const auto& entry : entries) {
      std::string file = entry.path().filename().string();
      if (!entry.is_directory()) {
        SPDLOG_WARN("{} is not a topic directory; left alone", entry.path().string());
        continue;
      }
      std::optional<std::string> name = TopicOfDirectory(file);
      if (!name.has_value() && ValidName("topic name", file).ok()) {
        // Named by an earlier dmsd, with the topic's name as it is.
        name = file;
        if (absl::Status st = MoveDirectory(entry.path().string(),
                                            absl::StrCat(topics_dir, "/", TopicDirectory(file)));
            !st.ok()) {
          return st;
        }
        SPDLOG_INFO("topic {}: directory {} renamed to {}", file, file, TopicDirectory(file));
      }
      std::string dir =
          absl::StrCat(topics_dir, "/", name.has_value() ? TopicDirectory(*name) : file);
      if (!name.has_value()) {
        if (!HoldsRecords(dir)) {
          SPDLOG_WARN("{} is not a topic directory and holds no messages; left alone", dir);
        } else if (absl::Status st = Damaged(
                       dir, "it holds queue logs but its name is not one dmsd gives a topic");
                   !st.ok()) {
          return st;
        }
        continue;
      }
      if (!std::filesystem::exists(dir + "/QUEUES")) {
        if (HoldsRecords(dir)) {
          if (absl::Status st = Damaged(dir,
                                        "it holds queue logs but no QUEUES file (the topic's queue "
                                        "count), so its messages cannot be placed");
              !st.ok()) {
            return st;
          }
        } else {
          // A creation cut short before its queue count was written.
          SPDLOG_WARN(
              "{} holds no QUEUES file and no messages (a topic creation cut short); "
              "skipped",
              dir);
        }
        continue;
      }
      names.push_back(*name);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      absl::StatusOr<TopicState*> t = OpenTopic(name, 0);
      if (t.ok()) continue;
      if (!absl::IsDataLoss(t.status())) return t.status();
      std::string dir = absl::StrCat(topics_dir, "/", TopicDirectory(name));
      if (absl::Status st = Damaged(dir, t.status().message()); !st.ok()) return st;
    }
    {
      absl::MutexLock lock(&topics_mu);
      progress_at_start.clear();
    }
    for (const auto& [name, queues] : options.topics) {
      absl::StatusOr<TopicState*> t = OpenTopic(name, queues);
      if (!t.ok()) {
        return absl::Status(
            t.status().code(),
            absl::StrCat("topic '", name, "' from the config: ", t.status().message()));
      }
    }
    return absl::OkStatus();
  }

  // Whether a directory holds any queue log record (a non-empty .log file).
  static bool HoldsRecords(const std::string& dir) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && it->path().extension() == ".log" && it->file_size(ec) > 0) {
        return true;
      }
    }
    return ec.value() != 0;  // unreadable: it may hold some
  }

  static absl::Status MoveDirectory(const std::string& from, const std::string& to) {
    std::error_code ec;
    if (std::filesystem::exists(to, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot move ", from, " to ", to,
                       ": it exists; both hold the same topic, an operator "
                       "must decide which to keep"));
    }
    std::filesystem::rename(from, to, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot move ", from, " to ", to, ": ", ec.message()));
    }
    for (const std::string& d : {std::filesystem::path(from).parent_path().string(),
                                 std::filesystem::path(to).parent_path().string()}) {
      int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY);
      if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
      }
    }
    return absl::OkStatus();
  }

  // A topic directory that may hold acknowledged messages and cannot be
  // opened: dmsd refuses to start, unless the operator asked to move such
  // directories aside (storage.quarantine_damaged_topics).
  absl::Status Damaged(const std::string& dir, absl::string_view why) {
    if (!options.quarantine_damaged_topics) {
      return absl::DataLossError(absl::StrCat(
          "topic directory ", dir, " cannot be opened: ", why,
          ". dmsd does not start without the messages it may hold: repair or remove it, or start "
          "with --quarantine-damaged-topics=true (storage.quarantine_damaged_topics) to move it "
          "to ",
          options.data_dir, "/quarantine and start without it"));
    }
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir + "/quarantine", ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", options.data_dir, "/quarantine: ", ec.message()));
    }
    std::string to = absl::StrCat(
        options.data_dir, "/quarantine/", std::filesystem::path(dir).filename().string(), ".",
        absl::FormatTime("%Y%m%dT%H%M%S", absl::Now(), absl::UTCTimeZone()));
    if (absl::Status st = MoveDirectory(dir, to); !st.ok()) return st;
    SPDLOG_ERROR(
        "topic directory {} cannot be opened: {}; moved to {} "
        "(storage.quarantine_damaged_topics) and dmsd starts without it",
        dir, std::string(why), to);
    return absl::OkStatus();
  }

  LogOptions LogOpts() const {
    LogOptions lo;
    lo.sync = options.sync;
    lo.segment_bytes = static_cast<uint64_t>(options.segment_bytes);
    lo.max_record_bytes =
        static_cast<uint32_t>(options.max_body_bytes + kMaxPropertiesBytes + 64 * 1024);
    return lo;
  }

  // Opens (or creates, with `queues` > 0) a topic and catches its dedup
  // index up with the log.
  absl::StatusOr<TopicState*> OpenTopic(const std::string& name, int queues)
      ABSL_LOCKS_EXCLUDED(topics_mu) {
    absl::MutexLock lock(&topics_mu);
    auto it = topics.find(name);
    if (it != topics.end()) {
      if (queues > 0 && it->second->topic->queues() != queues) {
        return absl::AlreadyExistsError(absl::StrCat("topic '", name, "' exists with ",
                                                     it->second->topic->queues(), " queues, not ",
                                                     queues));
      }
      return it->second.get();
    }
    TopicOptions to;
    to.dir = absl::StrCat(options.data_dir, "/topics/", TopicDirectory(name));
    to.queues = queues;
    to.log = LogOpts();
    std::vector<RecoveryReport> reports;
    absl::StatusOr<std::unique_ptr<Topic>> topic = Topic::Open(to, &reports);
    if (!topic.ok()) return topic.status();
    uint64_t records = 0;
    for (size_t q = 0; q < reports.size(); ++q) {
      records += reports[q].records;
      if (!reports[q].cut_file.empty()) {
        SPDLOG_WARN(
            "topic {} queue {}: cut a damaged tail of {} at byte {} ({} bytes): {}; every whole "
            "record before it is kept",
            name, q, reports[q].cut_file, reports[q].cut_at, reports[q].cut_bytes,
            reports[q].cut_reason);
      }
    }
    auto state = std::make_unique<TopicState>();
    state->name = name;
    state->topic = *std::move(topic);
    if (absl::Status st = NeverReuseOffsets(*state, reports); !st.ok()) return st;
    if (absl::Status st = CatchUpDedup(*state); !st.ok()) return st;
    SPDLOG_INFO("topic {}: {} queues, {} messages kept", name, state->topic->queues(), records);
    TopicState* raw = state.get();
    topics[name] = std::move(state);
    return raw;
  }

  // An offset once handed out is never handed out again: a queue whose log
  // ends below what some group acknowledged, or below its dedup mark (its
  // tail was cut, or lost in a machine crash with storage.flush: async),
  // continues above all of it, the offsets between holding placeholders
  // that are never delivered. Each group is told what it lost.
  // Dedup keys of messages a cut removed are forgotten too, so a retried
  // send stores its message again instead of answering with a lost one.
  absl::Status NeverReuseOffsets(TopicState& t, const std::vector<RecoveryReport>& reports)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(topics_mu) {
    std::map<int, uint64_t> lost_from;  // queue -> its first lost offset
    // A queue to continue above its log's end.
    struct Skip {
      int queue;
      uint64_t end, next;
      std::string why;
      std::vector<std::pair<std::string, QueueProgress>> groups;
    };
    std::vector<Skip> skips;
    std::vector<GroupQueue> known;
    if (auto it = progress_at_start.find(t.name); it != progress_at_start.end()) {
      known = it->second;
    } else if (progress_at_start.empty()) {
      absl::StatusOr<std::vector<GroupQueue>> all = progress->Queues();
      if (!all.ok()) return all.status();
      for (GroupQueue& q : *all) {
        if (q.topic == t.name) known.push_back(std::move(q));
      }
    }
    for (int q = 0; q < t.topic->queues(); ++q) {
      MessageLog& log = t.topic->log(q);
      uint64_t end = log.synced_end();
      // Who reached how far: the dedup index's mark, then each group.
      std::vector<std::pair<std::string, uint64_t>> reached;
      std::string value;
      rocksdb::Status s = meta->Get(rocksdb::ReadOptions(), MarkKey(t.name, q), &value);
      if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading a dedup mark");
      uint64_t mark = 0;
      if (s.ok() && absl::SimpleAtoi(value, &mark)) reached.emplace_back("the dedup index", mark);
      std::vector<std::pair<std::string, QueueProgress>> groups;
      for (const GroupQueue& g : known) {
        if (g.queue != q) continue;
        absl::StatusOr<QueueProgress> p = progress->Load(g.group, t.name, q);
        if (!p.ok()) return p.status();
        reached.emplace_back(absl::StrCat("group ", g.group),
                             std::max(p->committed, p->acked.empty() ? 0 : *p->acked.rbegin() + 1));
        groups.emplace_back(g.group, *std::move(p));
      }
      uint64_t next = end;
      for (const auto& [who, offset] : reached) next = std::max(next, offset);
      std::vector<std::string> furthest;
      for (const auto& [who, offset] : reached) {
        if (offset == next) furthest.push_back(who);
      }
      std::string why = absl::StrJoin(furthest, ", ");
      if (static_cast<size_t>(q) < reports.size() && !reports[q].cut_file.empty()) {
        lost_from[q] = end;
      }
      if (next == end) continue;
      lost_from[q] = end;
      if (next - end > kMaxLostOffsets) {
        return absl::DataLossError(
            absl::StrCat("topic ", t.name, " queue ", q, ": the log ends at offset ", end, " but ",
                         why, " reached offset ", next, "; more than ", kMaxLostOffsets,
                         " offsets lost is not a damaged tail: check the data directory"));
      }
      skips.push_back(Skip{q, end, next, why, std::move(groups)});
    }
    // Keys first: a start-up cut short after the placeholders are durable
    // finds no cut next time, so nothing would forget them after.
    if (absl::Status st = ForgetLostDedupKeys(t, lost_from); !st.ok()) return st;
    for (const auto& [q, end, next, why, groups] : skips) {
      if (absl::Status st = t.topic->SkipTo(q, next); !st.ok()) return st;
      SPDLOG_ERROR(
          "topic {} queue {}: offsets {} to {} were handed out before but their messages are "
          "not in the log (a damaged tail was cut, or lost in a machine crash); new messages "
          "start at offset {} (reached by {}), so no offset is used twice",
          t.name, q, end, next - 1, next, why);
      for (const auto& [group, p] : groups) {
        // Recorded as acked for the group, so its lag counts only what it
        // will get.
        std::vector<uint64_t> lost;
        for (uint64_t o = std::max(end, p.committed); o < next; ++o) {
          if (p.acked.count(o) == 0) lost.push_back(o);
        }
        if (lost.empty()) {
          SPDLOG_ERROR("topic {} queue {} group {}: lost nothing (it had acknowledged them all)",
                       t.name, q, group);
          continue;
        }
        if (absl::Status st = progress->Ack(group, t.name, q, lost, p.committed); !st.ok()) {
          return st;
        }
        SPDLOG_ERROR(
            "topic {} queue {} group {}: lost {} messages it never acknowledged, offsets {} to {}",
            t.name, q, group, lost.size(), lost.front(), lost.back());
      }
    }
    return absl::OkStatus();
  }

  absl::Status ForgetLostDedupKeys(const TopicState& t, const std::map<int, uint64_t>& lost_from) {
    if (lost_from.empty()) return absl::OkStatus();
    std::string prefix = DedupKey(t.name, "");
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    rocksdb::WriteBatch batch;
    size_t forgotten = 0;
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      std::vector<std::string> parts = absl::StrSplit(it->value().ToString(), ' ');
      int queue = 0;
      uint64_t offset = 0;
      if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &queue) ||
          !absl::SimpleAtoi(parts[1], &offset)) {
        continue;  // unreadable: never matches a send, and the sweep removes it
      }
      auto lost = lost_from.find(queue);
      if (lost != lost_from.end() && offset >= lost->second) {
        batch.Delete(it->key());
        ++forgotten;
      }
    }
    if (absl::Status st = FromRocks(it->status(), "reading the dedup index"); !st.ok()) return st;
    if (forgotten == 0) return absl::OkStatus();
    rocksdb::WriteOptions sync;
    sync.sync = true;
    if (absl::Status st = FromRocks(meta->Write(sync, &batch), "forgetting lost dedup keys");
        !st.ok()) {
      return st;
    }
    SPDLOG_WARN(
        "topic {}: forgot the dedup keys of {} lost messages (a retried send stores them "
        "again)",
        t.name, forgotten);
    return absl::OkStatus();
  }

  // The dedup index is written after the log, unsynced; on open the
  // records past each queue's mark are indexed again from the log itself.
  absl::Status CatchUpDedup(TopicState& t) {
    absl::MutexLock lock(&t.dedup_mu);
    int n = t.topic->queues();
    t.unindexed.assign(n, {});
    t.marks.assign(n, 0);
    int64_t oldest = NowMs() - absl::ToInt64Milliseconds(options.dedup_window);
    uint64_t indexed = 0;
    for (int q = 0; q < n; ++q) {
      std::string value;
      rocksdb::Status s = meta->Get(rocksdb::ReadOptions(), MarkKey(t.name, q), &value);
      if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading a dedup mark");
      uint64_t mark = 0;
      if (s.ok()) absl::SimpleAtoi(value, &mark);
      MessageLog& log = t.topic->log(q);
      mark = std::max(mark, log.first_offset());
      rocksdb::WriteBatch batch;
      while (mark < log.synced_end()) {
        std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
        if (absl::Status st = t.topic->Read(q, mark, 512, &got); !st.ok()) return st;
        if (got.empty()) break;
        for (const auto& [offset, m] : got) {
          if (!m.dedup_key().empty() && m.born_unix_ms() >= oldest) {
            batch.Put(DedupKey(t.name, m.dedup_key()),
                      absl::StrCat(q, " ", offset, " ", m.born_unix_ms()));
            ++indexed;
          }
          mark = offset + 1;
        }
      }
      batch.Put(MarkKey(t.name, q), absl::StrCat(mark));
      if (absl::Status st = FromRocks(meta->Write(rocksdb::WriteOptions(), &batch), "dedup index");
          !st.ok()) {
        return st;
      }
      t.marks[q] = mark;
    }
    if (indexed > 0) SPDLOG_INFO("topic {}: indexed {} dedup keys from the log", t.name, indexed);
    return absl::OkStatus();
  }

  TopicState* FindTopic(const std::string& name) {
    absl::MutexLock lock(&topics_mu);
    auto it = topics.find(name);
    return it == topics.end() ? nullptr : it->second.get();
  }

  std::vector<TopicState*> AllTopics() {
    absl::MutexLock lock(&topics_mu);
    std::vector<TopicState*> out;
    for (auto& [name, t] : topics) out.push_back(t.get());
    return out;
  }

  void Kick() {
    absl::MutexLock lock(&kick_mu);
    kicked = true;
  }

  // ---- produce --------------------------------------------------------

  grpc::Status CreateTopic(grpc::ServerContext* ctx, const v1::CreateTopicRequest* req,
                           v1::TopicInfo* reply) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = ValidName("topic name", req->name()); !st.ok()) {
        return ToGrpcStatus(st);
      }
      int queues = req->queues() == 0 ? options.default_queues : req->queues();
      if (queues < 1 || queues > 1024) {
        return ToGrpcStatus(absl::InvalidArgumentError(
            absl::StrCat("a topic has 1 to 1024 queues, not ", req->queues())));
      }
      absl::StatusOr<TopicState*> t = OpenTopic(req->name(), queues);
      if (!t.ok()) return ToGrpcStatus(t.status());
      Describe(**t, reply);
      return grpc::Status::OK;
    });
  }

  void Describe(TopicState& t, v1::TopicInfo* out) {
    out->set_name(t.name);
    for (int q = 0; q < t.topic->queues(); ++q) {
      v1::QueueInfo* qi = out->add_queues();
      qi->set_queue(q);
      MessageLog& log = t.topic->log(q);
      qi->set_first_offset(log.first_offset());
      qi->set_end_offset(log.synced_end());
      uint64_t bytes = 0;
      for (const SegmentInfo& s : log.Segments()) bytes += s.bytes;
      qi->set_bytes(bytes);
    }
  }

  grpc::Status ListTopics(grpc::ServerContext* ctx, const v1::ListTopicsRequest*,
                          v1::ListTopicsReply* reply) override {
    return rpc::Serve(ctx, [&] {
      for (TopicState* t : AllTopics()) Describe(*t, reply->add_topics());
      return grpc::Status::OK;
    });
  }

  absl::Status CheckMessage(int i, const v1::Message& m, int64_t now_ms) {
    auto bad = [i](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, ": ", why));
    };
    if (static_cast<int64_t>(m.body().size()) > options.max_body_bytes) {
      return bad(absl::StrCat("the body of ", m.body().size(), " bytes is over the limit of ",
                              options.max_body_bytes, " (limits.max_body_bytes)"));
    }
    if (m.key().size() > kMaxKeyBytes) {
      return bad(absl::StrCat("the key is over ", kMaxKeyBytes, " bytes"));
    }
    if (m.tags_size() > kMaxTags) return bad(absl::StrCat("more than ", kMaxTags, " tags"));
    for (const std::string& tag : m.tags()) {
      if (tag.empty() || tag.size() > kMaxTagBytes) {
        return bad(absl::StrCat("a tag must be 1 to ", kMaxTagBytes, " bytes"));
      }
    }
    if (m.dedup_key().size() > kMaxDedupKeyBytes) {
      return bad(absl::StrCat("the dedup key is over ", kMaxDedupKeyBytes, " bytes"));
    }
    size_t props = 0;
    for (const auto& [k, v] : m.properties()) props += k.size() + v.size();
    if (props > kMaxPropertiesBytes) {
      return bad(absl::StrCat("properties over ", kMaxPropertiesBytes, " bytes"));
    }
    if (m.delay_ms() < 0 || m.deliver_at_unix_ms() < 0) {
      return bad("delay_ms and deliver_at_unix_ms cannot be negative");
    }
    int64_t max_ms = absl::ToInt64Milliseconds(options.max_delay);
    if (m.delay_ms() > max_ms || m.deliver_at_unix_ms() > now_ms + max_ms) {
      return bad(absl::StrCat("the delay is over the limit of ",
                              absl::FormatDuration(options.max_delay), " (limits.max_delay)"));
    }
    return absl::OkStatus();
  }

  static v1::StoredMessage Stored(const v1::Message& m, const std::string& producer_group,
                                  int64_t now) {
    v1::StoredMessage s;
    s.set_key(m.key());
    *s.mutable_tags() = m.tags();
    *s.mutable_properties() = m.properties();
    s.set_body(m.body());
    s.set_born_unix_ms(now);
    int64_t at = std::max(m.deliver_at_unix_ms(), m.delay_ms() > 0 ? now + m.delay_ms() : 0);
    if (at > now) s.set_deliver_at_unix_ms(at);
    s.set_producer_group(producer_group);
    s.set_dedup_key(m.dedup_key());
    return s;
  }

  // ---- transactional messages -----------------------------------------

  // A committed half message goes into its topic once (its dedup key).
  absl::StatusOr<v1::Receipt> ProduceOne(const std::string& topic, v1::StoredMessage m) {
    TopicState* t = FindTopic(topic);
    if (t == nullptr) return absl::NotFoundError(absl::StrCat("topic '", topic, "' is gone"));
    v1::ProduceReply reply;
    reply.add_receipts();
    auto one = std::make_shared<std::vector<v1::StoredMessage>>();
    one->push_back(std::move(m));
    absl::Notification done;
    absl::Status result;
    ProduceDedup(*t, std::move(one), &reply, [&](absl::Status st) {
      result = st;
      done.Notify();
    });
    done.WaitForNotification();
    if (!result.ok()) return result;
    Kick();
    return reply.receipts(0);
  }

  grpc::Status Prepare(grpc::ServerContext* ctx, const v1::PrepareRequest* req,
                       v1::PrepareReply* reply) override {
    return rpc::Serve(ctx, [&] {
      if (FindTopic(req->topic()) == nullptr) {
        return ToGrpcStatus(absl::NotFoundError(
            absl::StrCat("topic '", req->topic(), "' does not exist; create it first")));
      }
      if (absl::Status st = ValidName("producer_group", req->producer_group()); !st.ok()) {
        return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
            "a transactional message needs its producer group (asked when it is undecided): ",
            st.message())));
      }
      int64_t now = NowMs();
      if (absl::Status st = CheckMessage(0, req->message(), now); !st.ok()) {
        return ToGrpcStatus(st);
      }
      {
        absl::MutexLock lock(&disk_mu);
        if (!disk_full.empty()) return ToGrpcStatus(absl::ResourceExhaustedError(disk_full));
      }
      absl::StatusOr<std::string> id = txns->Prepare(
          req->topic(), Stored(req->message(), req->producer_group(), now), req->activity_id());
      if (!id.ok()) return ToGrpcStatus(id.status());
      reply->set_transaction_id(*id);
      return grpc::Status::OK;
    });
  }

  grpc::Status EndTransaction(grpc::ServerContext* ctx, const v1::EndTransactionRequest* req,
                              v1::EndTransactionReply* reply) override {
    return rpc::Serve(ctx, [&] {
      absl::StatusOr<v1::Receipt> r = txns->End(req->transaction_id(), req->commit());
      if (!r.ok()) return ToGrpcStatus(r.status());
      *reply->mutable_receipt() = *r;
      return grpc::Status::OK;
    });
  }

  grpc::ServerBidiReactor<v1::CheckAnswer, v1::CheckRequest>* CheckBack(
      grpc::CallbackServerContext* ctx) override {
    return new CheckBackStream(
        ctx,
        [this](CheckBackStream& stream) {
          return rpc::Serve(stream.context(), [&] {
            grpc::Status st = txns->CheckBack(stream);
            if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
              SPDLOG_WARN("CheckBack stream from {} refused: {}", stream.context()->peer(),
                          st.error_message());
            }
            return st;
          });
        },
        &live_streams);
  }

  grpc::Status ListHalfMessages(grpc::ServerContext* ctx, const v1::ListHalfMessagesRequest* req,
                                v1::ListHalfMessagesReply* reply) override {
    return rpc::Serve(ctx, [&] {
      txns->List(req->parked_only(), req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100,
                 reply);
      return grpc::Status::OK;
    });
  }

  grpc::Status ResumeHalfMessages(grpc::ServerContext* ctx,
                                  const v1::ResumeHalfMessagesRequest* req,
                                  v1::ResumeHalfMessagesReply* reply) override {
    return rpc::Serve(ctx, [&] {
      absl::StatusOr<uint64_t> n = txns->Resume(req->transaction_id());
      if (!n.ok()) return ToGrpcStatus(n.status());
      reply->set_resumed(*n);
      return grpc::Status::OK;
    });
  }

  // Produce runs on gRPC's callback API: the call is answered from the
  // thread whose fdatasync made its messages durable, and no thread waits
  // for the disk on its behalf.
  grpc::ServerUnaryReactor* Produce(grpc::CallbackServerContext* ctx, const v1::ProduceRequest* req,
                                    v1::ProduceReply* reply) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    StartProduce(*req, reply, [this, reactor](absl::Status st) {
      if (st.ok()) Kick();
      reactor->Finish(ToGrpcStatus(st));
    });
    return reactor;
  }

  // Validates and stores; `finish` runs exactly once, when the messages are
  // durable or with the error.
  void StartProduce(const v1::ProduceRequest& req, v1::ProduceReply* reply,
                    std::function<void(absl::Status)> finish) {
    TopicState* t = nullptr;
    auto stored = std::make_shared<std::vector<v1::StoredMessage>>();
    absl::Status st = PrepareProduce(req, reply, &t, stored.get());
    if (!st.ok()) {
      finish(st);
      return;
    }
    bool any_dedup = std::any_of(stored->begin(), stored->end(),
                                 [](const v1::StoredMessage& s) { return !s.dedup_key().empty(); });
    if (any_dedup) {
      ProduceDedup(*t, std::move(stored), reply, std::move(finish));
      return;
    }
    ProducePlain(*t, std::move(stored), reply, std::move(finish));
  }

  absl::Status PrepareProduce(const v1::ProduceRequest& req, v1::ProduceReply* reply,
                              TopicState** topic, std::vector<v1::StoredMessage>* stored) {
    TopicState* t = FindTopic(req.topic());
    if (t == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("topic '", req.topic(), "' does not exist; create it first"));
    }
    if (req.messages_size() == 0) return absl::InvalidArgumentError("no messages to produce");
    if (!req.producer_group().empty()) {
      if (absl::Status st = ValidName("producer_group", req.producer_group()); !st.ok()) return st;
    }
    if (req.messages_size() > options.max_batch) {
      return absl::InvalidArgumentError(absl::StrCat(req.messages_size(),
                                                     " messages in one produce; the limit is ",
                                                     options.max_batch, " (limits.max_batch)"));
    }
    {
      absl::MutexLock lock(&disk_mu);
      if (!disk_full.empty()) return absl::ResourceExhaustedError(disk_full);
    }
    int64_t now = NowMs();
    int n = req.messages_size();
    stored->resize(n);
    for (int i = 0; i < n; ++i) {
      const v1::Message& m = req.messages(i);
      if (absl::Status st = CheckMessage(i, m, now); !st.ok()) return st;
      (*stored)[i] = Stored(m, req.producer_group(), now);
    }
    reply->mutable_receipts()->Reserve(n);
    for (int i = 0; i < n; ++i) reply->add_receipts();
    *topic = t;
    return absl::OkStatus();
  }

  // Writes each queue's messages, then finishes once every queue touched
  // has synced past them.
  void ProducePlain(TopicState& t, std::shared_ptr<std::vector<v1::StoredMessage>> stored,
                    v1::ProduceReply* reply, std::function<void(absl::Status)> finish) {
    std::vector<const v1::StoredMessage*> ptrs;
    for (const v1::StoredMessage& s : *stored) ptrs.push_back(&s);
    std::vector<Produced> placed;
    std::map<int, uint64_t> last;
    if (absl::Status st = t.topic->WriteBatch(ptrs, &placed, &last); !st.ok()) {
      finish(st);
      return;
    }
    for (size_t i = 0; i < placed.size(); ++i) {
      reply->mutable_receipts(static_cast<int>(i))->set_queue(placed[i].queue);
      reply->mutable_receipts(static_cast<int>(i))->set_offset(placed[i].offset);
    }
    struct Pending {
      absl::Mutex mu;
      size_t left ABSL_GUARDED_BY(mu) = 0;
      absl::Status error ABSL_GUARDED_BY(mu);
      std::function<void(absl::Status)> finish;
    };
    auto pending = std::make_shared<Pending>();
    pending->left = last.size();
    pending->finish = std::move(finish);
    for (const auto& [q, offset] : last) {
      t.topic->log(q).WhenDurable(offset, [pending](absl::Status st) {
        absl::Status outcome;
        {
          absl::MutexLock lock(&pending->mu);
          if (!st.ok() && pending->error.ok()) pending->error = st;
          if (--pending->left > 0) return;
          outcome = pending->error;
        }
        pending->finish(outcome);
      });
    }
  }

  // With dedup keys: a key seen within the window answers with the first
  // send's receipt; a key being stored by another call now parks this call
  // until that one ends. `finish` runs once, when the new messages are
  // durable and indexed or with the error; no thread waits for the disk.
  void ProduceDedup(TopicState& t, std::shared_ptr<const std::vector<v1::StoredMessage>> stored,
                    v1::ProduceReply* reply, std::function<void(absl::Status)> finish) {
    auto call = std::make_shared<DedupCall>();
    call->topic = &t;
    call->stored = std::move(stored);
    call->reply = reply;
    call->finish = std::move(finish);
    StartDedup(std::move(call));
  }

  void StartDedup(std::shared_ptr<DedupCall> call) {
    TopicState& t = *call->topic;
    absl::Status placed;
    {
      absl::MutexLock lock(&t.dedup_mu);
      for (const v1::StoredMessage& s : *call->stored) {
        if (!s.dedup_key().empty() && t.pending.contains(s.dedup_key())) {
          t.parked.push_back(std::move(call));
          return;
        }
      }
      placed = PlaceDedup(*call);
    }
    if (!placed.ok()) {
      RestartParked(t);
      call->finish(placed);
      return;
    }
    struct Syncs {
      absl::Mutex mu;
      size_t left ABSL_GUARDED_BY(mu) = 0;
      absl::Status error ABSL_GUARDED_BY(mu);
    };
    if (call->last.empty()) {
      EndDedup(std::move(call), absl::OkStatus());
      return;
    }
    auto syncs = std::make_shared<Syncs>();
    {
      absl::MutexLock lock(&syncs->mu);
      syncs->left = call->last.size();
    }
    std::map<int, uint64_t> last = call->last;
    for (const auto& [q, offset] : last) {
      t.topic->log(q).WhenDurable(offset, [this, call, syncs](absl::Status st) {
        absl::Status outcome;
        {
          absl::MutexLock lock(&syncs->mu);
          if (!st.ok() && syncs->error.ok()) syncs->error = st;
          if (--syncs->left > 0) return;
          outcome = syncs->error;
        }
        EndDedup(call, outcome);
      });
    }
  }

  // Whether the record a dedup key points at is the message sent with
  // that key. A key can outlive its message (a damaged tail was cut, or a
  // machine crash lost an unsynced tail, and start-up did not get to forget
  // the key) and point at a lost offset's placeholder or at another
  // message: then the send is not a duplicate. A record retention removed
  // was stored, so its key still holds.
  absl::StatusOr<bool> HoldsDedupKey(TopicState& t, int queue, uint64_t offset,
                                     const std::string& key) {
    if (queue < 0 || queue >= t.topic->queues()) return false;
    if (offset < t.topic->log(queue).first_offset()) return true;
    std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
    absl::Status st = t.topic->Read(queue, offset, 1, &got);
    if (absl::IsOutOfRange(st)) return true;  // removed by retention just now
    if (!st.ok()) return st;
    return !got.empty() && got[0].first == offset && !got[0].second.lost() &&
           got[0].second.dedup_key() == key;
  }

  // Looks the keys up and writes the new messages, registering each offset
  // before any later mark could pass it; the syncs come after.
  absl::Status PlaceDedup(DedupCall& call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(call.topic->dedup_mu) {
    TopicState& t = *call.topic;
    const std::vector<v1::StoredMessage>& stored = *call.stored;
    int n = static_cast<int>(stored.size());
    int64_t oldest = NowMs() - absl::ToInt64Milliseconds(options.dedup_window);
    absl::flat_hash_map<std::string, int> first;
    auto release = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t.dedup_mu) {
      for (const std::string& k : call.claimed) t.pending.erase(k);
      call.claimed.clear();
    };
    for (int i = 0; i < n; ++i) {
      const std::string& key = stored[i].dedup_key();
      if (!key.empty()) {
        if (auto it = first.find(key); it != first.end()) {
          call.same.emplace_back(i, it->second);
          continue;
        }
        std::string value;
        rocksdb::Status s = meta->Get(rocksdb::ReadOptions(), DedupKey(t.name, key), &value);
        if (!s.ok() && !s.IsNotFound()) {
          release();
          return FromRocks(s, "dedup lookup");
        }
        int queue = 0;
        uint64_t offset = 0;
        int64_t born = 0;
        std::vector<std::string> parts = absl::StrSplit(value, ' ');
        bool seen = s.ok() && parts.size() == 3 && absl::SimpleAtoi(parts[0], &queue) &&
                    absl::SimpleAtoi(parts[1], &offset) && absl::SimpleAtoi(parts[2], &born) &&
                    born >= oldest;
        if (seen) {
          absl::StatusOr<bool> holds = HoldsDedupKey(t, queue, offset, key);
          if (!holds.ok()) {
            release();
            return holds.status();
          }
          seen = *holds;
        }
        if (seen) {
          v1::Receipt* r = call.reply->mutable_receipts(i);
          r->set_queue(queue);
          r->set_offset(offset);
          r->set_duplicate(true);
          continue;
        }
        first[key] = i;
        t.pending.insert(key);
        call.claimed.push_back(key);
      }
      call.to_store.push_back(i);
    }
    std::string bytes;
    for (int i : call.to_store) {
      Produced p;
      p.queue = t.topic->QueueFor(stored[i].key());
      bytes.clear();
      stored[i].SerializeToString(&bytes);
      absl::StatusOr<uint64_t> offset = t.topic->log(p.queue).Write(bytes);
      if (!offset.ok()) {
        // Records written before stay unindexed, pinning their queues'
        // marks: a restart indexes them from the log.
        release();
        return offset.status();
      }
      p.offset = *offset;
      t.unindexed[p.queue].insert(p.offset);
      call.placed.push_back(p);
      call.last[p.queue] = std::max(call.last[p.queue], p.offset);
    }
    return absl::OkStatus();
  }

  // The writes of `call` are durable (or `synced` says why not): index
  // them, free their keys for parked calls, and answer.
  void EndDedup(std::shared_ptr<DedupCall> call, absl::Status synced) {
    TopicState& t = *call->topic;
    const std::vector<v1::StoredMessage>& stored = *call->stored;
    absl::Status indexed;
    {
      absl::MutexLock lock(&t.dedup_mu);
      if (synced.ok()) {
        rocksdb::WriteBatch batch;
        for (size_t j = 0; j < call->placed.size(); ++j) {
          const Produced& p = call->placed[j];
          const v1::StoredMessage& s = stored[call->to_store[j]];
          if (!s.dedup_key().empty()) {
            batch.Put(DedupKey(t.name, s.dedup_key()),
                      absl::StrCat(p.queue, " ", p.offset, " ", s.born_unix_ms()));
          }
        }
        // The marks as they are once these are indexed.
        std::map<int, uint64_t> marks;
        for (const Produced& p : call->placed) {
          t.unindexed[p.queue].erase(t.unindexed[p.queue].find(p.offset));
        }
        for (const auto& [q, offset] : call->last) {
          uint64_t mark = t.unindexed[q].empty() ? offset + 1 : *t.unindexed[q].begin();
          if (mark > t.marks[q]) {
            marks[q] = mark;
            batch.Put(MarkKey(t.name, q), absl::StrCat(mark));
          }
        }
        indexed = FromRocks(meta->Write(rocksdb::WriteOptions(), &batch), "dedup");
        if (indexed.ok()) {
          for (const auto& [q, mark] : marks) t.marks[q] = mark;
        } else {
          // Not indexed: their offsets pin the marks until a restart
          // indexes them from the log.
          for (const Produced& p : call->placed) t.unindexed[p.queue].insert(p.offset);
        }
      }
      // After a failed sync the offsets stay unindexed as well.
      for (const std::string& k : call->claimed) t.pending.erase(k);
    }
    RestartParked(t);
    if (!synced.ok()) {
      call->finish(synced);
      return;
    }
    if (!indexed.ok()) {
      call->finish(indexed);
      return;
    }
    v1::ProduceReply* reply = call->reply;
    for (size_t j = 0; j < call->placed.size(); ++j) {
      v1::Receipt* r = reply->mutable_receipts(call->to_store[j]);
      r->set_queue(call->placed[j].queue);
      r->set_offset(call->placed[j].offset);
    }
    for (const auto& [i, earlier] : call->same) {
      *reply->mutable_receipts(i) = reply->receipts(earlier);
      reply->mutable_receipts(i)->set_duplicate(true);
    }
    call->finish(absl::OkStatus());
  }

  // Calls parked on keys that may be free now try again.
  void RestartParked(TopicState& t) {
    std::vector<std::shared_ptr<DedupCall>> parked;
    {
      absl::MutexLock lock(&t.dedup_mu);
      parked.swap(t.parked);
    }
    for (std::shared_ptr<DedupCall>& call : parked) StartDedup(std::move(call));
  }

  // ---- consume --------------------------------------------------------

  absl::StatusOr<std::shared_ptr<GroupState>> Join(const v1::Subscribe& sub,
                                                   const std::shared_ptr<Member>& member) {
    if (sub.group().empty()) return absl::InvalidArgumentError("subscribe: group is required");
    if (absl::Status st = ValidName("group", sub.group()); !st.ok()) return st;
    if (sub.broadcast()) {
      if (sub.consumer_id().empty()) {
        return absl::InvalidArgumentError(
            "subscribe: a broadcast consumer needs a consumer_id (its stable name)");
      }
      if (absl::Status st = ValidName("consumer_id", sub.consumer_id()); !st.ok()) return st;
    }
    if (sub.max_in_flight() < 0 || sub.max_in_flight() > kMaxInFlightPerConsumer) {
      return absl::InvalidArgumentError(
          absl::StrCat("subscribe: max_in_flight must be 0 to ", kMaxInFlightPerConsumer));
    }
    if (sub.max_attempts() < 0 || sub.ack_timeout_ms() < 0) {
      return absl::InvalidArgumentError("subscribe: max_attempts and ack_timeout_ms must be >= 0");
    }
    TopicState* t = FindTopic(sub.topic());
    if (t == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("subscribe: topic '", sub.topic(), "' does not exist"));
    }
    {
      absl::MutexLock lock(&kick_mu);
      if (stopping) return absl::UnavailableError("dmsd is stopping");
    }
    Spec spec;
    for (const std::string& tag : sub.tags()) spec.tags.insert(tag);
    spec.ordered = !sub.concurrent();
    spec.max_attempts = sub.max_attempts() > 0 ? sub.max_attempts() : options.max_attempts;
    spec.ack_timeout =
        sub.ack_timeout_ms() > 0 ? absl::Milliseconds(sub.ack_timeout_ms()) : options.ack_timeout;
    member->consumer_id = sub.consumer_id();
    member->max_in_flight = sub.max_in_flight() > 0 ? sub.max_in_flight() : 64;
    std::string name =
        sub.broadcast() ? absl::StrCat(sub.group(), "@", sub.consumer_id()) : sub.group();
    std::shared_ptr<GroupState> g;
    {
      absl::MutexLock lock(&groups_mu);
      std::shared_ptr<GroupState>& slot = groups[{name, t->name}];
      if (slot == nullptr) {
        slot = std::make_shared<GroupState>();
        slot->name = name;
        slot->base = sub.group();
        slot->member_name = sub.broadcast() ? sub.consumer_id() : "";
        slot->topic = t;
      }
      g = slot;
    }
    absl::MutexLock lock(&g->mu);
    if (!g->members.empty() && !(g->spec == spec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("subscribe: group '", sub.group(), "' already consumes topic '", t->name,
                       "' with another subscription (tags [", absl::StrJoin(g->spec.tags, ","),
                       "], ordered=", g->spec.ordered, ", max_attempts=", g->spec.max_attempts,
                       ", ack_timeout=", absl::FormatDuration(g->spec.ack_timeout),
                       "); every member of a group must subscribe alike"));
    }
    if (g->cursors.empty() || !(g->spec == spec)) {
      // First member (or a new subscription once all left): the cursors
      // start from what is durable.
      // Built aside and swapped in whole, so a failure leaves the group as it was.
      CursorOptions co;
      co.ack_timeout = spec.ack_timeout;
      co.max_attempts = spec.max_attempts;
      co.ordered = spec.ordered;
      co.max_in_flight = spec.ordered ? 1 : 1 << 20;
      co.retry_initial = options.retry_initial;
      co.retry_max = options.retry_max;
      std::vector<std::unique_ptr<GroupCursor>> cursors;
      std::vector<uint64_t> persisted;
      for (int q = 0; q < t->topic->queues(); ++q) {
        absl::StatusOr<QueueProgress> p = progress->Load(name, t->name, q);
        if (!p.ok()) return p.status();
        uint64_t committed = p->known ? p->committed : t->topic->log(q).first_offset();
        cursors.push_back(std::make_unique<GroupCursor>(co, committed, p->acked));
        persisted.push_back(committed);
      }
      std::map<std::pair<int, uint64_t>, Replay> replays;
      if (absl::Status st = LoadReplays(*g, &replays); !st.ok()) return st;
      g->spec = spec;
      g->cursors = std::move(cursors);
      g->persisted = std::move(persisted);
      g->replays = std::move(replays);
      g->owners.clear();
    }
    g->members[member->id] = member;
    SPDLOG_INFO("group {} topic {}: member {} joined ({} members)", name, t->name,
                member->consumer_id.empty() ? absl::StrCat("#", member->id) : member->consumer_id,
                g->members.size());
    return g;
  }

  // The group's dead letters marked for replay.
  absl::Status LoadReplays(GroupState& g, std::map<std::pair<int, uint64_t>, Replay>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    out->clear();
    std::string prefix = absl::StrCat(LetterPrefix(g.name), g.topic->name, Sep());
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      v1::DeadLetter letter;
      if (!letter.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError("a dead letter record is corrupt");
      }
      if (!letter.replaying()) continue;
      Replay& r = (*out)[{letter.ref().queue(), letter.ref().offset()}];
      r.letter = std::move(letter);
      r.due = absl::InfinitePast();
    }
    return FromRocks(it->status(), "reading dead letters");
  }

  // What a member held goes out again. Each message it was sent counts as
  // an attempt, so a message that kills its consumers reaches the
  // dead-letter queue after its attempts like any other; not so what never
  // left its outbox, nor anything when dmsd itself is stopping (the
  // consumer could not have acked it).
  void Leave(GroupState& g, const std::shared_ptr<Member>& member) {
    absl::MutexLock lock(&g.mu);
    absl::Time now = absl::Now();
    bool broker_stopping = streams_stop.load();
    std::set<std::pair<int, uint64_t>> unsent, unsent_replays;
    for (const v1::Delivered& d : member->outbox) {
      (d.ref().replay() ? unsent_replays : unsent).insert({d.ref().queue(), d.ref().offset()});
    }
    std::vector<std::pair<int, uint64_t>> held;
    for (const auto& [ref, owner] : g.owners) {
      if (owner == member->id) held.push_back(ref);
    }
    for (const auto& ref : held) {
      const auto& [q, offset] = ref;
      g.owners.erase(ref);
      GroupCursor& cursor = *g.cursors[q];
      if (broker_stopping || unsent.count(ref) > 0) {
        cursor.Release(offset, now);
        continue;
      }
      absl::StatusOr<bool> again = cursor.Abandon(offset, now);
      if (again.ok() && !*again) {
        DeadLetter(g, q, offset, cursor,
                   absl::StrCat("delivered ", g.spec.max_attempts,
                                " times, the last to a consumer that went away without an ack"));
      }
    }
    std::vector<std::pair<int, uint64_t>> replays_held;
    for (auto& [ref, r] : g.replays) {
      if (r.out && r.owner == member->id) replays_held.push_back(ref);
    }
    for (const auto& ref : replays_held) {
      Replay& r = g.replays[ref];
      r.out = false;
      r.due = now;
      if (broker_stopping || unsent_replays.count(ref) > 0) {
        r.attempts = std::max(0, r.attempts - 1);
      } else if (r.attempts >= g.spec.max_attempts) {
        DeadAgain(g, ref, "its consumer went away without an ack in a replay, attempts used up");
      }
    }
    g.members.erase(member->id);
    SPDLOG_INFO("group {} topic {}: a member left ({} members)", g.name, g.topic->name,
                g.members.size());
  }

  std::shared_ptr<Member> PickMember(GroupState& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    if (g.members.empty()) return nullptr;
    auto it = g.members.begin();
    std::advance(it, g.next_member % g.members.size());
    for (size_t i = 0; i < g.members.size(); ++i) {
      if (it == g.members.end()) it = g.members.begin();
      const std::shared_ptr<Member>& m = it->second;
      ++it;
      if (!m->closed && m->out < m->max_in_flight) {
        g.next_member = (g.next_member + 1 + i) % g.members.size();
        return m;
      }
    }
    return nullptr;
  }

  int Credit(GroupState& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    int credit = 0;
    for (auto& [id, m] : g.members) {
      if (!m->closed) credit += std::max(0, m->max_in_flight - m->out);
    }
    return credit;
  }

  void Hand(GroupState& g, const std::shared_ptr<Member>& m, int queue, uint64_t offset,
            int attempt, v1::StoredMessage message, bool replay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    if (!replay) {
      auto [it, fresh] = g.owners.try_emplace({queue, offset}, m->id);
      if (!fresh) {
        // Out again after an ack timeout: the old holder's slot is free.
        if (auto old = g.members.find(it->second); old != g.members.end()) --old->second->out;
        it->second = m->id;
      }
    }
    ++m->out;
    v1::Delivered& d = m->outbox.emplace_back();
    d.mutable_ref()->set_queue(queue);
    d.mutable_ref()->set_offset(offset);
    d.mutable_ref()->set_replay(replay);
    d.set_attempt(attempt);
    *d.mutable_message() = std::move(message);
  }

  // Hands out what is due to members with room.
  void Pump(GroupState& g) {
    absl::MutexLock lock(&g.mu);
    if (g.members.empty() || g.cursors.empty()) return;
    absl::Time now = absl::Now();
    int64_t now_ms = absl::ToUnixMillis(now);
    // Replays first.
    for (auto it = g.replays.begin(); it != g.replays.end();) {
      Replay& r = it->second;
      auto ref = it->first;
      ++it;
      if (r.out && r.due <= now) {  // ack timeout
        r.out = false;
        if (auto m = g.members.find(r.owner); m != g.members.end()) --m->second->out;
        if (r.attempts >= g.spec.max_attempts) {
          DeadAgain(g, ref, "no ack within the ack timeout in a replay");
          continue;
        }
      }
      if (r.out || r.due > now) continue;
      std::shared_ptr<Member> m = PickMember(g);
      if (m == nullptr) break;
      r.out = true;
      ++r.attempts;
      r.due = now + g.spec.ack_timeout;
      r.owner = m->id;
      Hand(g, m, ref.first, ref.second, r.attempts, r.letter.message(), /*replay=*/true);
    }
    int queues = static_cast<int>(g.cursors.size());
    for (int i = 0; i < queues; ++i) {
      int credit = Credit(g);
      if (credit == 0) break;
      int q = static_cast<int>((g.next_queue + i) % queues);
      GroupCursor& cursor = *g.cursors[q];
      MessageLog& log = g.topic->topic->log(q);
      // Take a fair share per queue so one busy queue cannot starve others.
      size_t share = std::max<size_t>(1, static_cast<size_t>(credit));
      NextBatch batch = cursor.Next(log.synced_end(), now, share);
      for (uint64_t offset : batch.dead_letters) {
        DeadLetter(g, q, offset, cursor, "no ack within the ack timeout, attempts used up");
      }
      if (batch.deliveries.empty()) continue;
      std::vector<Delivery> ds = batch.deliveries;
      std::sort(ds.begin(), ds.end(),
                [](const Delivery& a, const Delivery& b) { return a.offset < b.offset; });
      size_t k = 0;
      while (k < ds.size()) {
        size_t run = 1;
        while (k + run < ds.size() && ds[k + run].offset == ds[k].offset + run) ++run;
        std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
        absl::Status st = g.topic->topic->Read(q, ds[k].offset, run, &got);
        if (absl::IsOutOfRange(st)) {
          // Removed by retention before this group took them; the rest of
          // the run is still kept and goes out on the next pump.
          uint64_t first = log.first_offset();
          size_t lost = 0;
          for (size_t j = 0; j < run; ++j) {
            if (ds[k + j].offset < first) {
              cursor.Ack(ds[k + j].offset).IgnoreError();
              ++lost;
            } else {
              cursor.Release(ds[k + j].offset, now);
            }
          }
          g.lost_to_retention += lost;
          SPDLOG_WARN(
              "group {} topic {} queue {}: {} messages were removed by retention before "
              "they were consumed",
              g.name, g.topic->name, q, lost);
          k += run;
          continue;
        }
        if (!st.ok()) {
          // Tried again in a second (the queue waits for it in order), and
          // said at most every ten seconds: an operator must look.
          if (now - g.last_read_error >= absl::Seconds(10)) {
            g.last_read_error = now;
            SPDLOG_ERROR("group {} topic {} queue {}: cannot read offset {}: {}; retrying", g.name,
                         g.topic->name, q, ds[k].offset, std::string(st.message()));
          }
          for (size_t j = 0; j < run; ++j) cursor.Release(ds[k + j].offset, now + absl::Seconds(1));
          k += run;
          continue;
        }
        for (size_t j = 0; j < run; ++j) {
          const Delivery& d = ds[k + j];
          if (j >= got.size()) {
            cursor.Release(d.offset, now);
            continue;
          }
          v1::StoredMessage& m = got[j].second;
          if (m.lost()) {
            cursor.Ack(d.offset).IgnoreError();  // a lost offset's placeholder: never delivered
            continue;
          }
          if (!TagsMatch(g.spec.tags, m)) {
            cursor.Ack(d.offset).IgnoreError();  // not for this group; made durable lazily
            continue;
          }
          if (m.deliver_at_unix_ms() > now_ms) {
            cursor.Defer(d.offset, absl::FromUnixMillis(m.deliver_at_unix_ms())).IgnoreError();
            continue;
          }
          std::shared_ptr<Member> member = PickMember(g);
          if (member == nullptr) {  // cannot happen: deliveries stay within the credit
            cursor.Release(d.offset, now);
            continue;
          }
          Hand(g, member, q, d.offset, d.attempt, std::move(m), /*replay=*/false);
        }
        k += run;
      }
    }
    g.next_queue = (g.next_queue + 1) % static_cast<size_t>(queues);
  }

  // Parks `offset` in the group's dead-letter queue (durably) and counts it
  // as acked. The cursor has already forgotten it.
  void DeadLetter(GroupState& g, int queue, uint64_t offset, GroupCursor& cursor,
                  absl::string_view reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    v1::DeadLetter letter;
    letter.set_topic(g.topic->name);
    letter.mutable_ref()->set_queue(queue);
    letter.mutable_ref()->set_offset(offset);
    letter.set_attempts(g.spec.max_attempts);
    letter.set_reason(std::string(reason));
    letter.set_dead_unix_ms(NowMs());
    std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
    if (g.topic->topic->Read(queue, offset, 1, &got).ok() && !got.empty()) {
      *letter.mutable_message() = std::move(got[0].second);
    }
    rocksdb::WriteOptions sync;
    sync.sync = true;
    std::string bytes;
    letter.SerializeToString(&bytes);
    absl::Status st = FromRocks(
        meta->Put(sync, LetterKey(g.name, g.topic->name, queue, offset), bytes), "dead letter");
    if (st.ok()) st = progress->Ack(g.name, g.topic->name, queue, offset, cursor.committed());
    if (!st.ok()) {
      // The cursor has let it go; stopping now (before any checkpoint) is
      // what gets it delivered again: a restart rebuilds from the acks on
      // disk, where it is not acked.
      SPDLOG_CRITICAL(
          "group {} topic {} queue {} offset {}: cannot park the dead letter: {}; dmsd stops so "
          "that the message is not lost (it is delivered again after the restart)",
          g.name, g.topic->name, queue, offset, std::string(st.message()));
      spdlog::shutdown();
      std::abort();
    }
    if (auto it = g.owners.find({queue, offset}); it != g.owners.end()) {
      if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
      g.owners.erase(it);
    }
    SPDLOG_WARN("group {} topic {} queue {} offset {}: dead-lettered ({})", g.name, g.topic->name,
                queue, offset, std::string(reason));
  }

  // A replayed dead letter failed its attempts again: back in the
  // dead-letter queue, not replaying.
  void DeadAgain(GroupState& g, std::pair<int, uint64_t> key, absl::string_view reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    auto it = g.replays.find(key);
    if (it == g.replays.end()) return;
    Replay& r = it->second;
    r.letter.set_replaying(false);
    r.letter.set_attempts(r.letter.attempts() + r.attempts);
    r.letter.set_reason(std::string(reason));
    r.letter.set_dead_unix_ms(NowMs());
    std::string bytes;
    r.letter.SerializeToString(&bytes);
    rocksdb::WriteOptions sync;
    sync.sync = true;
    rocksdb::Status s =
        meta->Put(sync, LetterKey(g.name, g.topic->name, key.first, key.second), bytes);
    if (!s.ok()) SPDLOG_ERROR("cannot update a dead letter: {}", s.ToString());
    g.replays.erase(it);
  }

  // Settles a member's acks and retries: acks are made durable before the
  // cursor forgets them, and confirmed to the member.
  absl::Status Settle(GroupState& g, Member& member, const v1::ConsumeRequest& req) {
    int queues = g.topic->topic->queues();
    std::map<int, std::vector<uint64_t>> acks;
    std::vector<std::pair<int, uint64_t>> replay_acks;
    for (const v1::MessageRef& ref : req.acks()) {
      if (ref.queue() < 0 || ref.queue() >= queues) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ack: queue ", ref.queue(), " does not exist in topic '", g.topic->name, "'"));
      }
      if (ref.replay()) {
        replay_acks.emplace_back(ref.queue(), ref.offset());
      } else {
        acks[ref.queue()].push_back(ref.offset());
      }
    }
    std::map<int, uint64_t> committed;
    {
      // Only messages handed out are acked (a stray ack must not skip one).
      absl::MutexLock lock(&g.mu);
      for (auto& [q, offsets] : acks) {
        committed[q] = g.cursors[q]->committed();
        offsets.erase(std::remove_if(offsets.begin(), offsets.end(),
                                     [&](uint64_t o) {
                                       return g.owners.count({q, o}) == 0;
                                     }),
                      offsets.end());
      }
      replay_acks.erase(std::remove_if(replay_acks.begin(), replay_acks.end(),
                                       [&](const std::pair<int, uint64_t>& r) {
                                         auto it = g.replays.find(r);
                                         return it == g.replays.end() || !it->second.out;
                                       }),
                        replay_acks.end());
    }
    std::map<int, GroupProgress::QueueAcks> durable;
    for (const auto& [q, offsets] : acks) {
      if (offsets.empty()) continue;
      durable[q] = GroupProgress::QueueAcks{offsets, committed[q]};
    }
    if (absl::Status st = progress->AckQueues(g.name, g.topic->name, durable); !st.ok()) {
      return st;
    }
    if (!replay_acks.empty()) {
      rocksdb::WriteBatch batch;
      for (const auto& [q, offset] : replay_acks) {
        batch.Delete(LetterKey(g.name, g.topic->name, q, offset));
      }
      rocksdb::WriteOptions sync;
      sync.sync = true;
      if (absl::Status st = FromRocks(meta->Write(sync, &batch), "removing replayed letters");
          !st.ok()) {
        return st;
      }
    }
    absl::Time now = absl::Now();
    absl::MutexLock lock(&g.mu);
    for (const auto& [q, offsets] : acks) {
      for (uint64_t offset : offsets) {
        if (!g.cursors[q]->Ack(offset).ok()) continue;
        if (auto it = g.owners.find({q, offset}); it != g.owners.end()) {
          if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
          g.owners.erase(it);
        }
        v1::MessageRef& r = member.acked.emplace_back();
        r.set_queue(q);
        r.set_offset(offset);
      }
    }
    for (const auto& [q, offset] : replay_acks) {
      auto it = g.replays.find({q, offset});
      if (it == g.replays.end()) continue;
      if (it->second.out) {
        if (auto m = g.members.find(it->second.owner); m != g.members.end()) --m->second->out;
      }
      g.replays.erase(it);
      v1::MessageRef& r = member.acked.emplace_back();
      r.set_queue(q);
      r.set_offset(offset);
      r.set_replay(true);
    }
    for (const v1::MessageRef& ref : req.retries()) {
      if (ref.queue() < 0 || ref.queue() >= queues) continue;
      std::pair<int, uint64_t> key{ref.queue(), ref.offset()};
      if (ref.replay()) {
        auto it = g.replays.find(key);
        if (it == g.replays.end() || !it->second.out) continue;
        Replay& r = it->second;
        r.out = false;
        if (auto m = g.members.find(r.owner); m != g.members.end()) --m->second->out;
        if (r.attempts >= g.spec.max_attempts) {
          DeadAgain(g, key, absl::StrCat("retried ", r.attempts, " times in a replay"));
        } else {
          absl::Duration d = options.retry_initial;
          for (int i = 1; i < r.attempts && d < options.retry_max; ++i) d *= 2;
          r.due = now + std::min(d, options.retry_max);
        }
        continue;
      }
      GroupCursor& cursor = *g.cursors[ref.queue()];
      absl::StatusOr<bool> again = cursor.RetryLater(ref.offset(), now);
      if (!again.ok()) continue;  // not out (acked, or timed out and out again)
      if (auto it = g.owners.find(key); it != g.owners.end()) {
        if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
        g.owners.erase(it);
      }
      if (!*again) {
        DeadLetter(g, ref.queue(), ref.offset(), cursor,
                   absl::StrCat("retried ", g.spec.max_attempts, " times"));
      }
    }
    return absl::OkStatus();
  }

  using ConsumeStream = ThreadedStream<v1::ConsumeRequest, v1::ConsumeReply>;

  // Consume serves each stream on a thread of its own; whatever ends the
  // stream, its status reaches the consumer and non-routine ends are logged.
  grpc::ServerBidiReactor<v1::ConsumeRequest, v1::ConsumeReply>* Consume(
      grpc::CallbackServerContext* ctx) override {
    return new ConsumeStream(
        ctx,
        [this](ConsumeStream& stream) {
          return rpc::Serve(stream.context(), [&] {
            std::string subscription;
            absl::Status st = DoConsume(stream, &subscription);
            if (absl::IsInvalidArgument(st)) {
              SPDLOG_WARN("Consume stream from {}{} refused: {}", stream.context()->peer(),
                          subscription, st.ToString());
            } else if (!st.ok() && !streams_stop.load()) {
              SPDLOG_INFO("Consume stream from {}{} ended: {}", stream.context()->peer(),
                          subscription, st.ToString());
            }
            return ToGrpcStatus(st);
          });
        },
        &live_streams);
  }

  // `subscription` gets " (group ..., topic ...)" once the stream subscribed.
  absl::Status DoConsume(ConsumeStream& stream, std::string* subscription) {
    v1::ConsumeRequest first;
    if (!stream.Read(&first)) {
      return streams_stop.load() ? StoppingError() : absl::OkStatus();
    }
    if (!first.has_subscribe()) {
      return absl::InvalidArgumentError("the first request on a Consume stream must subscribe");
    }
    auto member = std::make_shared<Member>();
    member->id = next_member_id.fetch_add(1);
    absl::StatusOr<std::shared_ptr<GroupState>> joined = Join(first.subscribe(), member);
    if (!joined.ok()) return joined.status();
    std::shared_ptr<GroupState> g = *joined;
    *subscription = absl::StrCat(" (group '", first.subscribe().group(), "', topic '",
                                 first.subscribe().topic(), "')");
    Kick();
    // An empty reply says the subscription is in place.
    if (!stream.Write(v1::ConsumeReply())) {
      Leave(*g, member);
      return absl::OkStatus();
    }

    absl::Status reader_status;
    std::thread reader([&] {
      v1::ConsumeRequest req;
      while (stream.Read(&req)) {
        if (req.has_subscribe()) {
          reader_status = absl::InvalidArgumentError("a Consume stream subscribes only once");
          break;
        }
        if (absl::Status st = Settle(*g, *member, req); !st.ok()) {
          reader_status = st;
          break;
        }
        Kick();
      }
      absl::MutexLock lock(&g->mu);
      member->closed = true;
    });

    absl::Status result;
    while (true) {
      v1::ConsumeReply reply;
      {
        absl::MutexLock lock(&g->mu);
        auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g->mu) {
          return member->closed || !member->outbox.empty() || !member->acked.empty();
        };
        g->mu.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
        if (streams_stop.load()) {
          result = StoppingError();
          break;
        }
        if (member->closed || stream.IsCancelled()) break;
        for (v1::MessageRef& r : member->acked) *reply.add_acked() = std::move(r);
        member->acked.clear();
        size_t n = 0, bytes = reply.ByteSizeLong();
        while (n < member->outbox.size() && n < kMaxMessagesPerReply) {
          // The field's tag and length take at most 6 bytes.
          size_t more = member->outbox[n].ByteSizeLong() + 6;
          if (n > 0 && bytes + more > kMaxReplyBytes) break;
          bytes += more;
          *reply.add_messages() = std::move(member->outbox[n++]);
        }
        member->outbox.erase(member->outbox.begin(), member->outbox.begin() + n);
      }
      if (reply.messages_size() == 0 && reply.acked_size() == 0) continue;
      if (!stream.Write(reply)) {
        // The consumer cannot ack what a failed write carried (its acks
        // come over this stream): not a delivery, no attempt used.
        Unsend(*g, *member, &reply);
        break;
      }
    }
    // Frees the reader without cancelling the call, so `result` (or the
    // reader's error) is what the consumer receives.
    stream.StopReading();
    reader.join();
    Leave(*g, member);
    Kick();
    if (!reader_status.ok()) return reader_status;
    return result;
  }

  static absl::Status StoppingError() {
    return absl::UnavailableError("dmsd is stopping; consume from another broker or later");
  }

  // Puts the messages of a reply that was never written back at the front
  // of the member's outbox, so Leave counts them as unsent.
  void Unsend(GroupState& g, Member& member, v1::ConsumeReply* reply) {
    absl::MutexLock lock(&g.mu);
    member.outbox.insert(member.outbox.begin(),
                         std::make_move_iterator(reply->mutable_messages()->begin()),
                         std::make_move_iterator(reply->mutable_messages()->end()));
  }

  void DispatchLoop() {
    while (true) {
      {
        absl::MutexLock lock(&kick_mu);
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(kick_mu) { return kicked || stopping; };
        kick_mu.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(10));
        if (stopping) return;
        kicked = false;
      }
      std::vector<std::shared_ptr<GroupState>> all;
      {
        absl::MutexLock lock(&groups_mu);
        for (auto& [key, g] : groups) all.push_back(g);
      }
      for (const std::shared_ptr<GroupState>& g : all) Pump(*g);
    }
  }

  // ---- lag and dead letters ------------------------------------------

  grpc::Status GetLag(grpc::ServerContext* ctx, const v1::GetLagRequest* req,
                      v1::GetLagReply* reply) override {
    return rpc::Serve(ctx, [&] { return ToGrpcStatus(DoGetLag(*req, reply)); });
  }

  absl::Status DoGetLag(const v1::GetLagRequest& req, v1::GetLagReply* reply) {
    if (req.group().empty()) return absl::InvalidArgumentError("lag: group is required");
    std::vector<TopicState*> ts;
    if (!req.topic().empty()) {
      TopicState* t = FindTopic(req.topic());
      if (t == nullptr) {
        return absl::NotFoundError(absl::StrCat("topic '", req.topic(), "' does not exist"));
      }
      ts.push_back(t);
    } else {
      ts = AllTopics();
    }
    bool found = false;
    for (TopicState* t : ts) {
      std::vector<std::shared_ptr<GroupState>> states;
      {
        absl::MutexLock lock(&groups_mu);
        for (auto& [key, g] : groups) {
          if (g->topic == t && g->base == req.group()) states.push_back(g);
        }
      }
      if (!states.empty()) {
        for (const std::shared_ptr<GroupState>& g : states) {
          absl::MutexLock lock(&g->mu);
          for (size_t q = 0; q < g->cursors.size(); ++q) {
            uint64_t end = t->topic->log(static_cast<int>(q)).synced_end();
            v1::QueueLag* l = reply->add_queues();
            l->set_topic(t->name);
            l->set_queue(static_cast<int>(q));
            l->set_member(g->member_name);
            l->set_committed(g->cursors[q]->committed());
            l->set_end_offset(end);
            l->set_lag(g->cursors[q]->Lag(end));
            found = true;
          }
        }
        continue;
      }
      for (int q = 0; q < t->topic->queues(); ++q) {
        absl::StatusOr<QueueProgress> p = progress->Load(req.group(), t->name, q);
        if (!p.ok()) return p.status();
        if (!p->known) continue;
        uint64_t end = t->topic->log(q).synced_end();
        v1::QueueLag* l = reply->add_queues();
        l->set_topic(t->name);
        l->set_queue(q);
        l->set_committed(p->committed);
        l->set_end_offset(end);
        l->set_lag(end > p->committed ? end - p->committed -
                                            std::min<uint64_t>(end - p->committed, p->acked.size())
                                      : 0);
        found = true;
      }
    }
    if (!found) {
      return absl::NotFoundError(absl::StrCat(
          "group '", req.group(), "' has not consumed ",
          req.topic().empty() ? "any topic" : "topic '" + req.topic() + "'", " on this broker"));
    }
    uint64_t total = 0;
    for (const v1::QueueLag& l : reply->queues()) total += l.lag();
    reply->set_total(total);
    std::vector<v1::DeadLetter> letters;
    if (absl::Status st = Letters(req.group(), req.topic(), 1 << 30, &letters, nullptr); !st.ok()) {
      return st;
    }
    reply->set_dead_letters(letters.size());
    return absl::OkStatus();
  }

  // The dead letters of `group` (and its broadcast members), optionally of
  // one topic; `keys` gets their store keys.
  absl::Status Letters(const std::string& group, const std::string& topic, size_t limit,
                       std::vector<v1::DeadLetter>* out, std::vector<std::string>* keys) {
    std::string prefix = absl::StrCat("l/", group);
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix) && out->size() < limit;
         it->Next()) {
      absl::string_view rest(it->key().data() + prefix.size(), it->key().size() - prefix.size());
      // Exactly the group, or "<group>@<member>".
      if (!(absl::StartsWith(rest, Sep()) || absl::StartsWith(rest, "@"))) continue;
      v1::DeadLetter letter;
      if (!letter.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError("a dead letter record is corrupt");
      }
      if (!topic.empty() && letter.topic() != topic) continue;
      out->push_back(std::move(letter));
      if (keys != nullptr) keys->push_back(it->key().ToString());
    }
    return FromRocks(it->status(), "reading dead letters");
  }

  grpc::Status ListDeadLetters(grpc::ServerContext* ctx, const v1::ListDeadLettersRequest* req,
                               v1::ListDeadLettersReply* reply) override {
    return rpc::Serve(ctx, [&] {
      if (req->group().empty()) {
        return ToGrpcStatus(absl::InvalidArgumentError("dead letters: group is required"));
      }
      std::vector<v1::DeadLetter> letters;
      size_t limit = req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100;
      if (absl::Status st = Letters(req->group(), req->topic(), limit, &letters, nullptr);
          !st.ok()) {
        return ToGrpcStatus(st);
      }
      for (v1::DeadLetter& l : letters) *reply->add_letters() = std::move(l);
      return grpc::Status::OK;
    });
  }

  grpc::Status ReplayDeadLetters(grpc::ServerContext* ctx, const v1::ReplayDeadLettersRequest* req,
                                 v1::ReplayDeadLettersReply* reply) override {
    return rpc::Serve(ctx, [&] {
      if (req->group().empty()) {
        return ToGrpcStatus(absl::InvalidArgumentError("replay: group is required"));
      }
      std::vector<v1::DeadLetter> letters;
      std::vector<std::string> keys;
      if (absl::Status st = Letters(req->group(), req->topic(), 1 << 30, &letters, &keys);
          !st.ok()) {
        return ToGrpcStatus(st);
      }
      rocksdb::WriteBatch batch;
      uint64_t n = 0;
      for (size_t i = 0; i < letters.size(); ++i) {
        if (letters[i].replaying()) continue;
        letters[i].set_replaying(true);
        std::string bytes;
        letters[i].SerializeToString(&bytes);
        batch.Put(keys[i], bytes);
        ++n;
      }
      rocksdb::WriteOptions sync;
      sync.sync = true;
      if (absl::Status st = FromRocks(meta->Write(sync, &batch), "marking replays"); !st.ok()) {
        return ToGrpcStatus(st);
      }
      // Groups consuming now take them at once; others on their next join.
      std::vector<std::shared_ptr<GroupState>> states;
      {
        absl::MutexLock lock(&groups_mu);
        for (auto& [key, g] : groups) {
          if (g->base == req->group()) states.push_back(g);
        }
      }
      for (const std::shared_ptr<GroupState>& g : states) {
        absl::MutexLock lock(&g->mu);
        if (g->cursors.empty()) continue;
        std::map<std::pair<int, uint64_t>, Replay> keep;
        for (auto& [ref, r] : g->replays) {
          if (r.out) keep[ref] = r;  // already out: keep its attempt
        }
        std::map<std::pair<int, uint64_t>, Replay> loaded;
        if (absl::Status st = LoadReplays(*g, &loaded); !st.ok()) return ToGrpcStatus(st);
        g->replays = std::move(loaded);
        for (auto& [ref, r] : keep) g->replays[ref] = r;
      }
      reply->set_replayed(n);
      SPDLOG_INFO("group {}: {} dead letters replayed", req->group(), n);
      Kick();
      return grpc::Status::OK;
    });
  }

  // ---- housekeeping ---------------------------------------------------

  void HousekeepingLoop() {
    absl::Time next_sweep = absl::Now();
    while (true) {
      {
        absl::MutexLock lock(&kick_mu);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(kick_mu) { return stopping; };
        if (kick_mu.AwaitWithTimeout(absl::Condition(&stop), absl::Seconds(1))) return;
      }
      CheckDisk();
      Checkpoint();
      if (absl::Now() >= next_sweep) {
        next_sweep = absl::Now() + options.housekeeping_interval;
        SweepDedup();
        ApplyRetention();
      }
    }
  }

  void CheckDisk() {
    struct statvfs vfs;
    std::string why;
    double used = -1;
    if (::statvfs(options.data_dir.c_str(), &vfs) == 0 && vfs.f_blocks > 0) {
      used = 1.0 - static_cast<double>(vfs.f_bavail) / static_cast<double>(vfs.f_blocks);
    }
    // Fault injection for tests: a file holding the fraction to assume.
    if (const char* fake = std::getenv("FORMICA_FAULT_DISK_USED_FILE"); fake != nullptr) {
      std::ifstream in(fake);
      double v = 0;
      if (in >> v) used = v;
    }
    if (used >= 0) {
      if (used > options.disk_full_ratio) {
        why = absl::StrFormat(
            "dmsd's disk is %.1f%% full, over its watermark of %.1f%% "
            "(storage.disk_full_ratio); produce resumes when space is freed",
            used * 100, options.disk_full_ratio * 100);
      }
    }
    absl::MutexLock lock(&disk_mu);
    if (why.empty() != disk_full.empty()) {
      if (why.empty()) {
        SPDLOG_INFO("disk below the watermark again: produce resumes");
      } else {
        SPDLOG_WARN("{}", why);
      }
    }
    disk_full = why;
  }

  // Committed offsets advanced by filtered or skipped messages are written
  // now and then, so a restart does not scan them again.
  void Checkpoint() {
    std::vector<std::shared_ptr<GroupState>> all;
    {
      absl::MutexLock lock(&groups_mu);
      for (auto& [key, g] : groups) all.push_back(g);
    }
    for (const std::shared_ptr<GroupState>& g : all) {
      std::vector<std::pair<int, uint64_t>> moved;
      {
        absl::MutexLock lock(&g->mu);
        for (size_t q = 0; q < g->cursors.size(); ++q) {
          uint64_t c = g->cursors[q]->committed();
          if (c > g->persisted[q]) moved.emplace_back(static_cast<int>(q), c);
        }
      }
      for (const auto& [q, c] : moved) {
        if (progress->Ack(g->name, g->topic->name, q, std::vector<uint64_t>{}, c).ok()) {
          absl::MutexLock lock(&g->mu);
          g->persisted[q] = std::max(g->persisted[q], c);
        }
      }
    }
  }

  void SweepDedup() {
    int64_t oldest = NowMs() - absl::ToInt64Milliseconds(options.dedup_window);
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    rocksdb::WriteBatch batch;
    size_t removed = 0;
    for (it->Seek("d/"); it->Valid() && it->key().starts_with("d/"); it->Next()) {
      absl::string_view v(it->value().data(), it->value().size());
      size_t space = v.rfind(' ');
      int64_t born = 0;
      if (space == absl::string_view::npos || !absl::SimpleAtoi(v.substr(space + 1), &born) ||
          born < oldest) {
        batch.Delete(it->key());
        ++removed;
      }
    }
    if (removed > 0) meta->Write(rocksdb::WriteOptions(), &batch);
  }

  void ApplyRetention() {
    absl::Time cutoff = absl::Now() - options.retention_age;
    for (TopicState* t : AllTopics()) {
      for (int q = 0; q < t->topic->queues(); ++q) {
        MessageLog& log = t->topic->log(q);
        std::vector<SegmentInfo> segs = log.Segments();
        uint64_t total = 0;
        for (const SegmentInfo& s : segs) total += s.bytes;
        uint64_t remove_before = 0;
        // Never the newest segment: it takes the appends.
        for (size_t i = 0; i + 1 < segs.size(); ++i) {
          bool old = segs[i].last_write < cutoff;
          bool over =
              options.retention_bytes > 0 && total > static_cast<uint64_t>(options.retention_bytes);
          if (!old && !over) break;
          remove_before = segs[i].end;
          total -= segs[i].bytes;
        }
        if (remove_before > 0) {
          if (absl::Status st = log.RemoveBefore(remove_before); !st.ok()) {
            SPDLOG_ERROR("topic {} queue {}: retention: {}", t->name, q, std::string(st.message()));
          } else {
            SPDLOG_INFO("topic {} queue {}: retention removed messages below offset {}", t->name, q,
                        remove_before);
          }
        }
      }
    }
  }

  void Shutdown() {
    if (shut_down) return;
    shut_down = true;
    streams_stop = true;  // consumers move on at once
    if (txns != nullptr) txns->Stop();
    live_streams.StopReading();  // streams still waiting for their first request
    {
      absl::MutexLock lock(&kick_mu);
      stopping = true;
    }
    if (server != nullptr) server->Shutdown();
    if (dispatcher.joinable()) dispatcher.join();
    if (housekeeper.joinable()) housekeeper.join();
    if (progress != nullptr) Checkpoint();
    SPDLOG_INFO("dmsd stopped");
  }
};

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(BrokerOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("dmsd needs at least one registry (dsrd) address");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  const BrokerOptions& o = impl->options;
  if (absl::Status st = impl->Open(); !st.ok()) return st;
  registry::ClientOptions ro;
  ro.registries = o.registries;
  ro.client_name = "dmsd";
  absl::StatusOr<std::unique_ptr<registry::Client>> registry = registry::Client::Create(ro);
  if (!registry.ok()) return registry.status();
  impl->registry = *std::move(registry);
  rpc::ClientOptions co;
  co.app_name = "dmsd";
  co.zone = o.zone;
  absl::StatusOr<std::unique_ptr<rpc::Client>> rpc_client =
      rpc::Client::Create(co, impl->registry.get());
  if (!rpc_client.ok()) return rpc_client.status();
  impl->rpc = *std::move(rpc_client);
  absl::StatusOr<std::unique_ptr<Transactions>> txns =
      Transactions::Open(o.transactions, impl->meta.get(), impl->rpc.get(),
                         [raw = impl.get()](const std::string& topic, v1::StoredMessage m) {
                           return raw->ProduceOne(topic, std::move(m));
                         });
  if (!txns.ok()) return txns.status();
  impl->txns = *std::move(txns);
  Impl* raw = impl.get();
  impl->dispatcher = std::thread([raw] { raw->DispatchLoop(); });
  impl->housekeeper = std::thread([raw] { raw->HousekeepingLoop(); });
  impl->CheckDisk();

  rpc::ServerOptions so;
  so.listen = o.listen;
  so.advertise_host = o.advertise_host;
  so.zone = o.zone;
  so.unpublish_grace = o.unpublish_grace;
  so.drain_timeout = o.drain_timeout;
  // Room for a produce call of the largest message (a larger one gets
  // INVALID_ARGUMENT naming the limit, not gRPC's RESOURCE_EXHAUSTED).
  so.max_receive_message_bytes = static_cast<int>(
      std::min<int64_t>(INT32_MAX, std::max<int64_t>(64 << 20, 2 * o.max_body_bytes + (1 << 20))));
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(so,
                         {{v1::Broker::service_full_name(), impl.get()},
                          {kTransactionParticipant, impl->txns->participant()}},
                         impl->registry.get());
  if (!server.ok()) {
    impl->Shutdown();
    return server.status();
  }
  impl->server = *std::move(server);
  SPDLOG_INFO("dmsd serving on {} ({} flush)", impl->server->address(), o.sync ? "sync" : "async");
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Broker::Broker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() { Shutdown(); }
int Broker::port() const { return impl_->server->port(); }
void Broker::Shutdown() { impl_->Shutdown(); }

absl::StatusOr<BrokerOptions> LoadBrokerOptions(const Config& config) {
  BrokerOptions o;
  ConfigReader r(config);
  o.listen = r.String("server.listen", o.listen);
  o.advertise_host = r.String("server.advertise_host", o.advertise_host);
  o.zone = r.String("server.zone", o.zone);
  o.unpublish_grace = r.Duration("server.unpublish_grace", o.unpublish_grace, absl::ZeroDuration(),
                                 absl::Minutes(10));
  o.drain_timeout =
      r.Duration("server.drain_timeout", o.drain_timeout, absl::ZeroDuration(), absl::Minutes(10));
  o.registries = r.StringList("registry.addresses", o.registries);
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  std::string flush = r.String("storage.flush", "sync");
  if (flush == "sync") {
    o.sync = true;
  } else if (flush == "async") {
    o.sync = false;
  } else {
    r.Fail("storage.flush", absl::StrCat("expected 'sync' or 'async', got '", flush, "'"));
  }
  o.segment_bytes = r.Bytes("storage.segment_bytes", o.segment_bytes, 4096, 1ll << 34);
  o.quarantine_damaged_topics =
      r.Bool("storage.quarantine_damaged_topics", o.quarantine_damaged_topics);
  std::string ratio = r.String("storage.disk_full_ratio", "0.95");
  if (!absl::SimpleAtod(ratio, &o.disk_full_ratio) || o.disk_full_ratio <= 0 ||
      o.disk_full_ratio > 1) {
    r.Fail("storage.disk_full_ratio",
           absl::StrCat("expected a fraction in (0, 1], got '", ratio, "'"));
  }
  o.retention_age =
      r.Duration("retention.max_age", o.retention_age, absl::Seconds(1), absl::Hours(24 * 3660));
  o.retention_bytes = r.Bytes("retention.max_bytes_per_queue", o.retention_bytes, 0, 1ll << 50);
  o.housekeeping_interval = r.Duration("retention.check_interval", o.housekeeping_interval,
                                       absl::Milliseconds(100), absl::Hours(24));
  o.default_queues = static_cast<int>(r.Int("topics.default_queues", o.default_queues, 1, 1024));
  for (const std::string& entry : r.StringList("topics.create", {})) {
    std::vector<std::string> parts = absl::StrSplit(entry, ':');
    int queues = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &queues) || queues < 1 || queues > 1024) {
      r.Fail("topics.create",
             absl::StrCat("expected entries NAME:QUEUES (1..1024 queues), got '", entry, "'"));
      break;
    }
    if (absl::Status st = ValidName("topic name", parts[0]); !st.ok()) {
      r.Fail("topics.create", st.message());
      break;
    }
    o.topics[parts[0]] = queues;
  }
  o.max_body_bytes = r.Bytes("limits.max_body_bytes", o.max_body_bytes, 1, 64 << 20);
  o.max_batch = static_cast<int>(r.Int("limits.max_batch", o.max_batch, 1, 100000));
  o.max_delay =
      r.Duration("limits.max_delay", o.max_delay, absl::Seconds(1), absl::Hours(24 * 3660));
  o.dedup_window =
      r.Duration("dedup.window", o.dedup_window, absl::Seconds(1), absl::Hours(24 * 7));
  o.ack_timeout =
      r.Duration("consume.ack_timeout", o.ack_timeout, absl::Milliseconds(10), absl::Hours(24));
  o.max_attempts = static_cast<int>(r.Int("consume.max_attempts", o.max_attempts, 1, 1000));
  o.retry_initial =
      r.Duration("consume.retry_initial", o.retry_initial, absl::Milliseconds(1), absl::Hours(24));
  TransactionOptions& t = o.transactions;
  t.check_after = r.Duration("transactions.check_after", t.check_after, absl::Milliseconds(10),
                             absl::Hours(24));
  t.check_interval = r.Duration("transactions.check_interval", t.check_interval,
                                absl::Milliseconds(10), absl::Hours(24));
  t.check_interval_max = r.Duration("transactions.check_interval_max", t.check_interval_max,
                                    absl::Milliseconds(10), absl::Hours(24 * 7));
  t.max_checks = static_cast<int>(r.Int("transactions.max_checks", t.max_checks, 1, 10000));
  t.checks_per_second =
      static_cast<int>(r.Int("transactions.checks_per_second", t.checks_per_second, 1, 100000));
  o.retry_max =
      r.Duration("consume.retry_max", o.retry_max, absl::Milliseconds(1), absl::Hours(24 * 7));
  for (const std::string& a : o.registries) {
    if (absl::Status st = ValidateAddress(a); !st.ok()) {
      r.Fail("registry.addresses", st.message());
      break;
    }
  }
  if (o.retry_max < o.retry_initial) {
    r.Fail("consume.retry_max", "must be at least consume.retry_initial");
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

}  // namespace formica::dms
