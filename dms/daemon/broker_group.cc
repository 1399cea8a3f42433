// A replicated broker group's member: the funnel every durable write of the
// leader's engines goes through (ReplicatedStores: LogReplication for the
// queue logs, DbWrites for the RocksDBs), its Raft state machine (Apply on
// every member), and the thread that starts the broker when this member
// becomes the ready leader and stops it when it no longer is.
#include "broker_group.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "db_writes.h"
#include "formica/internal/credentials.h"
#include "formica/internal/rocksdb.h"
#include "produce_engine.h"
#include "topic.h"
#include "topic_catalog.h"

namespace formica::dms {
namespace {

// Entries of the group's log: a kind byte, then
//   'A' id, u64 first offset, u32 count, (u32 length, bytes) per record
//   'R' id, u64 offset                      (remove segments before it)
//   'S' id, u64 expected end, u64 next      (an empty log begins at next)
//   'B' store ('p' progress, 'm' meta), a RocksDB WriteBatch's bytes
//   'T' name, u32 queues                    (create a topic)
// where name is a u32 length and the bytes, and id is a u32 length and the bytes of
// "<topic>/<queue>".
constexpr char kAppend = 'A';
constexpr char kRemove = 'R';
constexpr char kStartAt = 'S';
constexpr char kBatch = 'B';
constexpr char kCreateTopic = 'T';
// A snapshot is what the stores held when it was taken, as a check (the
// stores themselves stay where they are): "dmsd stores v1" then lines
//   p <index of the last batch applied to the progress store>
//   m <the same for the meta store>
//   l <log id> <end offset>        (one per queue log)
constexpr char kSnapshotMarker[] = "dmsd stores v1";
// Where Apply records, in each RocksDB, the index of the last batch it
// applied there (in the batch itself). No store key starts with '~'.
constexpr char kAppliedKey[] = "~raft/applied";

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// Reads the parts of an entry; false when it is cut short.
class EntryReader {
 public:
  explicit EntryReader(absl::string_view in) : in_(in) {}
  bool U32(uint32_t* v) {
    if (in_.size() < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i)
      *v |= static_cast<uint32_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(4);
    return true;
  }
  bool U64(uint64_t* v) {
    if (in_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i)
      *v |= static_cast<uint64_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    return true;
  }
  bool Bytes(absl::string_view* out) {
    uint32_t n = 0;
    if (!U32(&n) || in_.size() < n) return false;
    *out = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  absl::string_view rest() const { return in_; }

 private:
  absl::string_view in_;
};

// A member that cannot apply a committed entry must not go on (its stores
// would differ from the group's).
[[noreturn]] void ApplyFailed(uint64_t index, absl::string_view why) {
  SPDLOG_CRITICAL(
      "dmsd cannot apply entry {} of its broker group's log: {}. This member stops; fix the "
      "cause and restart it (it replays the log), or replace its storage.data_dir and "
      "raft.data_dir with copies from a healthy member taken while that member was stopped",
      index, std::string(why));
  spdlog::shutdown();
  std::_Exit(1);
}

// A store write that failed for want of space (not a store that stopped
// taking writes for good: that is UNAVAILABLE, and needs a restart).
bool DiskFull(const absl::Status& st) {
  return !absl::IsUnavailable(st) && (absl::StrContains(st.message(), std::strerror(ENOSPC)) ||
                                      absl::StrContains(st.message(), std::strerror(EDQUOT)));
}

// How often Apply tries a write again while the disk is full, and how often
// it says so again.
constexpr absl::Duration kDiskFullRetry = absl::Milliseconds(500);
constexpr absl::Duration kDiskFullRepeat = absl::Seconds(30);

// Broker::Start failures in a row, as leader, before the member hands its
// leadership to a follower (each time), and before it exits (docs/ha.md).
constexpr int kTransferAfter = 3;
constexpr int kStartAttempts = 10;

std::string LeaderText(const RaftNodeStatus& st) {
  if (st.leader.id == 0) return "no leader is known yet; retry shortly";
  return absl::StrCat("the leader is node ", st.leader.id, " (raft address ", st.leader.address,
                      "), published in the registry");
}

}  // namespace

class BrokerGroup::Impl : public RaftStateMachine, public LogReplication, public SharedTopics {
 public:
  // The RocksDB writes of one leadership's engines: proposed for its term
  // only, so a stale engine's batch is never appended in a later term.
  class TermWrites : public DbWrites {
   public:
    TermWrites(Impl* group, uint64_t term) : group_(group), term_(term) {}
    absl::Status Write(rocksdb::DB* db, rocksdb::WriteBatch* batch, bool /*sync*/) override {
      std::string entry(1, kBatch);
      entry.push_back(db == group_->progress.get() ? 'p' : 'm');
      entry += batch->Data();
      return Outcome(group_->node->Propose(std::move(entry), term_).get());
    }
    bool durable() const override { return true; }

   private:
    Impl* group_;
    uint64_t term_;
  };

  BrokerOptions options;
  std::unique_ptr<rocksdb::DB> progress, meta;
  absl::Mutex topics_mu;
  std::map<std::string, std::shared_ptr<Topic>> topics ABSL_GUARDED_BY(topics_mu);
  BrokerStores stores;
  std::unique_ptr<RaftNode> node;
  std::atomic<bool> node_started{false};  // Restore after this: a snapshot sent by the leader

  absl::Mutex mu;
  RaftNodeStatus status ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::thread leadership;
  std::unique_ptr<Broker> broker;  // leading: the engines (leadership thread only)
  // Written by the leadership thread only; read in `mu`'s conditions too.
  std::atomic<uint64_t> leading_term{0};
  // The term the logs lead in (0: none); Create leads a new topic's logs
  // in it, under the same lock StepDown takes.
  absl::Mutex logs_mu;
  uint64_t logs_term ABSL_GUARDED_BY(logs_mu) = 0;
  std::unique_ptr<TermWrites> term_writes;  // leadership thread only
  BrokerStores term_stores;                 // what the leader's broker gets
  int start_failures = 0;                   // Broker::Start in a row, as leader
  std::unique_ptr<grpc::Server> refusal;
  std::unique_ptr<grpc::CallbackGenericService> refusal_service;
  int refusal_port = 0;
  bool shut_down = false;

  // ---- stores ---------------------------------------------------------

  absl::Status OpenStores() {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir + "/topics", ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", options.data_dir, "/topics: ", ec.message()));
    }
    absl::StatusOr<std::unique_ptr<rocksdb::DB>> p =
        OpenRocksDb(options.data_dir + "/progress", "the group progress store");
    if (!p.ok()) return p.status();
    progress = *std::move(p);
    absl::StatusOr<std::unique_ptr<rocksdb::DB>> m =
        OpenRocksDb(options.data_dir + "/meta", "the meta store");
    if (!m.ok()) return m.status();
    meta = *std::move(m);
    // No topic is opened here: a member's topics are what the group's log
    // created (its snapshot's, in Restore, and topic entries in Apply), so
    // every member has the same ones whatever its config or disk holds.
    stores.progress = progress.get();
    stores.meta = meta.get();
    stores.topics = this;
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<Topic>> OpenTopic(const std::string& name, int queues) {
    TopicOptions to;
    to.dir = absl::StrCat(options.data_dir, "/topics/", TopicDirectory(name));
    to.name = name;
    to.queues = queues;
    to.log.segment_bytes = static_cast<uint64_t>(options.segment_bytes);
    to.log.max_record_bytes =
        static_cast<uint32_t>(options.max_body_bytes + kMaxPropertiesBytes + 64 * 1024);
    to.log.replication = this;
    absl::StatusOr<std::unique_ptr<Topic>> t = Topic::Open(to, nullptr);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("topic '", name, "': ", t.status().message()));
    }
    std::shared_ptr<Topic> shared = *std::move(t);
    absl::MutexLock lock(&topics_mu);
    topics[name] = shared;
    return shared;
  }

  std::vector<MessageLog*> AllLogs() {
    absl::MutexLock lock(&topics_mu);
    std::vector<MessageLog*> out;
    for (const auto& [name, topic] : topics) {
      for (int q = 0; q < topic->queues(); ++q) out.push_back(topic->log(q));
    }
    return out;
  }

  // ---- SharedTopics (the leader's catalog) ------------------------------

  std::vector<std::string> Names() override {
    absl::MutexLock lock(&topics_mu);
    std::vector<std::string> out;
    for (const auto& [name, topic] : topics) out.push_back(name);
    return out;
  }

  std::shared_ptr<Topic> Find(const std::string& name) override {
    absl::MutexLock lock(&topics_mu);
    auto it = topics.find(name);
    return it == topics.end() ? nullptr : it->second;
  }

  absl::StatusOr<std::shared_ptr<Topic>> Create(const std::string& name, int queues) override {
    std::string entry(1, kCreateTopic);
    PutU32(&entry, static_cast<uint32_t>(name.size()));
    entry += name;
    PutU32(&entry, static_cast<uint32_t>(queues));
    uint64_t term = 0;
    {
      absl::MutexLock lock(&logs_mu);
      term = logs_term;
    }
    if (term == 0) return Outcome(NotLeaderResult());
    if (absl::Status st = Outcome(node->Propose(std::move(entry), term).get()); !st.ok()) {
      return st;
    }
    std::shared_ptr<Topic> t = Find(name);
    if (t == nullptr) return absl::InternalError(absl::StrCat("topic '", name, "' not created"));
    absl::MutexLock lock(&logs_mu);
    if (logs_term != term) return Outcome(NotLeaderResult());     // StepDown ran meanwhile
    for (int q = 0; q < t->queues(); ++q) t->log(q)->Lead(term);  // appends from the leader
    return t;
  }

  MessageLog* FindLog(absl::string_view id) {
    size_t slash = id.rfind('/');
    int queue = 0;
    if (slash == absl::string_view::npos || !absl::SimpleAtoi(id.substr(slash + 1), &queue)) {
      return nullptr;
    }
    std::shared_ptr<Topic> t = Find(std::string(id.substr(0, slash)));
    if (t == nullptr || queue < 0 || queue >= t->queues()) return nullptr;
    return t->log(queue);
  }

  // ---- the funnel (leader) --------------------------------------------

  void ProposeAppend(const std::string& id, uint64_t term, uint64_t first,
                     absl::Span<const absl::string_view> payloads,
                     std::function<void(absl::Status)> done) override {
    std::string entry(1, kAppend);
    size_t bytes = 0;
    for (absl::string_view p : payloads) bytes += p.size() + 4;
    entry.reserve(32 + id.size() + bytes);
    PutU32(&entry, static_cast<uint32_t>(id.size()));
    entry += id;
    PutU64(&entry, first);
    PutU32(&entry, static_cast<uint32_t>(payloads.size()));
    for (absl::string_view p : payloads) {
      PutU32(&entry, static_cast<uint32_t>(p.size()));
      entry.append(p.data(), p.size());
    }
    // Answered by this entry's own outcome: Apply's output is empty when
    // the append was taken, else why it was rejected.
    node->Propose(std::move(entry), term, [done = std::move(done)](ProposeResult r) {
      if (r.status.ok() && !r.output.empty()) {
        done(absl::FailedPreconditionError(r.output));
      } else {
        done(Outcome(r));
      }
    });
  }

  absl::Status ProposeRemoveBefore(const std::string& id, uint64_t term, uint64_t offset) override {
    std::string entry(1, kRemove);
    PutU32(&entry, static_cast<uint32_t>(id.size()));
    entry += id;
    PutU64(&entry, offset);
    return Outcome(node->Propose(std::move(entry), term).get());
  }

  absl::Status ProposeStartAt(const std::string& id, uint64_t term, uint64_t expected_end,
                              uint64_t next) override {
    std::string entry(1, kStartAt);
    PutU32(&entry, static_cast<uint32_t>(id.size()));
    entry += id;
    PutU64(&entry, expected_end);
    PutU64(&entry, next);
    ProposeResult r = node->Propose(std::move(entry), term).get();
    if (r.status.ok() && !r.output.empty()) return absl::FailedPreconditionError(r.output);
    return Outcome(r);
  }

  static ProposeResult NotLeaderResult() {
    ProposeResult r;
    r.status = absl::FailedPreconditionError("not leading");
    r.not_leader = true;
    return r;
  }

  static absl::Status Outcome(const ProposeResult& r) {
    if (r.status.ok()) return absl::OkStatus();
    if (!r.not_leader && absl::IsFailedPrecondition(r.status)) {
      return absl::UnavailableError(absl::StrCat(
          "this dmsd no longer leads its broker group in the term the write was made in; "
          "nothing was written; retry: ",
          r.status.message()));
    }
    if (r.not_leader) {
      RaftNodeStatus st;
      st.leader = r.leader;
      return absl::UnavailableError(
          absl::StrCat("this dmsd is not the leader of its broker group; ", LeaderText(st)));
    }
    return absl::UnavailableError(
        absl::StrCat("the broker group did not commit the write (outcome unknown; a retry with "
                     "the same dedup key is safe): ",
                     r.status.message()));
  }

  // ---- the state machine (every member) --------------------------------

  // Runs a store write of Apply until it is done. A member cannot skip a
  // committed entry, so a full disk is waited out: its Raft loop waits with
  // Apply (the group commits with the other members meanwhile), and once
  // the write goes through it catches up from the leader's log. Any other
  // failure stops the member.
  void Durably(uint64_t index, const std::function<absl::Status()>& write) {
    absl::Status st = write();
    if (st.ok()) return;
    if (!DiskFull(st)) ApplyFailed(index, st.ToString());
    if (leading_term != 0) {
      // A leader waiting here would keep answering as leader, its calls
      // hanging, while the others elect another: it stops instead, and
      // restarted it follows and applies the entry again from its log.
      ApplyFailed(index, absl::StrCat("its disk is full while it leads its broker group (",
                                      st.ToString(), "); another member takes over"));
    }
    SPDLOG_ERROR(
        "dmsd waits to apply entry {} of its broker group's log: the disk is full: {}. This member "
        "waits, out of its group's commits (the others go on), and tries again every {}; make room "
        "on the disk and it catches up by itself",
        index, st.ToString(), absl::FormatDuration(kDiskFullRetry));
    const absl::Time since = absl::Now();
    absl::Time told = since;
    while (true) {
      {
        absl::MutexLock lock(&mu);
        if (mu.AwaitWithTimeout(absl::Condition(&stopping), kDiskFullRetry)) {
          SPDLOG_CRITICAL(
              "dmsd stops with entry {} of its broker group's log not applied (its disk is full: "
              "{}); at its next start it applies it again from its log",
              index, st.ToString());
          spdlog::shutdown();
          std::_Exit(1);
        }
      }
      st = write();
      if (st.ok()) break;
      if (!DiskFull(st)) ApplyFailed(index, st.ToString());
      if (absl::Now() - told >= kDiskFullRepeat) {
        told = absl::Now();
        SPDLOG_ERROR("dmsd still cannot apply entry {} after {}: the disk is full: {}", index,
                     absl::FormatDuration(told - since), st.ToString());
      }
    }
    SPDLOG_INFO(
        "dmsd applied entry {} of its broker group's log after its disk was full for {}; it "
        "catches up with its group",
        index, absl::FormatDuration(absl::Now() - since));
  }

  std::string Apply(uint64_t index, absl::string_view entry) override {
    if (entry.empty()) ApplyFailed(index, "an empty entry");
    EntryReader in(entry.substr(1));
    absl::string_view id;
    switch (entry[0]) {
      case kAppend: {
        uint64_t first = 0;
        uint32_t count = 0;
        if (!in.Bytes(&id) || !in.U64(&first) || !in.U32(&count)) ApplyFailed(index, "cut short");
        std::vector<absl::string_view> payloads(count);
        for (uint32_t i = 0; i < count; ++i) {
          if (!in.Bytes(&payloads[i])) ApplyFailed(index, "cut short");
        }
        // A rejected append changes nothing, on every member alike: the
        // proposer hears why (its entry's output), the group goes on.
        MessageLog* log = FindLog(id);
        if (log == nullptr) return Rejected(index, UnknownLog(id));
        absl::Status st;
        Durably(index, [&] {
          st = log->ApplyAppend(first, payloads);
          return absl::IsFailedPrecondition(st) ? absl::OkStatus() : st;
        });
        if (absl::IsFailedPrecondition(st)) return Rejected(index, std::string(st.message()));
        break;
      }
      case kRemove: {
        uint64_t offset = 0;
        if (!in.Bytes(&id) || !in.U64(&offset)) ApplyFailed(index, "cut short");
        MessageLog* log = FindLog(id);
        if (log == nullptr) return Rejected(index, UnknownLog(id));
        Durably(index, [&] { return log->ApplyRemoveBefore(offset); });
        break;
      }
      case kStartAt: {
        uint64_t expected = 0, next = 0;
        if (!in.Bytes(&id) || !in.U64(&expected) || !in.U64(&next)) {
          ApplyFailed(index, "cut short");
        }
        MessageLog* log = FindLog(id);
        if (log == nullptr) return Rejected(index, UnknownLog(id));
        absl::Status st;
        Durably(index, [&] {
          st = log->ApplyStartAt(expected, next);
          return absl::IsFailedPrecondition(st) ? absl::OkStatus() : st;
        });
        if (absl::IsFailedPrecondition(st)) return Rejected(index, std::string(st.message()));
        break;
      }
      case kBatch: {
        absl::string_view rest = in.rest();
        if (rest.empty()) ApplyFailed(index, "cut short");
        rocksdb::DB* db = rest[0] == 'p' ? progress.get() : meta.get();
        rocksdb::WriteBatch batch{std::string(rest.substr(1))};
        std::string at(8, '\0');
        for (int i = 0; i < 8; ++i) at[i] = static_cast<char>(index >> (8 * (7 - i)));
        batch.Put(kAppliedKey, at);
        Durably(index, [&] {
          rocksdb::Status s = db->Write(rocksdb::WriteOptions(), &batch);
          // A store whose write failed takes no more until resumed.
          if (!s.ok()) db->Resume().PermitUncheckedError();
          return FromRocksDb(s,
                             db == progress.get() ? "the group progress store" : "the meta store",
                             "applying a write batch");
        });
        break;
      }
      case kCreateTopic: {
        absl::string_view name;
        uint32_t queues = 0;
        if (!in.Bytes(&name) || !in.U32(&queues)) ApplyFailed(index, "cut short");
        if (Find(std::string(name)) != nullptr) break;  // the leader checked the queue count
        Durably(index,
                [&] { return OpenTopic(std::string(name), static_cast<int>(queues)).status(); });
        SPDLOG_INFO("topic {}: created with {} queues", std::string(name), queues);
        break;
      }
      default:
        ApplyFailed(index, absl::StrCat("an entry of unknown kind ", static_cast<int>(entry[0])));
    }
    return std::string();
  }

  static std::string UnknownLog(absl::string_view id) {
    return absl::StrCat("queue log '", id, "' was not created by the group's log; rejected");
  }
  static std::string Rejected(uint64_t index, std::string why) {
    SPDLOG_WARN("entry {} of the broker group's log rejected (nothing changed): {}", index, why);
    return why.empty() ? std::string("rejected") : why;
  }

  // The stores hold everything applied: make it durable, so the log before
  // this point may go.
  absl::StatusOr<std::string> Snapshot() override {
    for (MessageLog* log : AllLogs()) {
      if (absl::Status st = log->Flush(); !st.ok()) return st;
    }
    for (rocksdb::DB* db : {progress.get(), meta.get()}) {
      if (absl::Status st = FromRocksDb(db->FlushWAL(true), "dmsd", "syncing for a snapshot");
          !st.ok()) {
        return st;
      }
    }
    std::string marker = absl::StrCat(kSnapshotMarker, "\np ", AppliedIn(progress.get()), "\nm ",
                                      AppliedIn(meta.get()), "\n");
    absl::MutexLock lock(&topics_mu);
    for (const auto& [name, topic] : topics) {
      for (int q = 0; q < topic->queues(); ++q) {
        absl::StrAppend(&marker, "l ", ReplicatedLogId(name, q), " ", topic->log(q)->applied_end(),
                        "\n");
      }
    }
    return marker;
  }

  static uint64_t AppliedIn(rocksdb::DB* db) {
    std::string value;
    if (!db->Get(rocksdb::ReadOptions(), kAppliedKey, &value).ok() || value.size() != 8) return 0;
    uint64_t index = 0;
    for (char c : value) index = (index << 8) | static_cast<uint8_t>(c);
    return index;
  }

  // Takes the group's state at `snapshot` from this member's stores: its
  // topics, each log's group end. "" when the stores hold all of it (they
  // may hold more: the entries after it apply again, harmlessly), else
  // what is missing.
  std::string RestoreFrom(absl::string_view snapshot) {
    std::map<std::string, std::vector<std::pair<int, uint64_t>>> ends;  // topic: queue, end
    for (absl::string_view line : absl::StrSplit(snapshot, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
      uint64_t n = 0;
      if (f.size() == 2 && (f[0] == "p" || f[0] == "m") && absl::SimpleAtoi(f[1], &n)) {
        uint64_t here = AppliedIn(f[0] == "p" ? progress.get() : meta.get());
        if (here < n) {
          return absl::StrCat(f[0] == "p" ? "the group progress" : "the meta store",
                              " has entries up to ", here, ", the snapshot up to ", n);
        }
      } else if (f.size() == 3 && f[0] == "l" && absl::SimpleAtoi(f[2], &n)) {
        size_t slash = f[1].rfind('/');
        int queue = 0;
        if (slash == absl::string_view::npos || !absl::SimpleAtoi(f[1].substr(slash + 1), &queue)) {
          return absl::StrCat("the snapshot names a queue log '", f[1], "' dmsd cannot read");
        }
        ends[std::string(f[1].substr(0, slash))].emplace_back(queue, n);
      }
    }
    for (const auto& [name, queues] : ends) {
      std::shared_ptr<Topic> t = Find(name);
      std::string dir = absl::StrCat(options.data_dir, "/topics/", TopicDirectory(name));
      if (t == nullptr && !std::filesystem::exists(dir + "/QUEUES")) {
        return absl::StrCat("topic '", name, "' is missing");
      }
      if (t == nullptr) {
        absl::StatusOr<std::shared_ptr<Topic>> opened = OpenTopic(name, 0);
        if (!opened.ok()) return opened.status().ToString();
        t = *std::move(opened);
      }
      for (const auto& [queue, end] : queues) {
        if (queue < 0 || queue >= t->queues()) {
          return absl::StrCat("topic '", name, "' has ", t->queues(), " queues here");
        }
        if (absl::Status st = t->log(queue)->RestoreEnd(end); !st.ok()) {
          return std::string(st.message());
        }
      }
    }
    return "";
  }

  absl::Status Restore(absl::string_view snapshot) override {
    if (!absl::StartsWith(snapshot, kSnapshotMarker)) {
      return absl::DataLossError("the raft data dir holds a snapshot dmsd did not take");
    }
    // The stores are not shipped with a snapshot (its own at start, or the
    // leader's to a member behind its log): this member goes on only if its
    // own hold all the snapshot holds. The same check at every start, so a
    // member that saved a leader's snapshot it could not use refuses again.
    std::string missing = RestoreFrom(snapshot);
    if (missing.empty()) {
      if (node_started) SPDLOG_INFO("the leader sent a snapshot; this member's stores hold it");
      return absl::OkStatus();
    }
    SPDLOG_CRITICAL(
        "this dmsd's stores do not hold what its broker group's snapshot holds: {}. It fell "
        "further behind its broker group than the leader's log keeps (raft.snapshot_trailing "
        "entries), and would need the whole stores shipped, which dmsd does not do yet. It stops. "
        "To bring it back: stop it, replace its storage.data_dir and raft.data_dir with copies "
        "from a follower stopped for the copy, and start it; or raise raft.snapshot_trailing",
        missing);
    spdlog::shutdown();
    std::_Exit(1);
  }

  // ---- leadership -------------------------------------------------------

  void OnRole(const RaftNodeStatus& st) {
    absl::MutexLock lock(&mu);
    status = st;
  }

  void LeadershipLoop() {
    while (true) {
      uint64_t want = 0;
      {
        absl::MutexLock lock(&mu);
        auto changed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
          uint64_t w = status.role == RaftRole::kLeader && status.leader_ready ? status.term : 0;
          return stopping || w != leading_term;
        };
        mu.AwaitWithTimeout(absl::Condition(&changed), absl::Milliseconds(200));
        if (stopping) break;
        want = status.role == RaftRole::kLeader && status.leader_ready ? status.term : 0;
      }
      if (want == leading_term) continue;
      if (leading_term != 0) StepDown();
      if (want != 0) Lead(want);
    }
    if (leading_term != 0) StepDown();
  }

  void Lead(uint64_t term) {
    SPDLOG_INFO("dmsd node {} leads its broker group (term {}): starting the broker",
                options.raft->node_id, term);
    StopRefusal();
    {
      absl::MutexLock lock(&logs_mu);
      logs_term = term;
      for (MessageLog* log : AllLogs()) log->Lead(term);
    }
    term_writes = std::make_unique<TermWrites>(this, term);
    term_stores = stores;
    term_stores.writes = term_writes.get();
    BrokerOptions o = options;
    o.stores = &term_stores;
    absl::StatusOr<std::unique_ptr<Broker>> b = Broker::Start(std::move(o));
    if (!b.ok()) {
      StepDown();
      bool still = false;
      {
        absl::MutexLock lock(&mu);
        still = status.role == RaftRole::kLeader && status.term == term;
      }
      if (!still) return;  // leadership lost while starting: the loop follows the group
      // A leader whose broker cannot start must not keep the group without one.
      if (++start_failures >= kStartAttempts) {
        SPDLOG_CRITICAL(
            "dmsd node {} leads its broker group but its broker failed to start {} times: {}. "
            "It stops so that another member leads",
            options.raft->node_id, start_failures, b.status().ToString());
        spdlog::shutdown();
        std::_Exit(1);
      }
      SPDLOG_ERROR("dmsd node {}: the broker did not start as leader (attempt {} of {}): {}",
                   options.raft->node_id, start_failures, kStartAttempts, b.status().ToString());
      if (start_failures >= kTransferAfter) {
        auto moved = std::make_shared<std::promise<ProposeResult>>();
        std::future<ProposeResult> f = moved->get_future();
        node->TransferLeadership([moved](ProposeResult r) { moved->set_value(std::move(r)); });
        ProposeResult r = f.get();
        SPDLOG_WARN("dmsd node {}: handing leadership to a follower: {}", options.raft->node_id,
                    r.status.ok() ? std::string("done") : r.status.ToString());
        if (r.status.ok()) return;
      }
      absl::SleepFor(absl::Milliseconds(200));
      return;
    }
    start_failures = 0;
    broker = *std::move(b);
    leading_term = term;
  }

  void StepDown() {
    SPDLOG_INFO("dmsd node {} does not lead its broker group: stopping the broker",
                options.raft->node_id);
    {
      absl::MutexLock lock(&logs_mu);
      logs_term = 0;
      for (MessageLog* log : AllLogs()) log->Lead(0);
    }
    if (broker != nullptr) broker->Shutdown();
    broker.reset();
    term_writes.reset();
    leading_term = 0;
    StartRefusal();
  }

  // A follower answers every call on server.listen UNAVAILABLE, naming
  // the leader (clients find the leader in the registry).
  void StartRefusal() {
    if (refusal != nullptr) return;
    class Refuse : public grpc::CallbackGenericService {
     public:
      explicit Refuse(Impl* group) : group_(group) {}
      grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
        class Reactor : public grpc::ServerGenericBidiReactor {
         public:
          explicit Reactor(grpc::Status st) { Finish(st); }
          void OnDone() override { delete this; }
        };
        RaftNodeStatus st;
        {
          absl::MutexLock lock(&group_->mu);
          st = group_->status;
        }
        return new Reactor(
            grpc::Status(grpc::StatusCode::UNAVAILABLE,
                         absl::StrCat("dmsd node ", group_->options.raft->node_id,
                                      " is a follower of its broker group; ", LeaderText(st))));
      }

     private:
      Impl* group_;
    };
    refusal_service = std::make_unique<Refuse>(this);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(options.listen, ServerCredentials(), &port);
    builder.RegisterCallbackGenericService(refusal_service.get());
    refusal = builder.BuildAndStart();
    if (refusal == nullptr || port == 0) {
      SPDLOG_WARN("dmsd node {}: cannot serve the follower's refusal on {}", options.raft->node_id,
                  options.listen);
      refusal.reset();
      return;
    }
    refusal_port = port;
  }

  void StopRefusal() {
    if (refusal == nullptr) return;
    refusal->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    refusal->Wait();
    refusal.reset();
    refusal_service.reset();
  }

  void Shutdown() {
    if (shut_down) return;
    shut_down = true;
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    if (leadership.joinable()) leadership.join();
    StopRefusal();
    if (node != nullptr) node->Stop();
    SPDLOG_INFO("dmsd node {} left its broker group", options.raft->node_id);
  }
};

absl::StatusOr<std::unique_ptr<BrokerGroup>> BrokerGroup::Start(BrokerOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  if (absl::Status st = impl->OpenStores(); !st.ok()) return st;
  impl->StartRefusal();
  Impl* raw = impl.get();
  absl::StatusOr<std::unique_ptr<RaftNode>> node = RaftNode::Start(
      *impl->options.raft, raw, [raw](const RaftNodeStatus& st) { raw->OnRole(st); });
  if (!node.ok()) {
    impl->StopRefusal();
    return node.status();
  }
  impl->node = *std::move(node);
  impl->node_started = true;
  impl->leadership = std::thread([raw] { raw->LeadershipLoop(); });
  SPDLOG_INFO(
      "storage.flush ({}) is not used in a broker group: an acknowledged write is durable in the "
      "group's Raft log on a majority, and the queue logs are synced at each segment roll and "
      "snapshot (docs/ha.md)",
      impl->options.sync ? "sync" : "async");
  SPDLOG_INFO("dmsd node {} joined its broker group of {} ({} topics)", impl->options.raft->node_id,
              impl->options.raft->peers.size(), impl->Names().size());
  return std::unique_ptr<BrokerGroup>(new BrokerGroup(std::move(impl)));
}

BrokerGroup::BrokerGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BrokerGroup::~BrokerGroup() { Shutdown(); }
int BrokerGroup::port() const { return impl_->refusal_port; }
void BrokerGroup::Shutdown() { impl_->Shutdown(); }

}  // namespace formica::dms
