// ConsumerGroups: the consumer groups of one dmsd. A member joins its group
// in a topic (Join), is handed messages by Pump within its flow-control
// credit (collected with Collect), acks or asks for retries (Settle), and
// leaves (Leave). A message not acked within the ack timeout goes out again
// with its attempt count raised; one that used its attempts goes to the
// dead letters; replayed dead letters go out before new messages. Acks are
// durable (GroupProgress) before they are confirmed. Pure engine: no
// threads, no gRPC; time comes from the Clock, so tests drive it.
// Thread-safe.
//
//   ConsumerGroups groups(options, &topics, &progress, &letters, clock);
//   auto member = groups.NewMember();
//   auto group = groups.Join(subscribe, member).value();
//   groups.PumpAll();                      // the dispatcher, every 10 ms
//   groups.Collect(*group, *member, ...);  // what goes out to the consumer
//   groups.Settle(*group, *member, request);
//   groups.Leave(*group, member);
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dead_letters.h"
#include "formica/common/clock.h"
#include "formica/dms/v1/dms.pb.h"
#include "group_cursor.h"
#include "group_progress.h"
#include "topic_catalog.h"

namespace formica::dms {

class QueueHolds;

struct GroupOptions {
  absl::Duration ack_timeout = absl::Seconds(30);  // unless the subscription says
  int max_attempts = 16;                           // unless the subscription says
  absl::Duration retry_initial = absl::Seconds(1);
  absl::Duration retry_max = absl::Hours(2);
  // A member of a replicated broker group (docs/ha.md): a write refused
  // UNAVAILABLE (the leader stepping down) is returned, not fatal.
  bool replicated = false;
};

// One consumer stream.
struct Member {
  uint64_t id = 0;
  std::string consumer_id;
  int max_in_flight = 64;
  int out = 0;  // messages it holds
  std::vector<v1::Delivered> outbox;
  std::vector<v1::MessageRef> acked;
  bool closed = false;
};

// A dead letter being delivered to its group again.
struct Replay {
  v1::DeadLetter letter;
  int attempts = 0;
  bool out = false;
  absl::Time due;
  uint64_t owner = 0;
};

// What every member of a group subscribed with.
struct Spec {
  absl::flat_hash_set<std::string> tags;
  bool ordered = false;
  int max_attempts = 0;
  absl::Duration ack_timeout;
  bool operator==(const Spec& o) const {
    return tags == o.tags && ordered == o.ordered && max_attempts == o.max_attempts &&
           ack_timeout == o.ack_timeout;
  }
};

// Where one consumer group (or one broadcast member) stands in one topic.
struct GroupState {
  std::string name;         // the progress name: the group, or "<group>@<consumer>" in broadcast
  std::string base;         // the group as named by consumers
  std::string member_name;  // broadcast: the consumer id
  TopicState* topic = nullptr;
  absl::Mutex mu;
  Spec spec ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<GroupCursor>> cursors ABSL_GUARDED_BY(mu);
  std::map<uint64_t, std::shared_ptr<Member>> members ABSL_GUARDED_BY(mu);
  std::map<std::pair<int, uint64_t>, uint64_t> owners ABSL_GUARDED_BY(mu);  // -> member id
  std::map<std::pair<int, uint64_t>, Replay> replays ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> persisted ABSL_GUARDED_BY(mu);  // committed offsets written
  size_t next_queue ABSL_GUARDED_BY(mu) = 0;
  size_t next_member ABSL_GUARDED_BY(mu) = 0;
  uint64_t lost_to_retention ABSL_GUARDED_BY(mu) = 0;
  absl::Time last_read_error ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

class ConsumerGroups {
 public:
  // All borrowed.
  ConsumerGroups(GroupOptions options, TopicCatalog* topics, GroupProgress* progress,
                 DeadLetters* letters, Clock* clock);

  // A member with a fresh id, not in any group yet.
  std::shared_ptr<Member> NewMember();

  // Adds `member` to the group `sub` names. INVALID_ARGUMENT for a bad
  // subscription, NOT_FOUND for a missing topic, FAILED_PRECONDITION when
  // the group consumes the topic with another subscription, UNAVAILABLE
  // once Stop was called.
  absl::StatusOr<std::shared_ptr<GroupState>> Join(const v1::Subscribe& sub,
                                                   const std::shared_ptr<Member>& member);

  // What a member held goes out again. Each message it was sent counts as
  // an attempt; not so what never left its outbox, nor anything after Stop.
  void Leave(GroupState& g, const std::shared_ptr<Member>& member);

  // Settles a member's acks and retries: acks are durable before the cursor
  // forgets them, and confirmed to the member (in its next Collect).
  // INVALID_ARGUMENT, naming it, for an ack of a queue the topic lacks.
  absl::Status Settle(GroupState& g, Member& member, const v1::ConsumeRequest& req);
  // What Settle refuses, checked alone (before the request waits to be settled).
  absl::Status CheckAcks(const GroupState& g, const v1::ConsumeRequest& req) const;

  enum class Collected { kStopping, kClosed, kReady };
  // Waits up to `wait` for something for `member`, then moves into `reply`
  // what it has (acks confirmed, messages; within one reply's limits).
  // kStopping when `stopping()` holds after the wait, kClosed when the
  // member is closed or `cancelled()` holds (nothing moved in both).
  Collected Collect(GroupState& g, Member& member, absl::Duration wait,
                    const std::function<bool()>& stopping, const std::function<bool()>& cancelled,
                    v1::ConsumeReply* reply);
  // The member reads no more (its stream ended).
  void Close(GroupState& g, Member& member);
  // Puts the messages of a reply that never reached the consumer back at
  // the front of its outbox, so Leave counts them as unsent.
  void Unsend(GroupState& g, Member& member, v1::ConsumeReply* reply);

  // Hands out what is due, in every group, to members with room.
  void PumpAll();
  void Pump(GroupState& g);

  // Writes committed offsets advanced by filtered or skipped messages, so
  // a restart does not scan them again.
  void Checkpoint();

  // The lag of `req.group()` (and the number of its dead letters).
  absl::Status Lag(const v1::GetLagRequest& req, v1::GetLagReply* reply);

  // Marks the group's dead letters for replay; groups consuming now take
  // them at once, others on their next join. Returns how many.
  absl::StatusOr<uint64_t> ReplayDeadLetters(const std::string& group, const std::string& topic);

  // Queues moving between broker groups (borrowed): a held queue is not
  // delivered (QueueHolds::Deliverable). Unset: every queue is.
  void UseHolds(QueueHolds* holds) { holds_ = holds; }
  // A queue moved in: every group's cursor of it starts again from the
  // progress stored (imported with it).
  absl::Status ReloadQueue(const std::string& topic, int queue);

  // dmsd is stopping: joins are refused, and what members held is not
  // counted as an attempt when they leave.
  void Stop() { stopping_ = true; }

  // The groups consumers joined since dmsd started (by their names), for
  // the metrics.
  std::vector<std::string> GroupNames();

 private:
  std::vector<std::shared_ptr<GroupState>> Groups();
  CursorOptions CursorOptionsFor(const Spec& spec) const;
  absl::Status LoadReplays(GroupState& g, std::map<std::pair<int, uint64_t>, Replay>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);
  std::shared_ptr<Member> PickMember(GroupState& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);
  int Credit(GroupState& g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);
  void Hand(GroupState& g, const std::shared_ptr<Member>& m, int queue, uint64_t offset,
            int attempt, v1::StoredMessage message, bool replay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);
  void DeadLetter(GroupState& g, int queue, uint64_t offset, GroupCursor& cursor,
                  absl::string_view reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);
  void DeadAgain(GroupState& g, std::pair<int, uint64_t> key, absl::string_view reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu);

  GroupOptions options_;
  QueueHolds* holds_ = nullptr;
  TopicCatalog* topics_;
  GroupProgress* progress_;
  DeadLetters* letters_;
  Clock* clock_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_member_id_{1};

  absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<GroupState>> groups_
      ABSL_GUARDED_BY(mu_);  // (progress name, topic)
};

}  // namespace formica::dms
