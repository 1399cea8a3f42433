// Logging: Formica's daemons and libformica log through spdlog's default
// logger, one line each: "2026-11-25T12:00:00.123 info [dsrd] message".
//
// A program that links libformica gets the library's lines on stderr, at
// level info, without calling anything here; its stdout is left to it.
// InitLogging names the lines and sets the level; SetLogSink sends them to
// the program's own logging instead of stderr.
#pragma once

#include <functional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica {

// Sets the default logger's name and level ("trace", "debug", "info",
// "warn", "error", "off"); lines go to the sink SetLogSink set, else stderr.
// INVALID_ARGUMENT names an unknown level.
absl::Status InitLogging(absl::string_view program, absl::string_view level);

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kCritical };

// One log line as the library produced it, before formatting.
struct LogRecord {
  LogLevel level;
  absl::string_view logger;   // the name InitLogging gave, "formica" before that
  absl::string_view message;  // without time, level or name
  absl::Time time;
};

// Receives every line at or above the level set by InitLogging (default
// info), from any thread, one call at a time; it must not log through
// Formica itself.
using LogSink = std::function<void(const LogRecord& record)>;

// Sends log lines to `sink` from now on instead of stderr; an empty sink
// sends them to stderr again. Keeps the logger's name and level.
void SetLogSink(LogSink sink);

}  // namespace formica
