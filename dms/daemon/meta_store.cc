#include "meta_store.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "formica/internal/rocksdb.h"

namespace formica::dms {
namespace {

std::string Sep() { return std::string(1, '\0'); }

std::string DedupKey(absl::string_view topic, absl::string_view key) {
  return absl::StrCat("d/", topic, Sep(), key);
}
std::string MarkKey(absl::string_view topic, int queue) {
  return absl::StrCat("m/", topic, Sep(), queue);
}
std::string HoldKey(absl::string_view topic, int queue) {
  return absl::StrCat("q/", topic, Sep(), queue);
}
std::string LetterPrefix(absl::string_view owner) { return absl::StrCat("l/", owner, Sep()); }
std::string LetterKey(absl::string_view owner, absl::string_view topic, int queue,
                      uint64_t offset) {
  return absl::StrCat(LetterPrefix(owner), topic, Sep(), absl::StrFormat("%05d", queue), Sep(),
                      absl::StrFormat("%020u", offset));
}
std::string LetterKey(absl::string_view owner, const v1::DeadLetter& letter) {
  return LetterKey(owner, letter.topic(), letter.ref().queue(), letter.ref().offset());
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  return FromRocksDb(s, "dmsd meta store", what);
}

std::string Encoded(const v1::DeadLetter& letter) {
  std::string bytes;
  letter.SerializeToString(&bytes);
  return bytes;
}

// A letter record and the owner its key names ("l/<owner>\0...").
absl::Status ParseLetter(const rocksdb::Iterator& it, LetterEntry* out) {
  absl::string_view key(it.key().data(), it.key().size());
  key.remove_prefix(2);
  out->owner = std::string(key.substr(0, key.find('\0')));
  if (!out->letter.ParseFromArray(it.value().data(), static_cast<int>(it.value().size()))) {
    return absl::DataLossError("a dead letter record is corrupt");
  }
  return absl::OkStatus();
}

class Direct : public DbWrites {
 public:
  absl::Status Write(rocksdb::DB* db, rocksdb::WriteBatch* batch, bool sync) override {
    rocksdb::WriteOptions options;
    options.sync = sync;
    return FromRocksDb(db->Write(options, batch), "dmsd", "writing a batch");
  }
  bool durable() const override { return false; }
};

}  // namespace

DbWrites* DirectDbWrites() {
  static Direct* direct = new Direct();
  return direct;
}

absl::StatusOr<std::unique_ptr<MetaStore>> MetaStore::Open(const std::string& directory) {
  absl::StatusOr<std::unique_ptr<rocksdb::DB>> db = OpenRocksDb(directory, "the meta store");
  if (!db.ok()) return db.status();
  rocksdb::DB* raw = db->get();
  return std::unique_ptr<MetaStore>(new MetaStore(*std::move(db), raw, DirectDbWrites()));
}

std::unique_ptr<MetaStore> MetaStore::Over(rocksdb::DB* db, DbWrites* writes) {
  return std::unique_ptr<MetaStore>(new MetaStore(nullptr, db, writes));
}

MetaStore::MetaStore(std::unique_ptr<rocksdb::DB> owned, rocksdb::DB* db, DbWrites* writes)
    : owned_(std::move(owned)), db_(db), writes_(writes) {}
MetaStore::~MetaStore() = default;

absl::StatusOr<std::optional<DedupEntry>> MetaStore::Find(absl::string_view topic,
                                                          absl::string_view key) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), DedupKey(topic, key), &value);
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "dedup lookup");
  if (!s.ok()) return std::nullopt;
  DedupEntry e;
  std::vector<std::string> parts = absl::StrSplit(value, ' ');
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &e.queue) ||
      !absl::SimpleAtoi(parts[1], &e.offset) || !absl::SimpleAtoi(parts[2], &e.born_unix_ms)) {
    return std::nullopt;
  }
  return e;
}

absl::StatusOr<std::optional<uint64_t>> MetaStore::Mark(absl::string_view topic, int queue) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), MarkKey(topic, queue), &value);
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading a dedup mark");
  uint64_t mark = 0;
  if (!s.ok() || !absl::SimpleAtoi(value, &mark)) return std::nullopt;
  return mark;
}

absl::Status MetaStore::Index(absl::string_view topic,
                              const std::vector<std::pair<std::string, DedupEntry>>& entries,
                              const std::map<int, uint64_t>& marks) {
  rocksdb::WriteBatch batch;
  for (const auto& [key, e] : entries) {
    batch.Put(DedupKey(topic, key), absl::StrCat(e.queue, " ", e.offset, " ", e.born_unix_ms));
  }
  for (const auto& [q, mark] : marks) batch.Put(MarkKey(topic, q), absl::StrCat(mark));
  return writes_->Write(db_, &batch, false);
}

absl::StatusOr<size_t> MetaStore::ForgetFrom(absl::string_view topic,
                                             const std::map<int, uint64_t>& lost_from) {
  std::string prefix = DedupKey(topic, "");
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
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
  if (forgotten == 0) return 0;
  if (absl::Status st = writes_->Write(db_, &batch, true); !st.ok()) {
    return st;
  }
  return forgotten;
}

void MetaStore::Sweep(int64_t oldest_unix_ms) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  rocksdb::WriteBatch batch;
  size_t removed = 0;
  for (it->Seek("d/"); it->Valid() && it->key().starts_with("d/"); it->Next()) {
    absl::string_view v(it->value().data(), it->value().size());
    size_t space = v.rfind(' ');
    int64_t born = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtoi(v.substr(space + 1), &born) ||
        born < oldest_unix_ms) {
      batch.Delete(it->key());
      ++removed;
    }
  }
  if (removed > 0) writes_->Write(db_, &batch, false).IgnoreError();
}

absl::Status MetaStore::Put(absl::string_view owner, const v1::DeadLetter& letter) {
  rocksdb::WriteBatch batch;
  batch.Put(LetterKey(owner, letter), Encoded(letter));
  return writes_->Write(db_, &batch, true);
}

absl::Status MetaStore::PutMany(const std::vector<LetterEntry>& letters) {
  rocksdb::WriteBatch batch;
  for (const LetterEntry& e : letters) batch.Put(LetterKey(e.owner, e.letter), Encoded(e.letter));
  return writes_->Write(db_, &batch, true);
}

absl::Status MetaStore::Remove(absl::string_view owner, absl::string_view topic,
                               const std::vector<std::pair<int, uint64_t>>& refs) {
  rocksdb::WriteBatch batch;
  for (const auto& [q, offset] : refs) batch.Delete(LetterKey(owner, topic, q, offset));
  return writes_->Write(db_, &batch, true);
}

absl::Status MetaStore::List(absl::string_view group, absl::string_view topic, size_t limit,
                             std::vector<LetterEntry>* out) {
  std::string prefix = absl::StrCat("l/", group);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix) && out->size() < limit;
       it->Next()) {
    absl::string_view rest(it->key().data() + prefix.size(), it->key().size() - prefix.size());
    // Exactly the group, or "<group>@<member>".
    if (!(absl::StartsWith(rest, Sep()) || absl::StartsWith(rest, "@"))) continue;
    LetterEntry e;
    if (absl::Status st = ParseLetter(*it, &e); !st.ok()) return st;
    if (!topic.empty() && e.letter.topic() != topic) continue;
    out->push_back(std::move(e));
  }
  return FromRocks(it->status(), "reading dead letters");
}

absl::Status MetaStore::ListOwned(absl::string_view owner, absl::string_view topic,
                                  std::vector<LetterEntry>* out) {
  std::string prefix = absl::StrCat(LetterPrefix(owner), topic, Sep());
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    LetterEntry e;
    if (absl::Status st = ParseLetter(*it, &e); !st.ok()) return st;
    out->push_back(std::move(e));
  }
  return FromRocks(it->status(), "reading dead letters");
}

absl::Status MetaStore::PutHold(absl::string_view topic, int queue, absl::string_view value) {
  rocksdb::WriteBatch batch;
  if (value.empty()) {
    batch.Delete(HoldKey(topic, queue));
  } else {
    batch.Put(HoldKey(topic, queue), rocksdb::Slice(value.data(), value.size()));
  }
  return writes_->Write(db_, &batch, true);
}

absl::StatusOr<std::vector<MetaStore::HoldRecord>> MetaStore::Holds() {
  std::vector<HoldRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("q/"); it->Valid() && it->key().starts_with("q/"); it->Next()) {
    absl::string_view key(it->key().data() + 2, it->key().size() - 2);
    size_t sep = key.find('\0');
    HoldRecord h;
    if (sep == absl::string_view::npos || !absl::SimpleAtoi(key.substr(sep + 1), &h.queue)) {
      return absl::DataLossError("a queue hold record of the meta store is corrupt");
    }
    h.topic = std::string(key.substr(0, sep));
    h.value = it->value().ToString();
    out.push_back(std::move(h));
  }
  if (absl::Status st = FromRocks(it->status(), "reading queue holds"); !st.ok()) return st;
  return out;
}

}  // namespace formica::dms
