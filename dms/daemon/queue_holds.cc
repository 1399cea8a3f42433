#include "queue_holds.h"

#include "absl/strings/str_cat.h"
#include "meta_store.h"

namespace formica::dms {
std::string GroupName(const std::string& group) {
  return group.empty() ? "the default broker group" : absl::StrCat("broker group '", group, "'");
}

std::string MovedMessage(const std::string& topic, int queue, const std::string& group) {
  return absl::StrCat("queue ", queue, " of topic '", topic, "' moved to ", GroupName(group),
                      "; send it there (read the topic's placement again)");
}

absl::Status QueueHolds::Load() {
  absl::StatusOr<std::vector<MetaStore::HoldRecord>> records = meta_->Holds();
  if (!records.ok()) return records.status();
  absl::MutexLock lock(&mu_);
  holds_.clear();
  for (const MetaStore::HoldRecord& r : *records) {
    size_t space = r.value.find(' ');
    if (space == std::string::npos) {
      return absl::DataLossError(absl::StrCat("the hold of queue ", r.queue, " of topic '", r.topic,
                                              "' is corrupt: '", r.value, "'"));
    }
    QueueHold h;
    h.sealed = r.value.substr(0, space) == "sealed";
    h.group = r.value.substr(space + 1);
    holds_[{r.topic, r.queue}] = h;
  }
  any_ = !holds_.empty();
  return absl::OkStatus();
}

absl::Status QueueHolds::Admit(const std::string& topic, const std::vector<int>& queues) {
  absl::MutexLock lock(&mu_);
  if (any_) {
    for (int q : queues) {
      auto it = holds_.find({topic, q});
      if (it == holds_.end()) continue;
      if (it->second.sealed) {
        return absl::FailedPreconditionError(MovedMessage(topic, q, it->second.group));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("queue ", q, " of topic '", topic, "' is moving here from ",
                       GroupName(it->second.group), " and is not open yet; try again shortly"));
    }
  }
  for (int q : queues) ++in_flight_[{topic, q}];
  return absl::OkStatus();
}

void QueueHolds::Done(const std::string& topic, const std::vector<int>& queues) {
  absl::MutexLock lock(&mu_);
  for (int q : queues) {
    auto it = in_flight_.find({topic, q});
    if (it != in_flight_.end() && --it->second == 0) in_flight_.erase(it);
  }
}

bool QueueHolds::Deliverable(const std::string& topic, int queue) {
  absl::MutexLock lock(&mu_);
  return !any_ || holds_.count({topic, queue}) == 0;
}

std::optional<QueueHold> QueueHolds::Find(const std::string& topic, int queue) {
  absl::MutexLock lock(&mu_);
  auto it = holds_.find({topic, queue});
  if (it == holds_.end()) return std::nullopt;
  return it->second;
}

absl::Status QueueHolds::Write(const std::string& topic, int queue,
                               const std::optional<QueueHold>& hold) {
  std::string value;
  if (hold.has_value()) value = absl::StrCat(hold->sealed ? "sealed " : "arriving ", hold->group);
  return meta_->PutHold(topic, queue, value);
}

absl::Status QueueHolds::Seal(const std::string& topic, int queue, const std::string& group,
                              absl::Duration drain) {
  {
    absl::MutexLock lock(&mu_);
    auto it = holds_.find({topic, queue});
    if (it != holds_.end() && it->second.sealed && it->second.group != group) {
      return absl::FailedPreconditionError(
          absl::StrCat("queue ", queue, " of topic '", topic, "' is already sealed for a move to ",
                       GroupName(it->second.group), ", not to ", GroupName(group)));
    }
    if (it != holds_.end() && !it->second.sealed) {
      return absl::FailedPreconditionError(
          absl::StrCat("queue ", queue, " of topic '", topic, "' is moving here from ",
                       GroupName(it->second.group), " and is not open yet"));
    }
    // The hold is taken before it is durable, so no produce is admitted
    // past it while it is written.
    holds_[{topic, queue}] = QueueHold{true, group};
    any_ = true;
  }
  if (absl::Status st = Write(topic, queue, QueueHold{true, group}); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto drained = [this, key = Key{topic, queue}]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_.count(key) == 0; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&drained), drain)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "queue ", queue, " of topic '", topic, "' is sealed, but produces to it were ",
        "still being written after ", absl::FormatDuration(drain), "; run the move again"));
  }
  return absl::OkStatus();
}

absl::Status QueueHolds::Arrive(const std::string& topic, int queue, const std::string& group) {
  {
    absl::MutexLock lock(&mu_);
    auto it = holds_.find({topic, queue});
    if (it != holds_.end() && !it->second.sealed) return absl::OkStatus();
    holds_[{topic, queue}] = QueueHold{false, group};
    any_ = true;
  }
  return Write(topic, queue, QueueHold{false, group});
}

absl::Status QueueHolds::Open(const std::string& topic, int queue) {
  if (absl::Status st = Write(topic, queue, std::nullopt); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  holds_.erase({topic, queue});
  any_ = !holds_.empty();
  return absl::OkStatus();
}

}  // namespace formica::dms
