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
    if (acked.count(o) == 0) {
      State& s = states_[o];
      SetDeadline(o, s, absl::InfinitePast());
      blocking_.insert(o);
    }
  }
  committed_ = states_.empty() ? next_new_ : states_.begin()->first;
}

absl::Duration GroupCursor::Backoff(int attempts) const {
  absl::Duration d = options_.retry_initial;
  for (int i = 1; i < attempts && d < options_.retry_max; ++i) d *= 2;
  return std::min(d, options_.retry_max);
}

void GroupCursor::SetDeadline(uint64_t offset, State& s, absl::Time deadline) {
  if (s.indexed) by_deadline_.erase({s.deadline, offset});
  s.deadline = deadline;
  by_deadline_.insert({deadline, offset});
  s.indexed = true;
}

void GroupCursor::SetDelayed(uint64_t offset, State& s, bool delayed) {
  s.delayed = delayed;
  if (delayed) {
    blocking_.erase(offset);
  } else {
    blocking_.insert(offset);
  }
}

void GroupCursor::Forget(uint64_t offset) {
  auto it = states_.find(offset);
  if (it == states_.end()) return;
  if (it->second.out) --in_flight_;
  if (it->second.indexed) by_deadline_.erase({it->second.deadline, offset});
  blocking_.erase(offset);
  states_.erase(it);
  committed_ = states_.empty() ? next_new_ : states_.begin()->first;
}

NextBatch GroupCursor::Next(uint64_t end, absl::Time now, size_t max) {
  NextBatch batch;
  // Ack timeouts (the earliest deadlines come first in the index): the
  // message is out no more; with attempts left it is due at once, else it
  // is dead.
  std::vector<uint64_t> expired;
  for (auto it = by_deadline_.begin(); it != by_deadline_.end() && it->first <= now; ++it) {
    if (states_[it->second].out) expired.push_back(it->second);
  }
  for (uint64_t offset : expired) {
    State& s = states_[offset];
    s.out = false;
    --in_flight_;
    if (s.attempts >= options_.max_attempts) {
      batch.dead_letters.push_back(offset);
      Forget(offset);
    } else {
      SetDeadline(offset, s, now);
    }
  }
  auto room = [&] {
    return batch.deliveries.size() < max &&
           in_flight_ < static_cast<size_t>(options_.max_in_flight);
  };
  auto send = [&](uint64_t offset, State& s) {
    s.out = true;
    if (s.delayed) SetDelayed(offset, s, false);
    ++s.attempts;
    SetDeadline(offset, s, now + options_.ack_timeout);
    ++in_flight_;
    batch.deliveries.push_back(Delivery{offset, s.attempts});
  };
  auto fresh = [&]() -> State& {
    State& s = states_[next_new_];
    blocking_.insert(next_new_);
    return s;
  };
  if (options_.ordered) {
    // Only the oldest unacked message, and nothing newer while it waits.
    // A delayed message waiting for its time holds no one up: it takes its
    // place in the order when it is due.
    uint64_t first = blocking_.empty() ? UINT64_MAX : *blocking_.begin();
    for (auto it = by_deadline_.begin(); it != by_deadline_.end() && it->first <= now; ++it) {
      if (states_[it->second].delayed) first = std::min(first, it->second);
    }
    if (first != UINT64_MAX) {
      State& s = states_[first];
      if (!s.out && s.deadline <= now && room()) send(first, s);
      return batch;
    }
    if (next_new_ < end && room()) {
      uint64_t offset = next_new_;
      State& s = fresh();
      ++next_new_;
      send(offset, s);
    }
    return batch;
  }
  // Due redeliveries first, the longest due first.
  std::vector<uint64_t> due;
  for (auto it = by_deadline_.begin(); it != by_deadline_.end() && it->first <= now; ++it) {
    if (batch.deliveries.size() + due.size() >= max ||
        in_flight_ + due.size() >= static_cast<size_t>(options_.max_in_flight)) {
      break;
    }
    if (!states_[it->second].out) due.push_back(it->second);
  }
  for (uint64_t offset : due) send(offset, states_[offset]);
  while (next_new_ < end && room()) {
    uint64_t offset = next_new_;
    State& s = fresh();
    ++next_new_;
    send(offset, s);
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

absl::StatusOr<bool> GroupCursor::TakeBack(uint64_t offset, absl::Time due) {
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
  SetDeadline(offset, s, due);
  return true;
}

absl::StatusOr<bool> GroupCursor::RetryLater(uint64_t offset, absl::Time now) {
  auto it = states_.find(offset);
  if (it == states_.end()) return TakeBack(offset, now);  // NOT_FOUND
  return TakeBack(offset, now + Backoff(it->second.attempts));
}

absl::StatusOr<bool> GroupCursor::Abandon(uint64_t offset, absl::Time now) {
  return TakeBack(offset, now);
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
  SetDeadline(offset, s, until);
  SetDelayed(offset, s, true);
  return absl::OkStatus();
}

void GroupCursor::Release(uint64_t offset, absl::Time when) {
  auto it = states_.find(offset);
  if (it == states_.end() || !it->second.out) return;
  State& s = it->second;
  s.out = false;
  --in_flight_;
  s.attempts = std::max(0, s.attempts - 1);
  SetDeadline(offset, s, when);
}

uint64_t GroupCursor::Lag(uint64_t end) const {
  uint64_t never = end > next_new_ ? end - next_new_ : 0;
  return never + states_.size();
}

}  // namespace formica::dms
