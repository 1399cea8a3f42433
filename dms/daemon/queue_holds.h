// QueueHolds: the queues of this broker group that are moving to or from
// another group (formicactl dms move-queue, docs/dms.md). A queue moving
// out is sealed: produce to it is refused FAILED_PRECONDITION naming the
// group it moves to, and it is not delivered. A queue moving in is held
// from the first record imported until it is opened: not produced to, not
// delivered. Holds are records of the meta store, so a broker group
// replicates them and they survive restarts. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace formica::dms {

class MetaStore;

struct QueueHold {
  bool sealed = false;  // moving out (else: moving in, not opened yet)
  std::string group;    // where it moves to (sealed) or comes from
};

class QueueHolds {
 public:
  explicit QueueHolds(MetaStore* meta) : meta_(meta) {}  // borrowed

  // Reads the holds from the meta store.
  absl::Status Load();

  // A produce about to write to `queues` of `topic`: FAILED_PRECONDITION
  // when one is held (naming the group a sealed one moved to), else they
  // count as written to until Done.
  absl::Status Admit(const std::string& topic, const std::vector<int>& queues);
  void Done(const std::string& topic, const std::vector<int>& queues);

  // Whether `queue` of `topic` is delivered to consumers here.
  bool Deliverable(const std::string& topic, int queue);
  std::optional<QueueHold> Find(const std::string& topic, int queue);

  // Seals the queue for a move to `group` (durably), then waits up to
  // `drain` for the produces admitted before to end, so that once this
  // returns OK every message this group will ever take in the queue is in
  // its log. A repeat for the same group is OK; FAILED_PRECONDITION when
  // it is sealed for another group.
  absl::Status Seal(const std::string& topic, int queue, const std::string& group,
                    absl::Duration drain);
  // Holds a queue moving in from `group` (durably). A queue sealed here
  // (moving back) turns into one moving in.
  absl::Status Arrive(const std::string& topic, int queue, const std::string& group);
  // Ends the queue's hold (durably): it is produced to and delivered here.
  absl::Status Open(const std::string& topic, int queue);

 private:
  using Key = std::pair<std::string, int>;
  absl::Status Write(const std::string& topic, int queue, const std::optional<QueueHold>& hold);

  MetaStore* meta_;
  absl::Mutex mu_;
  std::map<Key, QueueHold> holds_ ABSL_GUARDED_BY(mu_);
  std::map<Key, int> in_flight_ ABSL_GUARDED_BY(mu_);
  bool any_ ABSL_GUARDED_BY(mu_) = false;
};

// "the default broker group" for "", else "broker group 'NAME'".
std::string GroupName(const std::string& group);

// The message of a produce refused because its queue moved to `group`.
std::string MovedMessage(const std::string& topic, int queue, const std::string& group);

}  // namespace formica::dms
