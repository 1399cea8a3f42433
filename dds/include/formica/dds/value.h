// formica::dds values: what a statement's parameters and results hold, and
// the shard function that places a user by a value. The facade
// (formica/dds/data_source.h) includes this header; DDS's own parts (the
// router, the merge, the backends) use it without the facade.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace formica::dds {

// One value: NULL, an integer, a real, or text (also blobs, as bytes).
// PostgreSQL integers and numerics without a fraction read as integers,
// other numerics and floats as reals, booleans as 0/1.
using Value = std::variant<std::monostate, int64_t, double, std::string>;

std::string ToString(const Value& v);  // "NULL", "42", "1.5", "text"

struct ResultSet {
  std::vector<std::string> columns;
  std::vector<std::vector<Value>> rows;
  int64_t rows_affected = 0;  // INSERT, UPDATE, DELETE: summed over shards
  // Shards a read took from this data source's copy although another zone
  // owns them now (a cross-zone read, LDC), with that zone. Empty otherwise.
  std::map<int, std::string> read_elsewhere;
};

// How a user's id (the shard key) places the user in a logical shard.
enum class ShardFunction {
  kLastTwoDigits,  // the id's last two decimal digits; needs shards = 100
  kModulo,         // integer id mod shards
  kRange,          // integer id in ranges[s] -> shard s
};

}  // namespace formica::dds
