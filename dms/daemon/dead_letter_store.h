// DeadLetterStore: where dmsd keeps the messages a consumer group gave up
// on. A letter is kept under its owner (the group, or "<group>@<consumer>"
// for a broadcast member) and named by its topic and place (letter.topic(),
// letter.ref()). One narrow interface over the meta store. Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "formica/dms/v1/dms.pb.h"

namespace formica::dms {

struct LetterEntry {
  std::string owner;
  v1::DeadLetter letter;
};

class DeadLetterStore {
 public:
  virtual ~DeadLetterStore() = default;

  // Keeps `letter` under `owner` (replacing one at its place); synced.
  virtual absl::Status Put(absl::string_view owner, const v1::DeadLetter& letter) = 0;
  // The same for several letters, in one atomic synced write.
  virtual absl::Status PutMany(const std::vector<LetterEntry>& letters) = 0;
  // Removes `owner`'s letters of `topic` at (queue, offset) `refs`, in one
  // atomic synced write.
  virtual absl::Status Remove(absl::string_view owner, absl::string_view topic,
                              const std::vector<std::pair<int, uint64_t>>& refs) = 0;

  // At most `limit` letters of `group` and of its broadcast members, of
  // `topic` only unless it is empty, in (owner, topic, queue, offset)
  // order. DATA_LOSS when a record is corrupt.
  virtual absl::Status List(absl::string_view group, absl::string_view topic, size_t limit,
                            std::vector<LetterEntry>* out) = 0;
  // The letters of exactly `owner` in `topic`, in (queue, offset) order.
  virtual absl::Status ListOwned(absl::string_view owner, absl::string_view topic,
                                 std::vector<LetterEntry>* out) = 0;
};

}  // namespace formica::dms
