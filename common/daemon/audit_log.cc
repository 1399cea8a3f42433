#include "formica/internal/audit_log.h"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "formica/audit/v1/audit.grpc.pb.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formica/internal/permissions.h"

namespace formica {

class AuditLog::Impl final : public audit::v1::Audit::Service {
 public:
  Impl(std::string path, std::string daemon, int fd)
      : path_(std::move(path)), daemon_(std::move(daemon)), fd_(fd) {}
  ~Impl() override { ::close(fd_); }

  void Record(grpc::ServerContextBase* context, absl::string_view action,
              absl::string_view arguments, const absl::Status& result) {
    audit::v1::AuditEntry e;
    e.set_time_unix_ms(absl::ToUnixMillis(absl::Now()));
    e.set_daemon(daemon_);
    if (context != nullptr) {
      e.set_identity(PeerIdentity(*context->auth_context()));
      e.set_peer(context->peer());
    }
    e.set_action(std::string(action));
    e.set_arguments(std::string(arguments));
    e.set_result(result.ok() ? "OK" : result.ToString());
    std::string line;
    google::protobuf::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    if (!google::protobuf::util::MessageToJsonString(e, &line, o).ok()) return;
    line.push_back('\n');
    absl::MutexLock lock(&mu_);
    // After a failed append the file may end in part of a line: start anew.
    if (torn_) line.insert(line.begin(), '\n');
    torn_ = ::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size());
    if (torn_ || ::fdatasync(fd_) != 0) {
      spdlog::error("audit: cannot append to {}: {}; the act was: {}", path_, std::strerror(errno),
                    line);
    }
  }

  grpc::Status List(grpc::ServerContext* context, const audit::v1::ListAuditRequest* req,
                    audit::v1::ListAuditResponse* resp) override {
    // The trail is an operator's read: `operate` on this daemon's resource.
    const char* resource = daemon_ == "dsrd" ? "registry" : daemon_ == "dtsd" ? "dts" : "dms";
    if (absl::Status st = CheckCaller(context, "operate", resource); !st.ok()) {
      return ToGrpcStatus(st);
    }
    const size_t limit = req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100;
    std::deque<audit::v1::AuditEntry> newest;
    // Read without the lock, so a long listing never holds up an act: each
    // entry is one O_APPEND write, and a line still being written (or torn)
    // does not parse and is skipped.
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      audit::v1::AuditEntry e;
      if (!google::protobuf::util::JsonStringToMessage(line, &e).ok()) continue;  // torn
      if (e.time_unix_ms() < req->since_unix_ms()) continue;
      newest.push_back(std::move(e));
      if (newest.size() > limit) newest.pop_front();
    }
    for (auto& e : newest) *resp->add_entries() = std::move(e);
    return grpc::Status::OK;
  }

 private:
  const std::string path_;
  const std::string daemon_;
  absl::Mutex mu_;
  const int fd_;
  bool torn_ ABSL_GUARDED_BY(mu_) = false;  // the last append failed part-way
};

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path,
                                                         std::string daemon) {
  bool existed = ::access(path.c_str(), F_OK) == 0;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("audit log ", path, " cannot be opened: ", std::strerror(errno)));
  }
  if (!existed) {
    // A new file's name is made durable too, or a crash could take it and
    // its synced entries away.
    std::string dir = path.substr(0, path.find_last_of('/') + 1);
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  // A line torn by a crash is ended, so the next entry starts a line of its own.
  off_t end = ::lseek(fd, 0, SEEK_END);
  char last = '\n';
  if (end > 0 && ::pread(fd, &last, 1, end - 1) == 1 && last != '\n') {
    if (::write(fd, "\n", 1) != 1 || ::fdatasync(fd) != 0) {
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("audit log ", path, " cannot be written"));
    }
  }
  return std::unique_ptr<AuditLog>(
      new AuditLog(std::make_unique<Impl>(path, std::move(daemon), fd)));
}

AuditLog::AuditLog(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditLog::~AuditLog() = default;

void AuditLog::Record(grpc::ServerContextBase* context, absl::string_view action,
                      absl::string_view arguments, const absl::Status& result) {
  impl_->Record(context, action, arguments, result);
}

grpc::Service* AuditLog::service() { return impl_.get(); }

namespace {
std::atomic<AuditLog*> process_log{nullptr};
}  // namespace

void UseAuditLog(AuditLog* log) { process_log.store(log); }

void RecordAct(grpc::ServerContextBase* context, absl::string_view action,
               absl::string_view arguments, const absl::Status& result) {
  if (AuditLog* log = process_log.load()) log->Record(context, action, arguments, result);
}

}  // namespace formica
