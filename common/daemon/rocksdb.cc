#include "formica/internal/rocksdb.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include "absl/strings/str_cat.h"

namespace formica {

absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRocksDb(const std::string& directory,
                                                         absl::string_view what) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 64;
  options.keep_log_file_num = 4;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, directory, &raw);
  if (!s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", what, " in '", directory, "': ", s.ToString()));
  }
  return std::unique_ptr<rocksdb::DB>(raw);
}

absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view store,
                         absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(store, ": ", what, ": ", s.ToString()));
}

}  // namespace formica
