// A topic's placement over broker groups, and the names that go with it
// (formica/internal/dms_placement.h).
#include <google/protobuf/util/json_util.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.pb.h"
#include "formica/internal/dms_placement.h"
#include "formica/internal/names.h"

namespace formica::dms {
namespace {

bool GroupChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; }

}  // namespace

absl::Status ValidBrokerGroup(absl::string_view what, absl::string_view name) {
  if (name == kDefaultGroupWord) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", name, "' is reserved: it names the unnamed default broker group"));
  }
  return CheckName(NameRule{what, 63, GroupChar, "lower-case letters, digits and -"}, name);
}

std::string BrokerServiceOf(absl::string_view group) {
  if (group.empty()) return kBrokerService;
  return absl::StrCat(kBrokerService, ".", group);
}

std::string PlacementKey(absl::string_view topic) { return absl::StrCat("dms.placement.", topic); }

std::vector<std::string> Placement::Groups() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& g : groups) {
    if (seen.insert(g).second) out.push_back(g);
  }
  return out;
}

absl::StatusOr<Placement> ParsePlacement(absl::string_view json) {
  v1::Placement p;
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = false;
  if (auto st = google::protobuf::util::JsonStringToMessage(std::string(json), &p, o); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement is not valid JSON of the form "
                     "{\"queues\": N, \"groups\": [...]}: ",
                     st.message().as_string()));
  }
  if (p.queues() < 1 || p.queues() > 1024 || p.groups_size() != p.queues()) {
    return absl::InvalidArgumentError(absl::StrCat("placement names ", p.groups_size(),
                                                   " groups for ", p.queues(),
                                                   " queues; it needs one group per queue"));
  }
  Placement out;
  for (const std::string& g : p.groups()) {
    if (!g.empty()) {
      if (absl::Status st = ValidBrokerGroup("placement group", g); !st.ok()) return st;
    }
    out.groups.push_back(g);
  }
  return out;
}

std::string FormatPlacement(const Placement& placement) {
  v1::Placement p;
  p.set_queues(placement.queues());
  for (const std::string& g : placement.groups) p.add_groups(g);
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(p, &json, o);
  return json;
}

}  // namespace formica::dms
