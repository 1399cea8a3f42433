#include "formica/common/logging.h"

#include <spdlog/sinks/sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace formica {
namespace {

static_assert(static_cast<int>(LogLevel::kTrace) == spdlog::level::trace &&
                  static_cast<int>(LogLevel::kInfo) == spdlog::level::info &&
                  static_cast<int>(LogLevel::kCritical) == spdlog::level::critical,
              "LogLevel mirrors spdlog's levels");

constexpr char kPattern[] = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v";

// The one sink of every logger Formica installs: stderr, or the program's
// LogSink once it set one.
class SwitchableSink final : public spdlog::sinks::sink {
 public:
  void log(const spdlog::details::log_msg& msg) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!program_sink_) {
      stderr_->log(msg);
      return;
    }
    LogRecord record{static_cast<LogLevel>(msg.level),
                     absl::string_view(msg.logger_name.data(), msg.logger_name.size()),
                     absl::string_view(msg.payload.data(), msg.payload.size()),
                     absl::FromChrono(msg.time)};
    program_sink_(record);
  }
  void flush() override {
    std::lock_guard<std::mutex> lock(mu_);
    stderr_->flush();
  }
  void set_pattern(const std::string& pattern) override {
    std::lock_guard<std::mutex> lock(mu_);
    stderr_->set_pattern(pattern);
  }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    std::lock_guard<std::mutex> lock(mu_);
    stderr_->set_formatter(std::move(formatter));
  }
  void SetProgramSink(LogSink sink) {
    std::lock_guard<std::mutex> lock(mu_);
    program_sink_ = std::move(sink);
  }

 private:
  std::mutex mu_;
  std::shared_ptr<spdlog::sinks::sink> stderr_ =
      std::make_shared<spdlog::sinks::stderr_color_sink_st>();
  LogSink program_sink_;
};

// Never destroyed: a thread may log while the program exits.
const std::shared_ptr<SwitchableSink>& TheSink() {
  static const auto* sink = new std::shared_ptr<SwitchableSink>(std::make_shared<SwitchableSink>());
  return *sink;
}

void InstallDefaultLogger(const std::string& name, spdlog::level::level_enum level) {
  auto logger = std::make_shared<spdlog::logger>(name, TheSink());
  logger->set_pattern(kPattern);
  logger->set_level(level);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
}

// spdlog's own default logger writes to stdout, which belongs to the
// program: from the moment libformica is loaded its lines go to stderr.
const bool kLibraryLogsToStderr = [] {
  InstallDefaultLogger("formica", spdlog::level::info);
  return true;
}();

}  // namespace

absl::Status InitLogging(absl::string_view program, absl::string_view level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("log level '", level, "' is not one of trace, debug, info, warn, error, off"));
  }
  InstallDefaultLogger(std::string(program), parsed);
  return absl::OkStatus();
}

void SetLogSink(LogSink sink) {
  (void)kLibraryLogsToStderr;
  TheSink()->SetProgramSink(std::move(sink));
}

}  // namespace formica
