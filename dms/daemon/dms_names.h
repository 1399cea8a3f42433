// The name rule of dmsd's topics, groups, producer groups and consumer ids
// (docs/dms.md).
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "formica/internal/names.h"

namespace formica::dms {

// INVALID_ARGUMENT naming `what` unless `name` is 1 to 128 plain name
// characters.
inline absl::Status ValidName(absl::string_view what, absl::string_view name) {
  return CheckName(NameRule{what, 128, IsPlainNameChar, kPlainNameChars}, name);
}

}  // namespace formica::dms
