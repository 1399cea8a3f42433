// DeadLetters: the messages consumer groups gave up on, over a
// DeadLetterStore. A letter is parked once a message used its attempts;
// an operator lists them and replays them (marks them `replaying`, so the
// group is handed them again); a replayed letter acked is removed, one that
// fails again is parked again. Knows nothing of gRPC. Thread-safe.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "dead_letter_store.h"
#include "formica/common/clock.h"
#include "topic.h"

namespace formica::dms {

class DeadLetters {
 public:
  // Borrowed.
  DeadLetters(DeadLetterStore* store, Clock* clock);

  // Parks `offset` of `topic` (named `topic_name`) for `owner` after
  // `attempts` deliveries, durably, with the message as it is in the log.
  absl::Status Park(const std::string& owner, const std::string& topic_name, Topic& topic,
                    int queue, uint64_t offset, int attempts, absl::string_view reason);

  // A replayed `letter` failed `attempts` more times: parked again, not
  // replaying. A failure to write is logged.
  void ParkAgain(const std::string& owner, v1::DeadLetter letter, int attempts,
                 absl::string_view reason);

  // `owner`'s letters of `topic` marked for replay, by (queue, offset).
  absl::Status Replaying(const std::string& owner, const std::string& topic,
                         std::map<std::pair<int, uint64_t>, v1::DeadLetter>* out);

  // Replayed letters acked: removed (one synced write).
  absl::Status Remove(const std::string& owner, const std::string& topic,
                      const std::vector<std::pair<int, uint64_t>>& refs);

  // At most `limit` letters of `group` (and its broadcast members), of
  // `topic` unless it is empty.
  absl::Status List(const std::string& group, const std::string& topic, size_t limit,
                    std::vector<v1::DeadLetter>* out);

  // Marks every letter of `group` (and its broadcast members), of `topic`
  // unless it is empty, for replay; returns how many were not already.
  absl::StatusOr<uint64_t> MarkReplaying(const std::string& group, const std::string& topic);

 private:
  DeadLetterStore* store_;
  Clock* clock_;
};

}  // namespace formica::dms
