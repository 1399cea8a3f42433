// ProduceEngine: stores producers' messages in their topics. A produce is
// answered once its messages are durable (from the thread whose fdatasync
// made them so; no thread waits for the disk on its behalf). Messages with
// dedup keys go through the dedup index: a key seen within the window
// answers with the first send's receipt, and a key being stored by another
// call now parks this call until that one ends. Knows nothing of gRPC.
// Thread-safe.
//
//   ProduceEngine engine(options, &catalog, &dedup, &disk, clock);
//   engine.Produce(request, &reply, [](absl::Status st) { ... answer ... });
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dedup_index.h"
#include "disk_watermark.h"
#include "formica/common/clock.h"
#include "formica/dms/v1/dms.pb.h"
#include "topic_catalog.h"

namespace formica::dms {

class QueueHolds;

// Room for the properties and framing of a message beside its body.
inline constexpr int kMaxPropertiesBytes = 64 << 10;

struct ProduceOptions {
  int64_t max_body_bytes = 4 << 20;
  int max_batch = 1000;  // messages in one Produce
  absl::Duration max_delay = absl::Hours(24 * 40);
};

class ProduceEngine {
 public:
  // All borrowed.
  ProduceEngine(ProduceOptions options, TopicCatalog* topics, DedupIndex* dedup,
                const DiskWatermark* disk, Clock* clock);

  // Queues moving between broker groups (borrowed): produce to one is
  // refused (QueueHolds::Admit). Unset: no queue is ever held.
  void UseHolds(QueueHolds* holds) { holds_ = holds; }

  // Validates and stores; `finish` runs exactly once, when the messages are
  // durable (`reply` holds their receipts) or with the error.
  void Produce(const v1::ProduceRequest& request, v1::ProduceReply* reply,
               std::function<void(absl::Status)> finish);

  // Stores one message (a committed half message) once per its dedup key;
  // returns when it is durable.
  absl::StatusOr<v1::Receipt> ProduceOne(const std::string& topic, v1::StoredMessage message);

  // A transactional message checked and made ready to keep until its
  // transaction ends.
  absl::StatusOr<v1::StoredMessage> PrepareHalf(const std::string& topic,
                                                const std::string& producer_group,
                                                const v1::Message& message);

 private:
  absl::Status Check(int i, const v1::Message& m, int64_t now_ms) const;
  v1::StoredMessage Stored(const v1::Message& m, const std::string& producer_group,
                           int64_t now) const;
  absl::Status Prepare(const v1::ProduceRequest& req, v1::ProduceReply* reply, TopicState** topic,
                       std::vector<v1::StoredMessage>* stored, std::vector<int>* queues);
  int PickQueue(TopicState& t, const std::string& key);
  absl::Status Admit(TopicState& t, const std::vector<int>& queues,
                     std::function<void(absl::Status)>* finish);
  void ProducePlain(TopicState& t, std::shared_ptr<std::vector<v1::StoredMessage>> stored,
                    const std::vector<int>& queues, v1::ProduceReply* reply,
                    std::function<void(absl::Status)> finish);
  void ProduceDedup(TopicState& t, std::shared_ptr<const std::vector<v1::StoredMessage>> stored,
                    std::vector<int> queues, v1::ProduceReply* reply,
                    std::function<void(absl::Status)> finish);
  void StartDedup(std::shared_ptr<DedupCall> call);
  absl::Status PlaceDedup(TopicState& t, DedupCall& call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t.dedup_mu);
  void EndDedup(std::shared_ptr<DedupCall> call, absl::Status synced);
  void RestartParked(TopicState& t);

  ProduceOptions options_;
  QueueHolds* holds_ = nullptr;
  TopicCatalog* topics_;
  DedupIndex* dedup_;
  const DiskWatermark* disk_;
  Clock* clock_;
};

}  // namespace formica::dms
