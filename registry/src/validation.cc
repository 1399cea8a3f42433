#include "validation.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "formica/common/names.h"
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

absl::Status ValidateAddress(absl::string_view address) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "' is malformed: ", why, " (want host:port)"));
  };
  if (address.empty()) {
    return absl::InvalidArgumentError("address is empty (want host:port)");
  }
  if (address.size() > 300) {
    return bad("too long");
  }
  absl::string_view host;
  absl::string_view port;
  if (address.front() == '[') {
    size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return bad("an IPv6 address needs the form [addr]:port");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    for (char c : host) {
      if (!absl::ascii_isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') {
        return bad("not an IPv6 address inside the brackets");
      }
    }
  } else {
    size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) {
      return bad("no port");
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    for (char c : host) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
        return bad("the host has characters a host name cannot have");
      }
    }
  }
  if (host.empty()) {
    return bad("no host");
  }
  int port_number = 0;
  bool digits =
      !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) {
        return absl::ascii_isdigit(static_cast<unsigned char>(c));
      });
  if (!digits || !absl::SimpleAtoi(port, &port_number) || port_number < 1 || port_number > 65535) {
    return bad("the port must be a number from 1 to 65535");
  }
  return absl::OkStatus();
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
