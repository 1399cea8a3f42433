#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_store.h"

namespace formica::dts {
namespace {

constexpr char kActivityPrefix[] = "a/";
constexpr char kEpochKey[] = "m/epoch";

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("activity store: ", std::string(what), ": ", s.ToString()));
}

class RocksDbActivityStore : public ActivityStore {
 public:
  explicit RocksDbActivityStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {
    sync_.sync = true;
  }

  absl::Status Put(const v1::Activity& activity, bool sync) override {
    std::string value;
    if (!activity.SerializeToString(&value)) {
      return absl::InternalError("activity store: cannot serialize activity " + activity.id());
    }
    if (sync) syncs_.fetch_add(1, std::memory_order_relaxed);
    return FromRocks(db_->Put(sync ? sync_ : async_, Key(activity.id()), value),
                     "writing activity " + activity.id());
  }

  absl::Status Sync() override {
    syncs_.fetch_add(1, std::memory_order_relaxed);
    return FromRocks(db_->SyncWAL(), "syncing the log");
  }

  absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) override {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Key(id), &value);
    if (s.IsNotFound()) return std::optional<v1::Activity>();
    if (!s.ok()) return FromRocks(s, "reading activity " + id);
    v1::Activity a;
    if (!a.ParseFromString(value)) {
      return absl::DataLossError("activity store: activity " + id + " is corrupt");
    }
    return std::optional<v1::Activity>(std::move(a));
  }

  absl::Status Scan(const std::function<bool(const v1::Activity&)>& visit) override {
    return Walk(false, visit);
  }

  absl::Status ScanNewestFirst(const std::function<bool(const v1::Activity&)>& visit) override {
    return Walk(true, visit);
  }

  absl::Status Delete(const std::string& id) override {
    return FromRocks(db_->Delete(async_, Key(id)), "deleting activity " + id);
  }

  absl::StatusOr<uint64_t> NextBootEpoch() override {
    absl::MutexLock lock(&mu_);
    std::string raw;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kEpochKey, &raw);
    if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading the boot epoch");
    uint64_t last = 0;
    if (s.ok() && raw.size() == 8) {
      for (int i = 0; i < 8; ++i) last = (last << 8) | static_cast<uint8_t>(raw[i]);
    }
    // At least the wall-clock second: ids stay unique even if the store is
    // wiped and started afresh.
    uint64_t epoch =
        std::max<uint64_t>(last + 1, static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now())));
    std::string out(8, '\0');
    for (int i = 7, shift = 0; i >= 0; --i, shift += 8) out[i] = static_cast<char>(epoch >> shift);
    if (absl::Status st = FromRocks(db_->Put(sync_, kEpochKey, out), "writing the boot epoch");
        !st.ok()) {
      return st;
    }
    return epoch;
  }

  uint64_t syncs() const override { return syncs_.load(); }

 private:
  static std::string Key(const std::string& id) { return absl::StrCat(kActivityPrefix, id); }

  // Every activity record in key order (id order, which is creation order),
  // or backwards.
  absl::Status Walk(bool backwards, const std::function<bool(const v1::Activity&)>& visit) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    if (backwards) {
      it->SeekForPrev("a0");  // keys are "a/<id>"; "a0" is the first key past them
    } else {
      it->Seek(kActivityPrefix);
    }
    for (; it->Valid() && it->key().starts_with(kActivityPrefix);
         backwards ? it->Prev() : it->Next()) {
      v1::Activity a;
      if (!a.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat("activity store: record ", it->key().ToString(), " is corrupt"));
      }
      if (!visit(a)) break;
    }
    return FromRocks(it->status(), "scanning activities");
  }

  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::WriteOptions sync_;
  rocksdb::WriteOptions async_;
  absl::Mutex mu_;
  std::atomic<uint64_t> syncs_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<ActivityStore>> OpenRocksDbActivityStore(
    const std::string& directory) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 64;
  options.keep_log_file_num = 4;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, directory, &raw);
  if (!s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the activity store in '", directory, "': ", s.ToString()));
  }
  return std::unique_ptr<ActivityStore>(
      new RocksDbActivityStore(std::unique_ptr<rocksdb::DB>(raw)));
}

}  // namespace formica::dts
