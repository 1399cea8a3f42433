#include "formica/internal/rocksdb.h"

#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace formica {
namespace {

// RocksDB's info log (LOG in the store's directory; the previous start's
// is LOG.old). A line that cannot be written (a full disk) is lost alone:
// RocksDB's own logger refuses every line after one failed write, and in a
// build with assertions aborts the process at the next, so a disk that was
// full once would bring the daemon down later.
class InfoLog : public rocksdb::Logger {
 public:
  explicit InfoLog(int fd) : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL), fd_(fd) {}
  ~InfoLog() override { ::close(fd_); }

  static std::shared_ptr<rocksdb::Logger> Open(const std::string& directory) {
    std::error_code ec;
    std::filesystem::create_directories(directory, ec);
    std::filesystem::rename(directory + "/LOG", directory + "/LOG.old", ec);
    int fd = ::open((directory + "/LOG").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return nullptr;  // RocksDB's own, then
    return std::make_shared<InfoLog>(fd);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    // Whole messages: RocksDB's statistics dumps run to several KiB.
    char text[2048];
    va_list again;
    va_copy(again, ap);
    int n = std::vsnprintf(text, sizeof text, format, ap);
    std::string message;
    if (n >= 0 && static_cast<size_t>(n) >= sizeof text) {
      message.resize(static_cast<size_t>(n) + 1);
      n = std::vsnprintf(message.data(), message.size(), format, again);
      message.resize(n < 0 ? 0 : static_cast<size_t>(n));
    } else if (n >= 0) {
      message.assign(text, static_cast<size_t>(n));
    }
    va_end(again);
    if (n < 0) return;
    std::string line =
        absl::StrCat(absl::FormatTime("%Y/%m/%d-%H:%M:%E6S ", absl::Now(), absl::LocalTimeZone()),
                     message, "\n");
    // One write per line (O_APPEND): whole lines from any thread.
    if (::write(fd_, line.data(), line.size()) < 0) return;
  }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRocksDb(const std::string& directory,
                                                         absl::string_view what) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 64;
  options.info_log = InfoLog::Open(directory);
  options.info_log_level = rocksdb::InfoLogLevel::INFO_LEVEL;
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
