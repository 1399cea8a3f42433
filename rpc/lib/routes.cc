#include "formica/rpc/routes.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace formica::rpc {

absl::StatusOr<std::vector<TagRoute>> ParseTagRoutes(absl::string_view text) {
  std::vector<TagRoute> routes;
  int total = 0;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    size_t eq = part.find('=');
    size_t colon = part.rfind(':');
    TagRoute r;
    if (eq == absl::string_view::npos || colon == absl::string_view::npos || colon < eq ||
        !absl::SimpleAtoi(part.substr(colon + 1), &r.percent) || r.percent < 0 || r.percent > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("route '", part, "' is not key=value:percent (e.g. color=blue:90)"));
    }
    r.key = std::string(part.substr(0, eq));
    r.value = std::string(part.substr(eq + 1, colon - eq - 1));
    total += r.percent;
    routes.push_back(std::move(r));
  }
  if (!routes.empty() && total != 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("route percents add up to ", total, ", not 100: '", text, "'"));
  }
  return routes;
}

std::string FormatTagRoutes(const std::vector<TagRoute>& routes) {
  return absl::StrJoin(routes, ",", [](std::string* out, const TagRoute& r) {
    absl::StrAppend(out, r.key, "=", r.value, ":", r.percent);
  });
}

}  // namespace formica::rpc
