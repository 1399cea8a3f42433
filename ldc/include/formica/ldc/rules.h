// formica::ldc rules — which zone owns each of the 100 user shards.
//
// A RuleSet names the zones (RZones own user shards and run the full stack;
// the one GZone holds global data with one writer; CZones are city-local
// read copies of the GZone's data), the owner RZone of every shard, and the
// shards fenced by a switch in progress (no zone may write them). It is
// written as YAML (docs/ldc.md): a file to bootstrap from, and at run time
// the registry config entry "ldc/rules", whose version is the rules' version.
//
//   auto rules = ldc::ParseRules(text).value();   // validated
//   const ldc::Zone* owner = rules.Owner(42);
//
// Values; thread-compatible.
#pragma once

#include <array>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formica/common/user_shard.h"

namespace formica::ldc {

enum class ZoneKind { kRZone, kGZone, kCZone };

// "rzone", "gzone", "czone".
absl::string_view ZoneKindName(ZoneKind kind);

struct Zone {
  std::string name;  // letters, digits and . _ -
  ZoneKind kind = ZoneKind::kRZone;
  std::string data_center;  // the logical data center it runs in
  std::string city;
};

// The config entry the rules live in at the registry.
inline constexpr char kRulesKey[] = "ldc/rules";

struct RuleSet {
  std::vector<Zone> zones;
  // owner[s]: the RZone that owns shard s.
  std::array<std::string, kUserShards> owner;
  // Shards no zone may write now (a switch is moving them).
  std::set<int> fenced;
  // rpc services of global data: served by the GZone (reads may go to a
  // CZone in the caller's city), not by users' zones.
  std::set<std::string> global_services;

  // The zone called `name`, or nullptr.
  const Zone* FindZone(absl::string_view name) const;
  // The owner RZone of `shard` (0..99); nullptr only for an invalid set.
  const Zone* Owner(int shard) const;
  // The GZone; nullptr only for an invalid set.
  const Zone* GlobalZone() const;
  // The shards `zone` owns.
  std::set<int> ShardsOf(absl::string_view zone) const;

  bool operator==(const RuleSet& other) const;
};

// OK, or INVALID_ARGUMENT naming the zone or shard at fault: every shard
// owned by exactly one RZone, exactly one GZone, valid and unique names, a
// CZone in a city, fenced shards within 0..99.
absl::Status Validate(const RuleSet& rules);

// Reads the `ldc:` section of YAML text (see docs/ldc.md) and validates it.
// INVALID_ARGUMENT naming the source, key and reason.
absl::StatusOr<RuleSet> ParseRules(absl::string_view yaml, absl::string_view source = "<inline>");
absl::StatusOr<RuleSet> LoadRulesFile(const std::string& path);
// The YAML ParseRules reads back into an equal RuleSet.
std::string RulesToYaml(const RuleSet& rules);

// Shards as compact ranges: {0..49, 60} -> "00-49,60"; "" for none.
std::string FormatShards(const std::set<int>& shards);
// "00-49,60" -> {0..49, 60}. INVALID_ARGUMENT naming the bad part.
absl::StatusOr<std::set<int>> ParseShards(absl::string_view text);

}  // namespace formica::ldc
