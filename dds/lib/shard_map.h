// Where the router's config puts each user: the logical shard of a shard key
// (by the config's shard function), the database holding each shard, and
// the physical tables ("targets": one per database and table suffix) the
// shards' rows live in. Made once per Router; immutable, so thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <algorithm>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "formica/dds/value.h"
#include "router.h"

namespace formica::dds {

// Shards, sorted, each once. Inline: a keyed statement allocates nothing.
using ShardSet = absl::InlinedVector<int, 4>;

ShardSet Intersect(const ShardSet& a, const ShardSet& b);

// Sorted, each once.
template <typename Container>
void Normalize(Container* s) {
  std::sort(s->begin(), s->end());
  s->erase(std::unique(s->begin(), s->end()), s->end());
}

class ShardMap {
 public:
  // Checks the whole config (shards, function, ranges, databases, tables,
  // binding groups, suffix): INVALID_ARGUMENT naming what cannot work.
  static absl::StatusOr<ShardMap> Create(const RouterConfig& config);

  // The logical shard of a key: INVALID_ARGUMENT for NULL, a real with a
  // fraction, or a key the shard function does not place.
  absl::StatusOr<int> ShardOf(const Value& key) const;

  // Per shard: its database and the suffix of its physical tables.
  std::vector<int> database_of;
  std::vector<std::string> suffix_of;
  std::vector<int> target_of;     // shard -> physical table index
  std::vector<int> target_shard;  // physical table index -> its first shard

 private:
  ShardFunction function_ = ShardFunction::kLastTwoDigits;
  int shards_ = 100;
  std::vector<std::pair<int64_t, int64_t>> ranges_;
};

}  // namespace formica::dds
