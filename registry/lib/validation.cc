#include "validation.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "formica/internal/address.h"
#include "formica/internal/names.h"
#include "formica/registry/v1/registry.pb.h"

namespace formica::registry {
namespace {

bool NameChar(char c) { return IsPlainNameChar(c) || c == ':' || c == '/'; }

absl::Status CheckName(absl::string_view field, absl::string_view value, int max_length) {
  return formica::CheckName(
      NameRule{field, static_cast<size_t>(max_length), NameChar, "letters, digits and . _ - : /"},
      value);
}

}  // namespace

absl::Status ValidateServiceName(absl::string_view name, const Limits& limits) {
  return CheckName("service name", name, limits.max_name_length);
}

absl::Status ValidateInstance(const v1::Instance& instance, const Limits& limits) {
  if (absl::Status st = ValidateServiceName(instance.service(), limits); !st.ok()) {
    return st;
  }
  if (absl::Status st = ValidateAddress(instance.address()); !st.ok()) {
    return st;
  }
  if (!instance.zone().empty()) {
    if (absl::Status st = CheckName("zone", instance.zone(), limits.max_zone_length); !st.ok()) {
      return st;
    }
  }
  if (instance.weight() < 0 || instance.weight() > limits.max_weight) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", instance.weight(), " is out of range 0..", limits.max_weight));
  }
  if (instance.tags_size() > limits.max_tags) {
    return absl::InvalidArgumentError(absl::StrCat("tags has ", instance.tags_size(),
                                                   " entries; the limit is ", limits.max_tags));
  }
  for (const auto& [key, value] : instance.tags()) {
    if (absl::Status st = CheckName("tag key", key, limits.max_tag_length); !st.ok()) {
      return st;
    }
    if (static_cast<int>(value.size()) > limits.max_tag_length) {
      return absl::InvalidArgumentError(absl::StrCat("tag '", key, "' value is ", value.size(),
                                                     " characters long; the limit is ",
                                                     limits.max_tag_length));
    }
  }
  int64_t metadata_bytes = 0;
  for (const auto& [key, value] : instance.metadata()) {
    metadata_bytes += static_cast<int64_t>(key.size() + value.size());
  }
  if (metadata_bytes > limits.max_metadata_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata is ", metadata_bytes, " bytes; the limit is ", limits.max_metadata_bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateConfigKey(absl::string_view key, const Limits& limits) {
  return CheckName("config key", key, limits.max_config_key_length);
}

}  // namespace formica::registry
