#include "shard_map.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "formica/common/user_shard.h"

namespace formica::dds {

ShardSet Intersect(const ShardSet& a, const ShardSet& b) {
  ShardSet out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

absl::StatusOr<int> LastTwoDigits(const std::string& user_id) {
  // The same function as LDC's and rpc's (formica/common/user_shard.h).
  absl::StatusOr<int> shard = UserShard(user_id);
  if (!shard.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard key '", user_id, "' does not end in two digits"));
  }
  return shard;
}

namespace {

// The shard count, the shard function and its ranges, the databases.
absl::Status CheckShards(const RouterConfig& c) {
  if (c.shards < 1 || c.shards > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("shards must be 1 to 100000, not ", c.shards));
  }
  if (c.function == ShardFunction::kLastTwoDigits && c.shards != 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("the last-two-digits shard function needs 100 shards, not ", c.shards,
                     "; use the modulo or range function for another count"));
  }
  if (c.function == ShardFunction::kRange) {
    if (static_cast<int>(c.ranges.size()) != c.shards) {
      return absl::InvalidArgumentError(
          absl::StrCat("the range shard function needs one range "
                       "per shard: ",
                       c.ranges.size(), " ranges for ", c.shards, " shards"));
    }
    std::vector<std::pair<int64_t, int64_t>> sorted = c.ranges;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      if (sorted[i].first > sorted[i].second) {
        return absl::InvalidArgumentError(absl::StrCat("range ", sorted[i].first, "-",
                                                       sorted[i].second, " ends before it starts"));
      }
      if (i > 0 && sorted[i].first <= sorted[i - 1].second) {
        return absl::InvalidArgumentError(
            absl::StrCat("ranges ", sorted[i - 1].first, "-", sorted[i - 1].second, " and ",
                         sorted[i].first, "-", sorted[i].second, " overlap"));
      }
    }
  }
  if (c.databases < 1 || c.databases > c.shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("databases must be 1 to ", c.shards, " (the shards), not ", c.databases));
  }
  return absl::OkStatus();
}

// Sharded tables, binding groups and the table suffix.
absl::Status CheckTables(const RouterConfig& c) {
  for (const auto& [table, column] : c.sharded_tables) {
    if (c.broadcast_tables.count(table) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("table '", table, "' cannot be both sharded and broadcast"));
    }
    if (column.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("table '", table, "' needs a shard column"));
    }
  }
  std::map<std::string, int> group_of;
  for (size_t g = 0; g < c.binding_groups.size(); ++g) {
    for (const std::string& t : c.binding_groups[g]) {
      if (c.sharded_tables.count(t) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("binding table '", t, "' is not a sharded table"));
      }
      if (!group_of.emplace(t, static_cast<int>(g)).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("table '", t, "' is in more than one binding group"));
      }
    }
  }
  if (c.table_suffix.find_first_of(" \t\"';") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("table_suffix '", c.table_suffix, "' may not hold spaces or quotes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardMap> ShardMap::Create(const RouterConfig& c) {
  if (c.sharded_tables.empty() && c.broadcast_tables.empty()) {
    return absl::InvalidArgumentError("the DDS config names no tables");
  }
  if (absl::Status st = CheckShards(c); !st.ok()) return st;
  if (absl::Status st = CheckTables(c); !st.ok()) return st;
  ShardMap m;
  m.function_ = c.function;
  m.shards_ = c.shards;
  m.ranges_ = c.ranges;
  const int width = std::max<int>(2, static_cast<int>(std::to_string(c.shards - 1).size()));
  if (!c.shard_database.empty()) {
    if (static_cast<int>(c.shard_database.size()) != c.shards) {
      return absl::InternalError("the shard map must cover every shard");
    }
    m.database_of = c.shard_database;
  } else {
    for (int s = 0; s < c.shards; ++s) {
      m.database_of.push_back(static_cast<int>(int64_t{s} * c.databases / c.shards));
    }
  }
  std::map<std::pair<int, std::string>, int> targets;
  for (int s = 0; s < c.shards; ++s) {
    if (m.database_of[s] < 0 || m.database_of[s] >= c.databases) {
      return absl::InternalError("the shard map names a database that does not exist");
    }
    m.suffix_of.push_back(
        absl::StrReplaceAll(c.table_suffix, {{"{shard}", absl::StrFormat("%0*d", width, s)}}));
    auto [it, fresh] = targets.emplace(std::make_pair(m.database_of[s], m.suffix_of[s]),
                                       static_cast<int>(m.target_shard.size()));
    if (fresh) m.target_shard.push_back(s);
    m.target_of.push_back(it->second);
  }
  return m;
}

absl::StatusOr<int> ShardMap::ShardOf(const Value& key) const {
  if (std::holds_alternative<std::monostate>(key)) {
    return absl::InvalidArgumentError("the shard key is NULL");
  }
  if (const double* d = std::get_if<double>(&key)) {
    if (*d != static_cast<double>(static_cast<int64_t>(*d)) || std::abs(*d) > 9e15) {
      return absl::InvalidArgumentError(absl::StrCat("shard key ", *d, " is not an integer"));
    }
    return ShardOf(Value(static_cast<int64_t>(*d)));
  }
  if (function_ == ShardFunction::kLastTwoDigits) {
    if (const int64_t* i = std::get_if<int64_t>(&key)) {
      return static_cast<int>(*i < 0 ? -(*i % 100) : *i % 100);  // 5 is 05
    }
    return LastTwoDigits(std::get<std::string>(key));
  }
  std::string text = ToString(key);
  int64_t id;
  if (!absl::SimpleAtoi(text, &id)) {
    return absl::InvalidArgumentError(absl::StrCat("shard key '", text, "' is not an integer"));
  }
  if (function_ == ShardFunction::kModulo) {
    int64_t m = id % shards_;
    return static_cast<int>(m < 0 ? m + shards_ : m);
  }
  for (size_t s = 0; s < ranges_.size(); ++s) {
    if (id >= ranges_[s].first && id <= ranges_[s].second) {
      return static_cast<int>(s);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("shard key ", id, " is in no shard's range of the config"));
}

}  // namespace formica::dds
