// TopicCatalog: the topics of one dmsd, from <data_dir>/topics. At start it
// opens every topic directory (renaming ones an earlier dmsd named, moving
// damaged ones aside when asked to, refusing to start otherwise), makes
// sure no offset once handed out is handed out again, and has the dedup
// index catch up with each log. Thread-safe; a TopicState lives as long as
// the catalog.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/clock.h"
#include "group_progress.h"
#include "topic.h"

namespace formica::dms {

class DedupIndex;
struct DedupCall;

// A topic and the bookkeeping of producer dedup keys in it.
struct TopicState {
  std::string name;
  std::shared_ptr<Topic> topic;  // shared with a replicated group's store
  // Dedup keys being stored now (a second send with one waits for it), and
  // per queue the offsets of dedup'd messages written but not indexed yet.
  absl::Mutex dedup_mu;
  absl::flat_hash_set<std::string> pending ABSL_GUARDED_BY(dedup_mu);
  std::vector<std::multiset<uint64_t>> unindexed ABSL_GUARDED_BY(dedup_mu);
  std::vector<uint64_t> marks ABSL_GUARDED_BY(dedup_mu);
  // Calls waiting for a key in `pending`; started again when a call ends.
  std::vector<std::shared_ptr<DedupCall>> parked ABSL_GUARDED_BY(dedup_mu);
};

// The topics of a replicated broker group's member (BrokerGroup, docs/ha.md),
// which the catalog of the broker its leader runs takes instead of opening
// <data_dir>/topics. Thread-safe.
class SharedTopics {
 public:
  virtual ~SharedTopics() = default;
  virtual std::vector<std::string> Names() = 0;
  virtual std::shared_ptr<Topic> Find(const std::string& name) = 0;
  // Creates the topic on every member of the group; returns it once it
  // exists here.
  virtual absl::StatusOr<std::shared_ptr<Topic>> Create(const std::string& name, int queues) = 0;
};

struct CatalogOptions {
  std::string data_dir;  // topics live in <data_dir>/topics
  bool sync = true;
  int64_t segment_bytes = 64ll << 20;
  uint32_t max_record_bytes = 16u << 20;
  // Move a topic directory that cannot be opened to <data_dir>/quarantine
  // instead of refusing to start.
  bool quarantine_damaged_topics = false;
  // A replicated broker group's topics (borrowed): OpenAll takes these
  // instead of reading <data_dir>/topics, and Open creates through them.
  SharedTopics* shared_topics = nullptr;
};

class TopicCatalog {
 public:
  // All borrowed.
  TopicCatalog(CatalogOptions options, GroupProgress* progress, DedupIndex* dedup, Clock* clock);

  // Opens every topic in <data_dir>/topics, then creates those of `create`
  // (name -> queues) that are missing. DATA_LOSS for a damaged topic
  // directory unless quarantine_damaged_topics.
  absl::Status OpenAll(const std::map<std::string, int>& create);

  // Opens (or creates, with `queues` > 0) a topic. ALREADY_EXISTS when it
  // exists with another queue count.
  absl::StatusOr<TopicState*> Open(const std::string& name, int queues) ABSL_LOCKS_EXCLUDED(mu_);

  TopicState* Find(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<TopicState*> All() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Status OpenShared(const std::map<std::string, int>& create);
  absl::Status NeverReuseOffsets(TopicState& t, const std::vector<RecoveryReport>& reports)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Damaged(const std::string& dir, absl::string_view why);

  CatalogOptions options_;
  GroupProgress* progress_;
  DedupIndex* dedup_;
  Clock* clock_;

  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<TopicState>> topics_ ABSL_GUARDED_BY(mu_);
  // At start: who has progress in which topic (read once for all topics).
  std::map<std::string, std::vector<GroupQueue>> progress_at_start_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::dms
