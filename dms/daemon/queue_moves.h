// QueueMoves: a broker group's side of moving a queue to another group
// (formicactl dms move-queue, docs/dms.md): seal it here, read its records
// and its consumer groups' progress, import them at the destination (same
// offsets, idempotent), open it there. Knows nothing of gRPC. Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
  // All borrowed; `group` is the broker group this dmsd serves.
  QueueMoves(std::string group, TopicCatalog* topics, QueueHolds* holds, GroupProgress* progress,
             DedupIndex* dedup, ConsumerGroups* groups)
      : group_(std::move(group)),
        topics_(topics),
        holds_(holds),
        progress_(progress),
        dedup_(dedup),
        groups_(groups) {}

  // NOT_FOUND for an unknown topic, INVALID_ARGUMENT for a queue out of
  // range or a bad group name (Seal: also this group), each naming it;
  // nothing changes then. Import checks the whole request before it
  // creates the topic or holds the queue, and imports of one queue run one
  // at a time.
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
  absl::Status CheckImport(const v1::ImportQueueRequest& req);
  absl::Mutex* ImportLock(const std::string& topic, int queue);

  const std::string group_;
  TopicCatalog* topics_;
  QueueHolds* holds_;
  GroupProgress* progress_;
  DedupIndex* dedup_;
  ConsumerGroups* groups_;
  absl::Mutex importing_mu_;
  // One lock a queue, held by an import from its check to its last write.
  std::map<std::pair<std::string, int>, std::unique_ptr<absl::Mutex>> importing_
      ABSL_GUARDED_BY(importing_mu_);
};

}  // namespace formica::dms
