// GroupCursor: where one consumer group stands in one queue. It decides
// which messages go out next (new ones, and unacknowledged ones whose ack
// timed out or whose retry is due), keeps at most `max_in_flight` out at
// once (flow control; 1 with `ordered` gives one-at-a-time delivery in
// queue order), counts attempts, and sends a message that failed
// `max_attempts` times to the dead-letter queue. Pure logic over offsets
// and times supplied by the caller, so tests control time. Not thread-safe:
// the broker guards each cursor.
//
//   GroupCursor cursor(options, /*committed=*/stored_offset);
//   auto next = cursor.Next(/*end=*/log->synced_end(), now, 32);
//   ... deliver next.deliveries, park next.dead_letters in the DLQ ...
//   cursor.Ack(offset);                  // consumer said done
//   cursor.RetryLater(offset, now);      // consumer said not now
//   persist(cursor.committed());         // everything below is acked
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::dms {

struct CursorOptions {
  absl::Duration ack_timeout = absl::Seconds(30);  // unacked this long: out again
  int max_in_flight = 64;                          // out at once, in this queue
  bool ordered = false;   // only the oldest unacked message may be out (per-key order)
  int max_attempts = 16;  // deliveries before the dead-letter queue
  absl::Duration retry_initial = absl::Seconds(1);  // first retry-later delay...
  absl::Duration retry_max = absl::Hours(2);        // ...doubling up to this
};

struct Delivery {
  uint64_t offset = 0;
  int attempt = 0;  // 1 for the first delivery
};

struct NextBatch {
  std::vector<Delivery> deliveries;
  std::vector<uint64_t> dead_letters;  // failed max_attempts times: now counted as acked
};

class GroupCursor {
 public:
  GroupCursor(CursorOptions options, uint64_t committed);
  // After a restart: `acked` holds the offsets above `committed` acked
  // before it; every other offset below the highest of them is delivered
  // again (it may have been out when the broker stopped).
  GroupCursor(CursorOptions options, uint64_t committed, const std::set<uint64_t>& acked);

  // What to deliver at `now` from a queue whose durable records end at
  // `end`: redeliveries that are due first (the longest due first), then
  // new messages; at most `max` deliveries, never more than max_in_flight
  // out. Costs what is due and delivered, not what waits.
  NextBatch Next(uint64_t end, absl::Time now, size_t max);

  // The consumer is done with `offset`. A repeat, or an ack for a message
  // already redelivered, is fine; NOT_FOUND for one never delivered.
  absl::Status Ack(uint64_t offset);

  // The consumer asks for `offset` again later. false: it has used its
  // attempts and is dead-lettered (counted as acked); the caller parks it.
  // NOT_FOUND for one not out.
  absl::StatusOr<bool> RetryLater(uint64_t offset, absl::Time now);

  // A message out for delivery is not due before `until` (a delayed
  // message); the delivery does not count as an attempt. NOT_FOUND if it
  // is not out.
  absl::Status Defer(uint64_t offset, absl::Time until);

  // The consumer holding `offset` went away without acking it: the
  // delivery counts as an attempt (so a message cannot go round dying
  // consumers forever) and it is due again at once. false: it has used its
  // attempts and is dead-lettered (counted as acked); the caller parks it.
  // NOT_FOUND for one not out.
  absl::StatusOr<bool> Abandon(uint64_t offset, absl::Time now);

  // `offset` could not be handed out after all (unreadable now, or no
  // consumer to take it): it is due again at `when` and the delivery does
  // not count as an attempt. No-op if it is not out.
  void Release(uint64_t offset, absl::Time when);

  uint64_t committed() const { return committed_; }
  // Whether `offset` has been handed out (or acked) by this cursor.
  bool WasDelivered(uint64_t offset) const {
    return offset < next_new_;
  }  // every offset below it is acked
  size_t in_flight() const { return in_flight_; }
  // Messages below `end` not acked yet.
  uint64_t Lag(uint64_t end) const;

 private:
  struct State {
    int attempts = 0;
    bool out = false;
    absl::Time deadline;   // out: ack timeout; else: when it is due again
    bool delayed = false;  // waiting for its delivery time (see Defer), not a retry
    bool indexed = false;  // in by_deadline_
  };
  void Forget(uint64_t offset);  // acked or dead-lettered
  // Takes `offset` back from its consumer, counting the attempt: due at
  // `due`, or false (forgotten) when its attempts are used up.
  absl::StatusOr<bool> TakeBack(uint64_t offset, absl::Time due);
  void SetDeadline(uint64_t offset, State& s, absl::Time deadline);
  void SetDelayed(uint64_t offset, State& s, bool delayed);
  absl::Duration Backoff(int attempts) const;

  CursorOptions options_;
  uint64_t committed_;
  uint64_t next_new_;                 // first offset never delivered
  std::map<uint64_t, State> states_;  // delivered, not acked, in [committed_, next_new_)
  // The same by deadline, so a call looks only at what is due (a backlog of
  // delayed messages costs nothing until their time).
  std::set<std::pair<absl::Time, uint64_t>> by_deadline_;
  // Offsets that hold newer ones up in ordered mode: all but delayed
  // messages waiting for their time.
  std::set<uint64_t> blocking_;
  size_t in_flight_ = 0;
};

}  // namespace formica::dms
