// Opening RocksDB the one way every Formica store does, and saying what a
// rocksdb::Status means as an absl::Status. For daemons only (the stores of
// dsrd, dtsd and dmsd); link formica_daemon_support.
//
//   absl::StatusOr<std::unique_ptr<rocksdb::DB>> db = OpenRocksDb(dir, "the activity store");
//   if (!db.ok()) return db.status();
//   absl::Status st = FromRocksDb((*db)->SyncWAL(), "activity store", "syncing the log");
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rocksdb {
class DB;
class Status;
}  // namespace rocksdb

namespace formica {

// Opens (creating if needed) the RocksDB database in `directory` with the
// settings Formica's stores share: at most 64 open files, RocksDB's info
// log in LOG (the previous start's in LOG.old), where a line that cannot be
// written (a full disk) is lost alone. `what` names the store for errors
// ("the activity store").
// FAILED_PRECONDITION "cannot open <what> in '<directory>': <reason>" when
// it cannot, e.g. another process holds its lock. The caller includes
// <rocksdb/db.h> to use (and destroy) the database.
absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRocksDb(const std::string& directory,
                                                         absl::string_view what);

// OK when `s` is; otherwise INTERNAL "<store>: <what>: <RocksDB's words>",
// e.g. FromRocksDb(s, "activity store", "reading activity 42").
absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view store, absl::string_view what);

}  // namespace formica
