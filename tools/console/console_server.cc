// formica-console: options, the HTTP server and the pieces every handler
// uses (console_api.h).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <sys/stat.h>
#include <chrono>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "console_api.h"
#include "formica/internal/credentials.h"
#include "google/protobuf/util/json_util.h"

namespace formica::console {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The installed pages (<prefix>/share/formica/console beside bin/), else the
// source tree's.
std::string DefaultAssets() {
  char exe[4096] = {0};
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, n);
    dir = dir.substr(0, dir.rfind('/'));
    std::string installed = dir + "/../share/formica/console";
    if (IsDirectory(installed)) return installed;
  }
  return FORMICA_CONSOLE_SOURCE_ASSETS;
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kAlreadyExists:
      return 409;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 503;
    default:
      return 500;
  }
}

}  // namespace

absl::StatusOr<ConsoleOptions> LoadConsoleOptions(const Config& config) {
  ConsoleOptions o;
  ConfigReader r(config, "console");
  o.listen = r.String("console.listen", o.listen);
  o.registry = r.String("console.registry", o.registry);
  o.dts = r.String("console.dts", "");
  o.dms = r.String("console.dms", "");
  o.token = r.String("console.token", "");
  std::string token_file = r.String("console.token_file", "");
  o.assets = r.String("console.assets", "");
  o.call_timeout =
      r.Duration("console.call_timeout", o.call_timeout, absl::Milliseconds(100), absl::Minutes(5));
  if (o.registry.empty()) r.Fail("console.registry", "is required (dsrd's address, host:port)");
  if (!token_file.empty()) {
    if (!o.token.empty()) r.Fail("console.token_file", "set both token and token_file; keep one");
    std::ifstream in(token_file);
    std::string line;
    if (!in || !std::getline(in, line) || line.empty()) {
      r.Fail("console.token_file", absl::StrCat("cannot read a token from '", token_file, "'"));
    }
    o.token = line;
  }
  if (!o.token.empty() && o.token.size() < 8) {
    r.Fail("console.token", "is shorter than 8 characters; choose a longer one");
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  if (o.assets.empty()) o.assets = DefaultAssets();
  return o;
}

Backends::Backends(const ConsoleOptions& o) : options(o) {
  auto channel = [](const std::string& a) {
    return grpc::CreateChannel(a, formica::ChannelCredentials());
  };
  flags.registry = o.registry;
  flags.dts = o.dts;
  flags.dms = o.dms;
  flags.timeout_s = std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(o.call_timeout)));
  auto to_registry = channel(o.registry);
  registry = formica::registry::v1::Registry::NewStub(to_registry);
  audits.emplace_back("dsrd", formica::audit::v1::Audit::NewStub(to_registry));
  if (!o.dts.empty()) {
    auto to_dts = channel(o.dts);
    dts = formica::dts::v1::Coordinator::NewStub(to_dts);
    audits.emplace_back("dtsd", formica::audit::v1::Audit::NewStub(to_dts));
  }
  if (!o.dms.empty()) {
    auto to_dms = channel(o.dms);
    dms = formica::dms::v1::Broker::NewStub(to_dms);
    audits.emplace_back("dmsd", formica::audit::v1::Audit::NewStub(to_dms));
  }
}

std::unique_ptr<grpc::ClientContext> Backends::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoMilliseconds(options.call_timeout));
  return ctx;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) return "null";
  return json;
}

void ReplyJson(httplib::Response& res, const std::string& json) {
  res.status = 200;
  res.set_header("Cache-Control", "no-store");
  res.set_content(json, "application/json");
}

void ReplyError(httplib::Response& res, const absl::Status& status) {
  google::protobuf::Struct body;
  (*body.mutable_fields())["error"].set_string_value(std::string(status.message()));
  (*body.mutable_fields())["code"].set_string_value(absl::StatusCodeToString(status.code()));
  res.status = HttpStatusOf(status.code());
  res.set_header("Cache-Control", "no-store");
  res.set_content(ToJson(body), "application/json");
}

std::string Param(const httplib::Request& req, const std::string& name) {
  return req.has_param(name) ? req.get_param_value(name) : "";
}

absl::Status CheckName(const std::string& what, const std::string& value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is required"));
  if (value.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is longer than 256 characters"));
  }
  for (char c : value) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
        c != ':' && c != '/' && c != '=') {
      return absl::InvalidArgumentError(absl::StrCat(what, " '", value, "' has '",
                                                     std::string(1, c),
                                                     "': use letters, digits and . _ - : / ="));
    }
  }
  return absl::OkStatus();
}

class Console::Impl {
 public:
  explicit Impl(const ConsoleOptions& o) : backends(o), audit(backends) {}
  Backends backends;
  AuditTrail audit;
  httplib::Server http;
  std::thread thread;
  int port = 0;
  bool stopped = false;
};

absl::StatusOr<std::unique_ptr<Console>> Console::Start(ConsoleOptions options) {
  size_t colon = options.listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(options.listen).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("console.listen '", options.listen,
                                                   "' is not host:port (e.g. 127.0.0.1:7400)"));
  }
  if (!IsDirectory(options.assets)) {
    return absl::InvalidArgumentError(
        absl::StrCat("console.assets '", options.assets, "' is not a directory"));
  }
  std::string host = options.listen.substr(0, colon);
  auto impl = std::make_unique<Impl>(options);
  Impl* raw = impl.get();
  raw->http.new_task_queue = [] { return new httplib::ThreadPool(4); };
  if (!raw->http.set_mount_point("/", options.assets)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot serve the pages from '", options.assets, "'"));
  }
  RegisterReads(raw->http, raw->backends, raw->audit);
  RegisterActions(raw->http, raw->backends, raw->audit);
  if (port == 0) {
    raw->port = raw->http.bind_to_any_port(host);
  } else if (raw->http.bind_to_port(host, port)) {
    raw->port = port;
  }
  if (raw->port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen, "': malformed host or address in use"));
  }
  raw->thread = std::thread([raw] { raw->http.listen_after_bind(); });
  while (!raw->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<Console>(new Console(std::move(impl)));
}

Console::Console(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Console::~Console() { Shutdown(); }
int Console::port() const { return impl_->port; }

void Console::Shutdown() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace formica::console
