// Topic: a named stream of messages split into queues, each queue one
// MessageLog under <dir>/<queue number>. A message's key picks its queue
// (CRC-32C of the key, modulo the queue count), so messages with one key
// stay in one queue in the order they were produced; keyless messages are
// spread round-robin. The queue count is fixed when the topic is created
// (kept in <dir>/QUEUES): reopening with another count is refused, since
// it would move keys between queues and break their order. Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/dms/v1/dms.pb.h"
#include "message_log.h"

namespace formica::dms {

// The directory (under <data_dir>/topics) that holds a topic, named from
// the topic's name (which must pass the topic name rule, so it is never "."
// or ".."): a name without upper-case letters stands for itself; any other
// is "^", the name in lower case, "^" and a hex mask of its upper-case
// letters ("Fund.Orders" -> "^fund.orders^120"). One directory per name,
// never one shared by two names, even on a file system that ignores case,
// and at most 162 characters.
std::string TopicDirectory(absl::string_view name);
// The topic a directory named by TopicDirectory holds; nullopt for any
// other directory name.
std::optional<std::string> TopicOfDirectory(absl::string_view directory);

// The name a replicated topic's queue log goes by in the group's log
// ("<topic>/<queue>"; topic names hold no '/').
std::string ReplicatedLogId(absl::string_view topic, int queue);

struct TopicOptions {
  std::string dir;   // required
  std::string name;  // the topic's name (for replicated logs' ids)
  int queues = 8;    // at creation; 1..1024 (0: the count the topic was created with)
  LogOptions log;    // dir (and replication_id) are set per queue
};

struct Produced {
  int queue = 0;
  uint64_t offset = 0;
};

class Topic {
 public:
  // `reports` gets each queue's recovery report (cut tails), in queue order.
  static absl::StatusOr<std::unique_ptr<Topic>> Open(TopicOptions options,
                                                     std::vector<RecoveryReport>* reports);

  int queues() const { return static_cast<int>(logs_.size()); }
  int QueueFor(absl::string_view key);

  // Stores `message` in its key's queue; durable when this returns.
  absl::StatusOr<Produced> Produce(const v1::StoredMessage& message);

  // Writes several messages, each in its key's queue and each queue's in
  // one write, not waiting for them to be durable: `out` gets their places
  // in order, and `last` per queue written the offset to wait for
  // (MessageLog::WaitDurable or WhenDurable). On an error, the messages of
  // queues written before may be stored.
  // `queues[i]` is the queue of messages[i] (QueueFor's, or one the
  // producer chose).
  absl::Status WriteBatch(const std::vector<const v1::StoredMessage*>& messages,
                          const std::vector<int>& queues, std::vector<Produced>* out,
                          std::map<int, uint64_t>* last);

  // Makes `queue`'s next offset `next` (durably), writing a placeholder
  // (StoredMessage.lost) at each offset up to it, so offsets known to be
  // handed out before (e.g. acknowledged by a group) are never handed out
  // again after the records holding them were lost. No-op if the log
  // already reaches `next`.
  absl::Status SkipTo(int queue, uint64_t next);

  // Stores `message` in `queue` without waiting for it to be durable
  // (WhenDurable tells when it is).
  absl::StatusOr<Produced> Write(int queue, const v1::StoredMessage& message);

  // A queue moving in from another broker group: `records` are the source's
  // records from offset `first` on. What the log already holds of them (a
  // repeated import) is skipped, the rest appended at the same offsets; a
  // log holding no record that ends before `first` begins at `first`
  // (MessageLog::StartAt), one holding records is first filled with
  // placeholders up to it (SkipTo). Durable on return; returns how many
  // records were appended.
  absl::StatusOr<uint64_t> Import(int queue, uint64_t first,
                                  const std::vector<v1::StoredMessage>& records);

  // `done` runs (on a sync thread, or here if already known) once every
  // message of `queue` up to `offset` is durable, or with the error that
  // stopped its log.
  void WhenDurable(int queue, uint64_t offset, std::function<void(absl::Status)> done);

  // Up to `max` durable messages of `queue` from `from` on, with offsets
  // (placeholders of lost offsets included). OUT_OF_RANGE if `from` was
  // removed by retention.
  absl::Status Read(int queue, uint64_t from, size_t max,
                    std::vector<std::pair<uint64_t, v1::StoredMessage>>* out);

  // REQUIRES for these: 0 <= queue < queues().
  MessageLog* log(int queue) { return logs_[queue].get(); }
  uint64_t first_offset(int queue) const;  // the oldest message kept
  uint64_t end_offset(int queue) const;    // one past the last durable message
  uint64_t bytes(int queue) const;         // what its segments hold on disk

  // Retention: removes `queue`'s whole segments (never the newest, which
  // takes the appends) that were last written before `cutoff`, or, with
  // `max_bytes` > 0, while the queue holds more than that. Returns the
  // queue's first offset kept after, or 0 when nothing was removed.
  absl::StatusOr<uint64_t> RemoveOld(int queue, absl::Time cutoff, uint64_t max_bytes);

 private:
  Topic() = default;
  std::vector<std::unique_ptr<MessageLog>> logs_;
  std::atomic<uint64_t> round_robin_{0};
};

}  // namespace formica::dms
