// Logging setup: every Formica process logs through spdlog to stderr with one
// line format: "2026-11-25T12:00:00.123 info [dsrd] message".
#pragma once

#include <string_view>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace formica {

// Sets the default logger's name and level ("trace", "debug", "info",
// "warn", "error", "off"). INVALID_ARGUMENT names an unknown level.
absl::Status InitLogging(absl::string_view program, absl::string_view level);

}  // namespace formica
