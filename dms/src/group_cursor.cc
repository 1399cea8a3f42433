#include "group_cursor.h"

#include <algorithm>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace formica::dms {

GroupCursor::GroupCursor(CursorOptions options, uint64_t committed)
    : options_(options), committed_(committed), next_new_(committed) {
  options_.max_in_flight = std::max(1, options_.max_in_flight);
  options_.max_attempts = std::max(1, options_.max_attempts);
}

GroupCursor::GroupCursor(CursorOptions options, uint64_t committed, const std::set<uint64_t>& acked)
    : GroupCursor(options, committed) {
  if (acked.empty() || *acked.rbegin() < committed) return;
  next_new_ = *acked.rbegin() + 1;
  for (uint64_t o = committed; o < next_new_; ++o) {
    if (acked.count(o) == 0) states_[o] = State{0, false, absl::InfinitePast()};
  }
  committed_ = states_.empty() ? next_new_ : states_.begin()->first;
}

absl::Duration GroupCursor::Backoff(int attempts) const {
  absl::Duration d = options_.retry_initial;
  for (int i = 1; i < attempts && d < options_.retry_max; ++i) d *= 2;
  return std::min(d, options_.retry_max);
}

void GroupCursor::Forget(uint64_t offset) {
  auto it = states_.find(offset);
  if (it == states_.end()) return;
  if (it->second.out) --in_flight_;
  states_.erase(it);
  committed_ = states_.empty() ? next_new_ : states_.begin()->first;
}

NextBatch GroupCursor::Next(uint64_t end, absl::Time now, size_t max) {
  NextBatch batch;
  // Ack timeouts: the message is out no more; with attempts left it is due
  // at once, else it is dead.
  for (auto it = states_.begin(); it != states_.end();) {
    State& s = it->second;
    uint64_t offset = it->first;
    ++it;
    if (s.out && s.deadline <= now) {
      s.out = false;
      --in_flight_;
      s.deadline = now;
      if (s.attempts >= options_.max_attempts) {
        batch.dead_letters.push_back(offset);
        Forget(offset);
      }
    }
  }
  auto room = [&] {
    return batch.deliveries.size() < max &&
           in_flight_ < static_cast<size_t>(options_.max_in_flight);
  };
  auto send = [&](uint64_t offset, State& s) {
    s.out = true;
    s.delayed = false;
    ++s.attempts;
    s.deadline = now + options_.ack_timeout;
    ++in_flight_;
    batch.deliveries.push_back(Delivery{offset, s.attempts});
  };
  if (options_.ordered) {
    // Only the oldest unacked message, and nothing newer while it waits
    // (a delayed message waiting for its time holds no one up: it takes
    // its place in the order when it is due).
    for (auto& [offset, s] : states_) {
      if (s.delayed && !s.out && s.deadline > now) continue;
      if (!s.out && s.deadline <= now && room()) send(offset, s);
      return batch;
    }
    if (next_new_ < end && room()) {
      State& s = states_[next_new_];
      send(next_new_++, s);
    }
    return batch;
  }
  for (auto& [offset, s] : states_) {
    if (!room()) break;
    if (!s.out && s.deadline <= now) send(offset, s);
  }
  while (next_new_ < end && room()) {
    State& s = states_[next_new_];
    send(next_new_++, s);
  }
  return batch;
}

absl::Status GroupCursor::Ack(uint64_t offset) {
  if (offset < committed_) return absl::OkStatus();  // acked before
  if (offset >= next_new_) {
    return absl::NotFoundError(absl::StrCat("offset ", offset, " was never delivered"));
  }
  Forget(offset);  // absent: acked before (above committed_)
  return absl::OkStatus();
}

absl::StatusOr<bool> GroupCursor::RetryLater(uint64_t offset, absl::Time now) {
  auto it = states_.find(offset);
  if (it == states_.end() || !it->second.out) {
    return absl::NotFoundError(absl::StrCat("offset ", offset, " is not out for delivery"));
  }
  State& s = it->second;
  if (s.attempts >= options_.max_attempts) {
    Forget(offset);
    return false;
  }
  s.out = false;
  --in_flight_;
  s.deadline = now + Backoff(s.attempts);
  return true;
}

absl::Status GroupCursor::Defer(uint64_t offset, absl::Time until) {
  auto it = states_.find(offset);
  if (it == states_.end() || !it->second.out) {
    return absl::NotFoundError(absl::StrCat("offset ", offset, " is not out for delivery"));
  }
  State& s = it->second;
  s.out = false;
  --in_flight_;
  s.attempts = std::max(0, s.attempts - 1);
  s.deadline = until;
  s.delayed = true;
  return absl::OkStatus();
}

void GroupCursor::Release(uint64_t offset, absl::Time now) {
  auto it = states_.find(offset);
  if (it == states_.end() || !it->second.out) return;
  State& s = it->second;
  s.out = false;
  --in_flight_;
  s.attempts = std::max(0, s.attempts - 1);
  s.deadline = now;
}

uint64_t GroupCursor::Lag(uint64_t end) const {
  uint64_t never = end > next_new_ ? end - next_new_ : 0;
  return never + states_.size();
}

}  // namespace formica::dms
