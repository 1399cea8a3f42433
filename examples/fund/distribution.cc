#include "distribution.h"

#include <algorithm>
#include <numeric>

namespace fund {

std::vector<int64_t> LargestRemainder(int64_t total, const std::vector<int64_t>& weights,
                                      const std::vector<int64_t>& keys) {
  std::vector<int64_t> parts(weights.size(), 0);
  __int128 sum = 0;
  for (int64_t w : weights) sum += w;
  if (sum <= 0 || total <= 0) return parts;
  std::vector<__int128> remainder(weights.size());
  __int128 given = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    __int128 exact = static_cast<__int128>(total) * weights[i];
    parts[i] = static_cast<int64_t>(exact / sum);
    remainder[i] = exact % sum;
    given += parts[i];
  }
  int64_t left = static_cast<int64_t>(total - given);  // < number of holders with a remainder
  if (left == 0) return parts;
  std::vector<size_t> order(weights.size());
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](size_t a, size_t b) {
    return remainder[a] != remainder[b] ? remainder[a] > remainder[b] : keys[a] < keys[b];
  };
  std::partial_sort(order.begin(), order.begin() + left, order.end(), before);
  for (int64_t i = 0; i < left; ++i) ++parts[order[i]];
  return parts;
}

}  // namespace fund
