#include "group_progress.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "formica/internal/rocksdb.h"

namespace formica::dms {
namespace {

// "c/<group>\0<topic>\0<queue>" -> committed offset (decimal);
// "a/<group>\0<topic>\0<queue>\0<offset, 20 digits>" -> "" for an ack above it.
std::string QueueKey(const std::string& group, const std::string& topic, int queue) {
  return absl::StrCat(group, std::string(1, '\0'), topic, std::string(1, '\0'), queue);
}
std::string CommittedKey(const std::string& q) { return "c/" + q; }
std::string AckPrefix(const std::string& q) { return "a/" + q + std::string(1, '\0'); }
std::string AckKey(const std::string& q, uint64_t offset) {
  return AckPrefix(q) + absl::StrFormat("%020u", offset);
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  return FromRocksDb(s, "group progress", what);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GroupProgress>> GroupProgress::Open(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<rocksdb::DB>> db = OpenRocksDb(dir, "the group progress store");
  if (!db.ok()) return db.status();
  rocksdb::DB* raw = db->get();
  return std::unique_ptr<GroupProgress>(new GroupProgress(*std::move(db), raw, DirectDbWrites()));
}

std::unique_ptr<GroupProgress> GroupProgress::Over(rocksdb::DB* db, DbWrites* writes) {
  return std::unique_ptr<GroupProgress>(new GroupProgress(nullptr, db, writes));
}

GroupProgress::GroupProgress(std::unique_ptr<rocksdb::DB> owned, rocksdb::DB* db, DbWrites* writes)
    : owned_(std::move(owned)), db_(db), writes_(writes) {}
GroupProgress::~GroupProgress() = default;

absl::StatusOr<QueueProgress> GroupProgress::Load(const std::string& group,
                                                  const std::string& topic, int queue) {
  QueueProgress p;
  std::string q = QueueKey(group, topic, queue);
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), CommittedKey(q), &value);
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading a committed offset");
  p.known = s.ok();
  if (s.ok() && !absl::SimpleAtoi(value, &p.committed)) {
    return absl::DataLossError(absl::StrCat("group progress: committed offset of ", group, "/",
                                            topic, "/", queue, " is corrupt"));
  }
  std::string prefix = AckPrefix(q);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    uint64_t offset = 0;
    if (!absl::SimpleAtoi(it->key().ToString().substr(prefix.size()), &offset)) {
      return absl::DataLossError("group progress: an ack key is corrupt");
    }
    if (offset >= p.committed) p.acked.insert(offset);
  }
  if (absl::Status st = FromRocks(it->status(), "reading acks"); !st.ok()) return st;
  return p;
}

absl::StatusOr<std::vector<GroupQueue>> GroupProgress::Queues() {
  std::vector<GroupQueue> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("c/"); it->Valid() && it->key().starts_with("c/"); it->Next()) {
    std::vector<std::string> parts =
        absl::StrSplit(it->key().ToString().substr(2), std::string(1, '\0'));
    GroupQueue q;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[2], &q.queue)) {
      return absl::DataLossError(absl::StrCat(
          "group progress: the key '", absl::CHexEscape(it->key().ToString()), "' is corrupt"));
    }
    q.group = std::move(parts[0]);
    q.topic = std::move(parts[1]);
    out.push_back(std::move(q));
  }
  if (absl::Status st = FromRocks(it->status(), "listing progress"); !st.ok()) return st;
  return out;
}

absl::Status GroupProgress::Ack(const std::string& group, const std::string& topic, int queue,
                                uint64_t offset, uint64_t committed) {
  return Ack(group, topic, queue, std::vector<uint64_t>{offset}, committed);
}

absl::Status GroupProgress::Ack(const std::string& group, const std::string& topic, int queue,
                                const std::vector<uint64_t>& offsets, uint64_t committed) {
  return AckQueues(group, topic, {{queue, QueueAcks{offsets, committed}}});
}

absl::Status GroupProgress::AckQueues(const std::string& group, const std::string& topic,
                                      const std::map<int, QueueAcks>& acks) {
  if (acks.empty()) return absl::OkStatus();
  absl::StatusOr<uint64_t> written = Write(group, topic, acks);
  if (!written.ok()) return written.status();
  return writes_->durable() ? absl::OkStatus() : SyncThrough(*written);
}

// The queues' acks go out as one batch: in a broker group that is one
// entry of the group's log (one commit) however many queues an ack names.
absl::StatusOr<uint64_t> GroupProgress::Write(const std::string& group, const std::string& topic,
                                              const std::map<int, QueueAcks>& acks) {
  struct Locked {
    std::string key;
    QueueState* state;
    uint64_t committed;
  };
  std::vector<Locked> queues;
  queues.reserve(acks.size());
  for (const auto& [queue, a] : acks) {
    std::string q = QueueKey(group, topic, queue);
    QueueState* state = &StateFor(q);
    queues.push_back(Locked{std::move(q), state, a.committed});
  }
  // One queue's writes apply in order, and its committed offset never goes
  // back (acks computed earlier may arrive later). The queues are locked in
  // the map's (ascending) order, the same in every call; the sync that
  // makes the write durable is shared outside the locks.
  for (Locked& l : queues) l.state->mu.Lock();
  auto unlock = [&queues] {
    for (auto it = queues.rbegin(); it != queues.rend(); ++it) it->state->mu.Unlock();
  };
  rocksdb::WriteBatch batch;
  auto a = acks.begin();
  for (Locked& l : queues) {
    QueueState& state = *l.state;
    if (!state.loaded) {
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), CommittedKey(l.key), &value);
      if (!s.ok() && !s.IsNotFound()) {
        unlock();
        return FromRocks(s, "reading a committed offset");
      }
      if (s.ok()) absl::SimpleAtoi(value, &state.committed);
      state.loaded = true;
    }
    l.committed = std::max(l.committed, state.committed);
    for (uint64_t offset : (a++)->second.offsets) {
      if (offset >= l.committed) batch.Put(AckKey(l.key, offset), "");
    }
    batch.Put(CommittedKey(l.key), absl::StrCat(l.committed));
    // Acks now below the committed offset are folded into it.
    if (l.committed > state.committed) {
      batch.DeleteRange(AckPrefix(l.key), AckKey(l.key, l.committed));
    }
  }
  absl::Status st = writes_->Write(db_, &batch, false);
  if (st.ok()) {
    for (Locked& l : queues) l.state->committed = l.committed;
  }
  unlock();
  if (!st.ok()) return st;
  absl::MutexLock sync_lock(&sync_mu_);
  return ++written_;
}

// Group commit of the WAL: one caller syncs for every write made before it
// started; the others wait for that sync.
absl::Status GroupProgress::SyncThrough(uint64_t write) {
  absl::MutexLock lock(&sync_mu_);
  while (synced_ < write) {
    if (syncing_) {
      auto moved = [this, write]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) {
        return !syncing_ || synced_ >= write;
      };
      sync_mu_.Await(absl::Condition(&moved));
      continue;
    }
    syncing_ = true;
    uint64_t target = written_;
    sync_mu_.Unlock();
    rocksdb::Status s = db_->SyncWAL();
    sync_mu_.Lock();
    syncing_ = false;
    if (!s.ok()) return FromRocks(s, "syncing acks");
    synced_ = std::max(synced_, target);
  }
  return absl::OkStatus();
}

GroupProgress::QueueState& GroupProgress::StateFor(const std::string& queue_key) {
  absl::MutexLock lock(&states_mu_);
  std::unique_ptr<QueueState>& state = states_[queue_key];
  if (state == nullptr) state = std::make_unique<QueueState>();
  return *state;
}
}  // namespace formica::dms
