#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <cstring>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "formica/internal/rocksdb.h"
#include "registry_store.h"

namespace formica::registry {
namespace {

constexpr absl::string_view kConfigPrefix = "c/";
constexpr absl::string_view kRevisionKey = "m/revision";
constexpr absl::string_view kEpochKey = "m/epoch";

std::string EncodeU64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  }
  return out;
}

uint64_t DecodeU64(absl::string_view s) {
  uint64_t v = 0;
  for (int i = 0; i < 8 && i < static_cast<int>(s.size()); ++i) {
    v |= static_cast<uint64_t>(static_cast<unsigned char>(s[i])) << (8 * i);
  }
  return v;
}

// Value layout: 1 byte (1 = live, 0 = tombstone), 8 bytes version, payload.
std::string EncodeEntry(bool exists, uint64_t version, absl::string_view value) {
  std::string out;
  out.reserve(9 + value.size());
  out.push_back(exists ? 1 : 0);
  out += EncodeU64(version);
  out.append(value.data(), value.size());
  return out;
}

StoredConfig DecodeEntry(absl::string_view key, absl::string_view raw) {
  StoredConfig e;
  e.key = std::string(key);
  if (raw.size() < 9) {
    return e;
  }
  e.exists = raw[0] == 1;
  e.version = DecodeU64(raw.substr(1, 8));
  e.value = std::string(raw.substr(9));
  return e;
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  return FromRocksDb(s, "registry store", what);
}

class RocksDbRegistryStore : public RegistryStore {
 public:
  explicit RocksDbRegistryStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {
    sync_.sync = true;
  }

  absl::Status LoadRevision() {
    absl::MutexLock lock(&mu_);
    std::string raw;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), std::string(kRevisionKey), &raw);
    if (s.IsNotFound()) {
      revision_ = 0;
      return absl::OkStatus();
    }
    if (!s.ok()) {
      return FromRocks(s, "reading the revision");
    }
    revision_ = DecodeU64(raw);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> NextBootEpoch() override {
    absl::MutexLock lock(&mu_);
    std::string raw;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), std::string(kEpochKey), &raw);
    if (!s.ok() && !s.IsNotFound()) {
      return FromRocks(s, "reading the boot epoch");
    }
    // At least the wall-clock second, so a store wiped and started afresh
    // still counts up from where the old one was.
    uint64_t epoch = std::max<uint64_t>((s.ok() ? DecodeU64(raw) : 0) + 1,
                                        static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now())));
    absl::Status st = FromRocks(db_->Put(sync_, std::string(kEpochKey), EncodeU64(epoch)),
                                "writing the boot epoch");
    if (!st.ok()) {
      return st;
    }
    return epoch;
  }

  absl::StatusOr<StoredConfig> GetConfig(absl::string_view key) override {
    std::string raw;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), absl::StrCat(kConfigPrefix, key), &raw);
    if (s.IsNotFound()) {
      StoredConfig e;
      e.key = std::string(key);
      return e;
    }
    if (!s.ok()) {
      return FromRocks(s, "reading a config entry");
    }
    return DecodeEntry(key, raw);
  }

  absl::StatusOr<std::vector<StoredConfig>> ListConfig(absl::string_view prefix) override {
    std::vector<StoredConfig> out;
    std::string start = absl::StrCat(kConfigPrefix, prefix);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(start); it->Valid() && it->key().starts_with(start); it->Next()) {
      absl::string_view key(it->key().data() + kConfigPrefix.size(),
                            it->key().size() - kConfigPrefix.size());
      StoredConfig e = DecodeEntry(key, absl::string_view(it->value().data(), it->value().size()));
      if (e.exists) {
        out.push_back(std::move(e));
      }
    }
    if (!it->status().ok()) {
      return FromRocks(it->status(), "listing config entries");
    }
    return out;
  }

  absl::StatusOr<StoredConfig> PutConfig(absl::string_view key, absl::string_view value,
                                         std::optional<uint64_t> expected_version) override {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<StoredConfig> current = GetConfig(key);
    if (!current.ok()) {
      return current.status();
    }
    if (expected_version.has_value()) {
      uint64_t have = current->exists ? current->version : 0;
      if (have != *expected_version) {
        return absl::FailedPreconditionError(absl::StrCat(
            "config key '", key, "' is at version ", have, " (0 = absent), not the expected ",
            *expected_version, "; read it again and retry"));
      }
    }
    return WriteLocked(key, true, value);
  }

  absl::StatusOr<StoredConfig> DeleteConfig(absl::string_view key,
                                            std::optional<uint64_t> expected_version) override {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<StoredConfig> current = GetConfig(key);
    if (!current.ok()) {
      return current.status();
    }
    if (!current->exists) {
      return absl::NotFoundError(absl::StrCat("config key '", key, "' does not exist"));
    }
    if (expected_version.has_value() && current->version != *expected_version) {
      return absl::FailedPreconditionError(
          absl::StrCat("config key '", key, "' is at version ", current->version,
                       ", not the expected ", *expected_version, "; read it again and retry"));
    }
    return WriteLocked(key, false, "");
  }

 private:
  absl::StatusOr<StoredConfig> WriteLocked(absl::string_view key, bool exists,
                                           absl::string_view value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t revision = revision_ + 1;
    rocksdb::WriteBatch batch;
    batch.Put(absl::StrCat(kConfigPrefix, key), EncodeEntry(exists, revision, value));
    batch.Put(std::string(kRevisionKey), EncodeU64(revision));
    absl::Status st = FromRocks(db_->Write(sync_, &batch), "writing a config entry");
    if (!st.ok()) {
      return st;
    }
    revision_ = revision;
    StoredConfig e;
    e.key = std::string(key);
    e.value = std::string(value);
    e.version = revision;
    e.exists = exists;
    return e;
  }

  absl::Mutex mu_;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions sync_;
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RegistryStore>> OpenRocksDbRegistryStore(
    const std::string& directory) {
  absl::StatusOr<std::unique_ptr<rocksdb::DB>> db = OpenRocksDb(directory, "the registry store");
  if (!db.ok()) return db.status();
  auto store = std::make_unique<RocksDbRegistryStore>(*std::move(db));
  absl::Status st = store->LoadRevision();
  if (!st.ok()) {
    return st;
  }
  return std::unique_ptr<RegistryStore>(std::move(store));
}

}  // namespace formica::registry
