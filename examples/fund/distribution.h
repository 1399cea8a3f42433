// Dividing an amount in cents among holders in proportion to their weights
// (shares), by largest remainder: each gets floor(total * w / W), then the
// cents left over go one each to the largest remainders, ties to the
// smaller key (user id, shard). The parts add up to `total` exactly, and the
// same input always gives the same parts. Clearing uses it twice (docs/fund.md):
// the day's income among shards by their share totals, then each shard's
// part among its users.
#pragma once

#include <cstdint>
#include <vector>

namespace fund {

// `weights[i]` >= 0 with tie key `keys[i]` (distinct). When every weight is
// zero every part is zero (the income then goes to no one: the caller must
// check). REQUIRES: total >= 0, weights.size() == keys.size().
std::vector<int64_t> LargestRemainder(int64_t total, const std::vector<int64_t>& weights,
                                      const std::vector<int64_t>& keys);

}  // namespace fund
