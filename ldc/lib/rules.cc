// LDC rule sets: validation, the YAML form, shard ranges.
#include "formica/ldc/rules.h"

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "formica/common/config.h"
#include "formica/internal/names.h"

namespace formica::ldc {

absl::string_view ZoneKindName(ZoneKind kind) {
  switch (kind) {
    case ZoneKind::kRZone:
      return "rzone";
    case ZoneKind::kGZone:
      return "gzone";
    case ZoneKind::kCZone:
      return "czone";
  }
  return "rzone";
}

const Zone* RuleSet::FindZone(absl::string_view name) const {
  for (const Zone& z : zones) {
    if (z.name == name) return &z;
  }
  return nullptr;
}

const Zone* RuleSet::Owner(int shard) const {
  if (shard < 0 || shard >= kUserShards) return nullptr;
  return FindZone(owner[shard]);
}

const Zone* RuleSet::GlobalZone() const {
  for (const Zone& z : zones) {
    if (z.kind == ZoneKind::kGZone) return &z;
  }
  return nullptr;
}

std::set<int> RuleSet::ShardsOf(absl::string_view zone) const {
  std::set<int> out;
  for (int s = 0; s < kUserShards; ++s) {
    if (owner[s] == zone) out.insert(s);
  }
  return out;
}

bool RuleSet::operator==(const RuleSet& other) const {
  if (zones.size() != other.zones.size() || owner != other.owner || fenced != other.fenced ||
      global_services != other.global_services) {
    return false;
  }
  for (size_t i = 0; i < zones.size(); ++i) {
    const Zone& a = zones[i];
    const Zone& b = other.zones[i];
    if (a.name != b.name || a.kind != b.kind || a.data_center != b.data_center ||
        a.city != b.city) {
      return false;
    }
  }
  return true;
}

absl::Status Validate(const RuleSet& rules) {
  constexpr NameRule kZoneName{"zone name", 64, IsPlainNameChar, kPlainNameChars};
  std::set<std::string> names;
  std::vector<std::string> gzones;
  for (const Zone& z : rules.zones) {
    if (absl::Status st = CheckName(kZoneName, z.name); !st.ok()) return st;
    if (!names.insert(z.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("zone '", z.name, "' is listed twice"));
    }
    if (z.kind == ZoneKind::kGZone) gzones.push_back(z.name);
    if (z.kind == ZoneKind::kCZone && z.city.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("czone '", z.name, "' has no city: a CZone is the read copy of one city"));
    }
  }
  if (gzones.size() != 1) {
    return absl::InvalidArgumentError(
        gzones.empty() ? std::string("no gzone: exactly one zone must hold the global data")
                       : absl::StrCat("gzones ", absl::StrJoin(gzones, " and "),
                                      ": exactly one zone may hold the global data"));
  }
  for (int s = 0; s < kUserShards; ++s) {
    const std::string& name = rules.owner[s];
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("shard %02d has no owner zone", s));
    }
    const Zone* z = rules.FindZone(name);
    if (z == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shard %02d is owned by zone '%s', which is not listed", s, name));
    }
    if (z->kind != ZoneKind::kRZone) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shard %02d is owned by %s '%s'; only an rzone owns user shards", s,
                          std::string(ZoneKindName(z->kind)), name));
    }
  }
  for (const std::string& service : rules.global_services) {
    if (service.empty() || service.find_first_of(" ,[]") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("global service '", service, "' is not a service name"));
    }
  }
  for (int s : rules.fenced) {
    if (s < 0 || s >= kUserShards) {
      return absl::InvalidArgumentError(absl::StrCat("fenced shard ", s, " is not within 00-99"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RuleSet> ParseRules(absl::string_view yaml, absl::string_view source) {
  absl::StatusOr<Config> config = Config::Parse(yaml, source);
  if (!config.ok()) return config.status();
  ConfigReader r(*config);
  RuleSet rules;
  std::map<int, std::string> claimed;
  std::vector<std::string> names = r.Children("ldc.zones");
  if (names.empty()) r.Fail("ldc.zones", "list at least one zone");
  for (const std::string& name : names) {
    std::string key = absl::StrCat("ldc.zones.", name);
    Zone z;
    z.name = name;
    std::string kind = absl::AsciiStrToLower(r.String(key + ".kind", "rzone"));
    if (kind == "rzone") {
      z.kind = ZoneKind::kRZone;
    } else if (kind == "gzone") {
      z.kind = ZoneKind::kGZone;
    } else if (kind == "czone") {
      z.kind = ZoneKind::kCZone;
    } else {
      r.Fail(key + ".kind", absl::StrCat("'", kind, "' is not rzone, gzone or czone"));
    }
    z.data_center = r.String(key + ".data_center", "");
    z.city = r.String(key + ".city", "");
    std::string shards_text = r.String(key + ".shards", "");
    if (!shards_text.empty()) {
      absl::StatusOr<std::set<int>> shards = ParseShards(shards_text);
      if (!shards.ok()) {
        r.Fail(key + ".shards", shards.status().message());
      } else {
        for (int s : *shards) {
          auto [it, fresh] = claimed.emplace(s, name);
          if (!fresh) {
            r.Fail(key + ".shards",
                   absl::StrFormat("shard %02d is owned by both %s and %s", s, it->second, name));
            break;
          }
          rules.owner[s] = name;
        }
      }
    }
    rules.zones.push_back(std::move(z));
  }
  std::string fenced = r.String("ldc.fenced", "");
  if (!fenced.empty()) {
    absl::StatusOr<std::set<int>> shards = ParseShards(fenced);
    if (!shards.ok()) {
      r.Fail("ldc.fenced", shards.status().message());
    } else {
      rules.fenced = *shards;
    }
  }
  for (const std::string& service : r.StringList("ldc.global_services", {})) {
    rules.global_services.insert(service);
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  if (absl::Status st = Validate(rules); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
  }
  return rules;
}

absl::StatusOr<RuleSet> LoadRulesFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the rules file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseRules(text.str(), path);
}

std::string RulesToYaml(const RuleSet& rules) {
  std::string out = "ldc:\n  zones:\n";
  for (const Zone& z : rules.zones) {
    absl::StrAppend(&out, "    ", z.name, ":\n      kind: ", ZoneKindName(z.kind), "\n");
    if (!z.data_center.empty()) absl::StrAppend(&out, "      data_center: ", z.data_center, "\n");
    if (!z.city.empty()) absl::StrAppend(&out, "      city: ", z.city, "\n");
    std::string shards = FormatShards(rules.ShardsOf(z.name));
    if (!shards.empty()) absl::StrAppend(&out, "      shards: \"", shards, "\"\n");
  }
  if (!rules.fenced.empty()) {
    absl::StrAppend(&out, "  fenced: \"", FormatShards(rules.fenced), "\"\n");
  }
  if (!rules.global_services.empty()) {
    absl::StrAppend(&out, "  global_services: [", absl::StrJoin(rules.global_services, ", "),
                    "]\n");
  }
  return out;
}

std::string FormatShards(const std::set<int>& shards) {
  std::vector<std::string> parts;
  for (auto it = shards.begin(); it != shards.end();) {
    int first = *it;
    int last = first;
    ++it;
    while (it != shards.end() && *it == last + 1) {
      last = *it;
      ++it;
    }
    parts.push_back(first == last ? absl::StrFormat("%02d", first)
                                  : absl::StrFormat("%02d-%02d", first, last));
  }
  return absl::StrJoin(parts, ",");
}

absl::StatusOr<std::set<int>> ParseShards(absl::string_view text) {
  std::set<int> out;
  auto bad = [&](absl::string_view part, absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards '", text, "': '", part, "' ", why, " (want e.g. 00-49,60)"));
  };
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<absl::string_view> ends = absl::StrSplit(part, absl::MaxSplits('-', 1));
    int from = 0;
    int to = 0;
    if (!absl::SimpleAtoi(ends[0], &from) ||
        (ends.size() == 2 ? !absl::SimpleAtoi(ends[1], &to) : (to = from, false))) {
      return bad(part, "is not a shard or a range of shards");
    }
    if (from < 0 || to >= kUserShards || from > to) {
      return bad(part, "is not within 00-99, low to high");
    }
    for (int s = from; s <= to; ++s) out.insert(s);
  }
  if (out.empty()) return bad(text, "names no shard");
  return out;
}

}  // namespace formica::ldc
