#include "formica/dds/value.h"

#include "absl/strings/str_cat.h"

namespace formica::dds {

std::string ToString(const Value& v) {
  switch (v.index()) {
    case 0:
      return "NULL";
    case 1:
      return std::to_string(std::get<int64_t>(v));
    case 2:
      return absl::StrCat(std::get<double>(v));
    default:
      return std::get<std::string>(v);
  }
}

}  // namespace formica::dds
