// QueueMoves: a broker group's side of moving a queue to another group
// (formicactl dms move-queue, docs/dms.md): seal it here, read its records
// and its consumer groups' progress, import them at the destination (same
// offsets, idempotent), open it there. Knows nothing of gRPC. Thread-safe.
#pragma once

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/dms/v1/dms.pb.h"

namespace formica::dms {

class ConsumerGroups;
class DedupIndex;
class GroupProgress;
class QueueHolds;
class TopicCatalog;
struct TopicState;

class QueueMoves {
 public:
  // All borrowed.
  QueueMoves(TopicCatalog* topics, QueueHolds* holds, GroupProgress* progress, DedupIndex* dedup,
             ConsumerGroups* groups)
      : topics_(topics), holds_(holds), progress_(progress), dedup_(dedup), groups_(groups) {}

  // NOT_FOUND for an unknown topic, INVALID_ARGUMENT for a queue out of
  // range or a bad group name, each naming it; nothing changes then.
  absl::Status Seal(const v1::SealQueueRequest& req, v1::SealQueueReply* reply);
  absl::Status Read(const v1::ReadQueueRequest& req, v1::ReadQueueReply* reply);
  absl::Status Import(const v1::ImportQueueRequest& req, v1::ImportQueueReply* reply);
  absl::Status Open(const v1::OpenQueueRequest& req);

  // How long Seal waits for produces admitted before it to end.
  static constexpr absl::Duration kDrain = absl::Seconds(10);
  // The most bytes of records one Read answers (beyond its first record).
  static constexpr size_t kMaxReadBytes = 8 << 20;

 private:
  absl::StatusOr<TopicState*> Find(const std::string& topic, int queue);
  absl::Status IndexDedupKeys(TopicState& t, int queue, const v1::ImportQueueRequest& req,
                              uint64_t appended);

  TopicCatalog* topics_;
  QueueHolds* holds_;
  GroupProgress* progress_;
  DedupIndex* dedup_;
  ConsumerGroups* groups_;
};

}  // namespace formica::dms
