#include "formica/internal/names.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace formica {

bool IsPlainNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

absl::Status CheckName(const NameRule& rule, absl::string_view name) {
  if (name.empty()) {
    if (!rule.required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(rule.what, " is empty"));
  }
  if (name.size() > rule.max_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        rule.what, " is ", name.size(), " characters long; the limit is ", rule.max_length));
  }
  for (char c : name) {
    if (!rule.allowed(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat(rule.what, " '", absl::CHexEscape(name), "' has character '",
                       absl::CHexEscape(std::string(1, c)), "'; allowed are ", rule.alphabet));
    }
  }
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(rule.what, " '", name, "' is not allowed: '", part,
                       "' means the current or parent directory in the paths names become"));
    }
  }
  return absl::OkStatus();
}

}  // namespace formica
