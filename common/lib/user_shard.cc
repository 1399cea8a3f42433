#include "formica/common/user_shard.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace formica {

absl::StatusOr<int> UserShard(absl::string_view user_id) {
  absl::string_view id = absl::StripAsciiWhitespace(user_id);
  if (id.size() < 2 || !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 1])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(id[id.size() - 2]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("user id '", user_id, "' does not end in two digits"));
  }
  return (id[id.size() - 2] - '0') * 10 + (id[id.size() - 1] - '0');
}

}  // namespace formica
