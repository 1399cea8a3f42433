// The one function that places a user in one of the 100 logical shards:
// the last two decimal digits of the user id. DDS stores a user's rows in
// this shard, and LDC gives each shard an owner zone, so rpc, dms and dds
// all route a user by the same answer.
//
//   UserShard("20881042") == 42;  UserShard("7") is INVALID_ARGUMENT.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica {

inline constexpr int kUserShards = 100;

// The shard (0..99) of `user_id`: its last two characters, which must be
// digits (surrounding spaces ignored). INVALID_ARGUMENT naming the id otherwise.
absl::StatusOr<int> UserShard(absl::string_view user_id);

}  // namespace formica
