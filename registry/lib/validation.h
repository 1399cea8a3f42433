// Validation of what clients send the registry (addresses follow
// formica/internal/address.h). The client library runs the
// same checks before sending, so a bad instance fails fast and identically
// on both sides. Every error is INVALID_ARGUMENT naming the field.
#pragma once

#include <cstdint>
#include <string_view>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace formica::registry::v1 {
class Instance;
}

namespace formica::registry {

struct Limits {
  int max_name_length = 256;
  int max_zone_length = 64;
  int max_weight = 10000;
  int max_tags = 32;
  int max_tag_length = 128;
  int64_t max_metadata_bytes = 4096;
  int max_config_key_length = 512;
  int64_t max_config_value_bytes = 1 << 20;
};

absl::Status ValidateServiceName(absl::string_view name, const Limits& limits);
absl::Status ValidateInstance(const v1::Instance& instance, const Limits& limits);
absl::Status ValidateConfigKey(absl::string_view key, const Limits& limits);

}  // namespace formica::registry
