// Keys (every record a serialized proto but the metadata):
//   a/<id>                 the activity's own fields (v1::Activity, no actions)
//   x/<id>/<index, 8 hex>  action <index> as enlisted (v1::Action, payload included)
//   x/<id>/<index>/o       its outcome, once the activity is decided (v1::Action
//                          with only state, attempts and last_error)
//   m/epoch                the last boot epoch (8 bytes, big-endian)
//   m/format               "2": the layout above. Stores without it kept each
//                          activity whole in a/<id> and are converted on open.
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_store.h"
#include "formica/internal/rocksdb.h"

namespace formica::dts {
namespace {

constexpr char kActivityPrefix[] = "a/";
constexpr char kActivityEnd[] = "a0";  // the first key past every "a/..." key
constexpr char kActionPrefix[] = "x/";
constexpr char kOutcomeSuffix[] = "/o";
constexpr char kEpochKey[] = "m/epoch";
constexpr char kFormatKey[] = "m/format";
constexpr char kFormat[] = "2";

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  return FromRocksDb(s, "activity store", what);
}

std::string ActivityKey(const std::string& id) { return absl::StrCat(kActivityPrefix, id); }
std::string ActionsPrefix(const std::string& id) { return absl::StrCat(kActionPrefix, id, "/"); }
std::string ActionKey(const std::string& id, int index) {
  return absl::StrFormat("%s%s/%08x", kActionPrefix, id, index);
}

// Every field of the activity but its actions.
v1::Activity OwnFields(const v1::Activity& a) {
  v1::Activity own;
  own.set_id(a.id());
  own.set_name(a.name());
  own.set_initiator(a.initiator());
  own.set_state(a.state());
  own.set_begun_unix_ms(a.begun_unix_ms());
  own.set_deadline_unix_ms(a.deadline_unix_ms());
  own.set_decided_unix_ms(a.decided_unix_ms());
  own.set_finished_unix_ms(a.finished_unix_ms());
  own.set_reason(a.reason());
  return own;
}

class RocksDbActivityStore : public ActivityStore {
 public:
  explicit RocksDbActivityStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {
    sync_.sync = true;
  }

  absl::Status Put(const v1::Activity& activity, bool sync) override {
    return PutWithActions(activity, activity.actions_size(), sync);
  }

  absl::Status PutWithActions(const v1::Activity& activity, int first_new, bool sync) override {
    rocksdb::WriteBatch batch;
    for (int i = first_new; i < activity.actions_size(); ++i) {
      if (absl::Status st = Add(batch, ActionKey(activity.id(), i), activity.actions(i));
          !st.ok()) {
        return st;
      }
    }
    if (absl::Status st = Add(batch, ActivityKey(activity.id()), OwnFields(activity)); !st.ok()) {
      return st;
    }
    for (int i = 0; i < activity.actions_size(); ++i) {
      const v1::Action& x = activity.actions(i);
      v1::Action outcome;
      outcome.set_state(x.state());
      outcome.set_attempts(x.attempts());
      outcome.set_last_error(x.last_error());
      if (absl::Status st =
              Add(batch, absl::StrCat(ActionKey(activity.id(), i), kOutcomeSuffix), outcome);
          !st.ok()) {
        return st;
      }
    }
    return Write(batch, sync, "writing activity " + activity.id());
  }

  absl::Status PutAction(const std::string& id, int index, const v1::Action& action,
                         bool sync) override {
    rocksdb::WriteBatch batch;
    if (absl::Status st = Add(batch, ActionKey(id, index), action); !st.ok()) return st;
    return Write(batch, sync, absl::StrCat("writing action ", index, " of activity ", id));
  }

  absl::Status Sync() override {
    syncs_.fetch_add(1, std::memory_order_relaxed);
    return FromRocks(db_->SyncWAL(), "syncing the log");
  }

  absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) override {
    rocksdb::ManagedSnapshot snapshot(db_.get());
    rocksdb::ReadOptions read;
    read.snapshot = snapshot.snapshot();
    std::string value;
    rocksdb::Status s = db_->Get(read, ActivityKey(id), &value);
    if (s.IsNotFound()) return std::optional<v1::Activity>();
    if (!s.ok()) return FromRocks(s, "reading activity " + id);
    v1::Activity a;
    if (!a.ParseFromString(value) || a.actions_size() > 0) {
      return absl::DataLossError(absl::StrCat("activity store: record ", ActivityKey(id),
                                              " is corrupt; restore the data directory from a "
                                              "backup or remove the record"));
    }
    const std::string prefix = ActionsPrefix(id);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      bool outcome = it->key().ends_with(kOutcomeSuffix);
      // Keys sort each action just before its outcome, in index order.
      std::string expected = outcome
                                 ? absl::StrCat(ActionKey(id, a.actions_size() - 1), kOutcomeSuffix)
                                 : ActionKey(id, a.actions_size());
      v1::Action x;
      if (it->key() != expected ||
          !x.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(absl::StrCat("activity store: record ", it->key().ToString(),
                                                " is corrupt or out of sequence (expected ",
                                                expected, ")"));
      }
      if (outcome) {
        v1::Action* last = a.mutable_actions(a.actions_size() - 1);
        last->set_state(x.state());
        last->set_attempts(x.attempts());
        last->set_last_error(x.last_error());
      } else {
        *a.add_actions() = std::move(x);
      }
    }
    if (absl::Status st = FromRocks(it->status(), "reading the actions of activity " + id);
        !st.ok()) {
      return st;
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
    rocksdb::WriteBatch batch;
    batch.Delete(ActivityKey(id));
    const std::string prefix = ActionsPrefix(id);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      batch.Delete(it->key());
    }
    if (absl::Status st = FromRocks(it->status(), "listing the actions of activity " + id);
        !st.ok()) {
      return st;
    }
    return Write(batch, false, "deleting activity " + id);
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
  uint64_t written_bytes() const override { return written_bytes_.load(); }

  // Converts activities kept whole in one record (a store written before
  // m/format) to a record of their own fields and one per action, each
  // activity in one atomic write, then records the format, synced. A crash
  // midway leaves converted and whole records, and the next open goes on.
  absl::Status ConvertWholeRecords(const std::string& directory) {
    std::string format;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kFormatKey, &format);
    if (s.ok()) {
      if (format == kFormat) return absl::OkStatus();
      return absl::FailedPreconditionError(
          absl::StrCat("the activity store in '", directory, "' has format '", format,
                       "', which this dtsd does not know (written by a newer dtsd?)"));
    }
    if (!s.IsNotFound()) return FromRocks(s, "reading the store's format");
    int converted = 0;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kActivityPrefix); it->Valid() && it->key().starts_with(kActivityPrefix);
         it->Next()) {
      v1::Activity a;
      if (!a.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(absl::StrCat("activity store: record ", it->key().ToString(),
                                                " is corrupt; restore the data directory from "
                                                "a backup or remove the record"));
      }
      if (a.actions_size() == 0) continue;
      rocksdb::WriteBatch batch;
      absl::Status st = Add(batch, ActivityKey(a.id()), OwnFields(a));
      for (int i = 0; st.ok() && i < a.actions_size(); ++i) {
        st = Add(batch, ActionKey(a.id(), i), a.actions(i));
      }
      if (st.ok()) st = Write(batch, false, "converting activity " + a.id());
      if (!st.ok()) return st;
      ++converted;
    }
    if (absl::Status st = FromRocks(it->status(), "scanning activities to convert"); !st.ok()) {
      return st;
    }
    if (absl::Status st = FromRocks(db_->Put(sync_, kFormatKey, kFormat), "writing the format");
        !st.ok()) {
      return st;
    }
    if (converted > 0) {
      SPDLOG_INFO("activity store: converted {} activities to a record per action", converted);
    }
    return absl::OkStatus();
  }

 private:
  static absl::Status Add(rocksdb::WriteBatch& batch, const std::string& key,
                          const google::protobuf::Message& record) {
    std::string value;
    if (!record.SerializeToString(&value)) {
      return absl::InternalError("activity store: cannot serialize " + key);
    }
    return FromRocks(batch.Put(key, value), "adding " + key);
  }

  absl::Status Write(rocksdb::WriteBatch& batch, bool sync, const std::string& what) {
    if (sync) syncs_.fetch_add(1, std::memory_order_relaxed);
    written_bytes_.fetch_add(batch.GetDataSize(), std::memory_order_relaxed);
    return FromRocks(db_->Write(sync ? sync_ : async_, &batch), what);
  }

  // Every activity's own record in key order (id order, which is creation
  // order), or backwards.
  absl::Status Walk(bool backwards, const std::function<bool(const v1::Activity&)>& visit) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    if (backwards) {
      it->SeekForPrev(kActivityEnd);
    } else {
      it->Seek(kActivityPrefix);
    }
    for (; it->Valid() && it->key().starts_with(kActivityPrefix);
         backwards ? it->Prev() : it->Next()) {
      v1::Activity a;
      if (!a.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(absl::StrCat("activity store: record ", it->key().ToString(),
                                                " is corrupt; restore the data directory from "
                                                "a backup or remove the record"));
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
  std::atomic<uint64_t> written_bytes_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<ActivityStore>> OpenRocksDbActivityStore(
    const std::string& directory) {
  absl::StatusOr<std::unique_ptr<rocksdb::DB>> db = OpenRocksDb(directory, "the activity store");
  if (!db.ok()) return db.status();
  auto store = std::make_unique<RocksDbActivityStore>(*std::move(db));
  if (absl::Status st = store->ConvertWholeRecords(directory); !st.ok()) return st;
  return std::unique_ptr<ActivityStore>(std::move(store));
}

}  // namespace formica::dts
