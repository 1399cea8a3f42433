// formica::rpc tag routes — the text that splits a service's calls among its
// providers by tag, e.g. "color=blue:90,color=green:10" (with DSR: the
// registry config entry "rpc/routes/<service>"). rpc::Client applies it;
// formicactl's traffic commands write it. One parser for both.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica::rpc {

// A share of the calls goes to the providers with tag key=value.
struct TagRoute {
  std::string key;
  std::string value;
  int percent = 0;
};

// Parses "key=value:percent,..." (spaces around entries ignored). Percents
// are 0..100 and add up to 100; "" is no route (an empty list).
// INVALID_ARGUMENT names the entry or the sum that is wrong.
absl::StatusOr<std::vector<TagRoute>> ParseTagRoutes(absl::string_view text);

// The text ParseTagRoutes reads back: "color=blue:90,color=green:10".
std::string FormatTagRoutes(const std::vector<TagRoute>& routes);

}  // namespace formica::rpc
