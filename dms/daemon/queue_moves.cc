#include "queue_moves.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "consumer_groups.h"
#include "dedup_index.h"
#include "dms_names.h"
#include "formica/internal/dms_placement.h"
#include "group_progress.h"
#include "queue_holds.h"
#include "topic_catalog.h"

namespace formica::dms {

absl::StatusOr<TopicState*> QueueMoves::Find(const std::string& topic, int queue) {
  TopicState* t = topics_->Find(topic);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat("topic '", topic, "' does not exist here"));
  }
  if (queue < 0 || queue >= t->topic->queues()) {
    return absl::InvalidArgumentError(absl::StrCat("queue ", queue, " does not exist; topic '",
                                                   topic, "' has ", t->topic->queues(), " queues"));
  }
  return t;
}

absl::Status QueueMoves::Seal(const v1::SealQueueRequest& req, v1::SealQueueReply* reply) {
  absl::StatusOr<TopicState*> t = Find(req.topic(), req.queue());
  if (!t.ok()) return t.status();
  if (!req.to_group().empty()) {
    if (absl::Status st = ValidBrokerGroup("to_group", req.to_group()); !st.ok()) return st;
  }
  if (req.to_group() == group_) {
    return absl::InvalidArgumentError(
        absl::StrCat("to_group: queue ", req.queue(), " of topic '", req.topic(), "' is served by ",
                     GroupName(group_), " (this dmsd's) already; a queue moves to another group"));
  }
  if (absl::Status st = holds_->Seal(req.topic(), req.queue(), req.to_group(), kDrain); !st.ok()) {
    return st;
  }
  SPDLOG_INFO("topic {} queue {}: sealed for its move to broker group '{}'", req.topic(),
              req.queue(), req.to_group());
  reply->set_first_offset((*t)->topic->first_offset(req.queue()));
  reply->set_end_offset((*t)->topic->end_offset(req.queue()));
  return absl::OkStatus();
}

absl::Status QueueMoves::Read(const v1::ReadQueueRequest& req, v1::ReadQueueReply* reply) {
  absl::StatusOr<TopicState*> t = Find(req.topic(), req.queue());
  if (!t.ok()) return t.status();
  Topic& topic = *(*t)->topic;
  int q = req.queue();
  uint64_t from = std::max(req.from(), topic.first_offset(q));
  size_t max = req.max() > 0 ? static_cast<size_t>(std::min(req.max(), 4096)) : 512;
  // A few records at a time, up to kMaxReadBytes (at least one record), so
  // that neither the broker nor the answer holds a queue of large messages.
  size_t bytes = 0;
  bool full = false;
  while (!full && static_cast<size_t>(reply->records_size()) < max && from < topic.end_offset(q)) {
    std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
    size_t step = std::min<size_t>(16, max - reply->records_size());
    if (absl::Status st = topic.Read(q, from, step, &got); !st.ok()) return st;
    if (got.empty()) break;
    for (auto& [offset, m] : got) {
      size_t size = m.ByteSizeLong();
      full = reply->records_size() > 0 && bytes + size > kMaxReadBytes;
      if (full) break;
      bytes += size;
      v1::QueueRecord* r = reply->add_records();
      r->set_offset(offset);
      *r->mutable_message() = std::move(m);
      from = offset + 1;
    }
  }
  reply->set_first_offset(topic.first_offset(q));
  reply->set_end_offset(topic.end_offset(q));
  if (std::optional<QueueHold> hold = holds_->Find(req.topic(), q); hold.has_value()) {
    reply->set_hold(hold->sealed ? v1::ReadQueueReply::SEALED : v1::ReadQueueReply::ARRIVING);
    reply->set_hold_group(hold->group);
  }
  if (reply->records_size() > 0) return absl::OkStatus();  // progress comes at the end
  absl::StatusOr<std::vector<GroupQueue>> queues = progress_->Queues();
  if (!queues.ok()) return queues.status();
  for (const GroupQueue& gq : *queues) {
    if (gq.topic != req.topic() || gq.queue != q) continue;
    absl::StatusOr<QueueProgress> p = progress_->Load(gq.group, gq.topic, q);
    if (!p.ok()) return p.status();
    if (!p->known) continue;
    v1::QueueCommit* c = reply->add_progress();
    c->set_name(gq.group);
    c->set_committed(p->committed);
    for (uint64_t a : p->acked) c->add_acked(a);
  }
  return absl::OkStatus();
}

// Everything an import is given, before it changes anything.
absl::Status QueueMoves::CheckImport(const v1::ImportQueueRequest& req) {
  if (absl::Status st = ValidName("topic name", req.topic()); !st.ok()) return st;
  if (!req.from_group().empty()) {
    if (absl::Status st = ValidBrokerGroup("from_group", req.from_group()); !st.ok()) return st;
  }
  if (req.queues() < 1 || req.queues() > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("queues: a topic has 1 to 1024 queues, not ", req.queues()));
  }
  if (req.queue() < 0 || req.queue() >= req.queues()) {
    return absl::InvalidArgumentError(absl::StrCat("queue ", req.queue(),
                                                   " does not exist; topic '", req.topic(),
                                                   "' has ", req.queues(), " queues"));
  }
  for (int i = 0; i < req.records_size(); ++i) {
    if (req.records(i).offset() != req.first_offset() + static_cast<uint64_t>(i)) {
      return absl::InvalidArgumentError(
          absl::StrCat("record ", i, " is at offset ", req.records(i).offset(),
                       "; the records must follow each other from ", req.first_offset()));
    }
  }
  for (int i = 0; i < req.progress_size(); ++i) {
    if (req.progress(i).name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("progress ", i, ": a name is required"));
    }
  }
  return absl::OkStatus();
}

absl::Mutex* QueueMoves::ImportLock(const std::string& topic, int queue) {
  absl::MutexLock lock(&importing_mu_);
  std::unique_ptr<absl::Mutex>& mu = importing_[{topic, queue}];
  if (mu == nullptr) mu = std::make_unique<absl::Mutex>();
  return mu.get();
}

absl::Status QueueMoves::Import(const v1::ImportQueueRequest& req, v1::ImportQueueReply* reply) {
  if (absl::Status st = CheckImport(req); !st.ok()) return st;
  int q = req.queue();
  // Two imports of one queue at once (two runs of a move) would both
  // append from the same end: the check, the hold and the writes are one
  // step per queue.
  absl::MutexLock importing(ImportLock(req.topic(), q));
  TopicState* t = topics_->Find(req.topic());
  if (t != nullptr && t->topic->queues() != req.queues()) {
    return absl::FailedPreconditionError(
        absl::StrCat("topic '", req.topic(), "' has ", t->topic->queues(), " queues here, not ",
                     req.queues(), " as in the group it moves from"));
  }
  std::optional<QueueHold> hold = holds_->Find(req.topic(), q);
  if (t != nullptr && !hold.has_value() && t->topic->end_offset(q) > req.first_offset()) {
    // An open queue with records of its own where these would go: not a
    // queue moving in.
    return absl::FailedPreconditionError(
        absl::StrCat("queue ", q, " of topic '", req.topic(),
                     "' is served here and holds records up to ", t->topic->end_offset(q),
                     "; it cannot take another group's records from ", req.first_offset()));
  }
  if (t == nullptr) {
    absl::StatusOr<TopicState*> created = topics_->Open(req.topic(), req.queues());
    if (!created.ok()) return created.status();
    t = *created;
  }
  if (absl::Status st = holds_->Arrive(req.topic(), q, req.from_group()); !st.ok()) return st;
  std::vector<v1::StoredMessage> records;
  records.reserve(req.records_size());
  for (const v1::QueueRecord& r : req.records()) records.push_back(r.message());
  absl::StatusOr<uint64_t> appended = t->topic->Import(q, req.first_offset(), records);
  if (!appended.ok()) return appended.status();
  if (absl::Status st = IndexDedupKeys(*t, q, req, *appended); !st.ok()) return st;
  for (const v1::QueueCommit& c : req.progress()) {
    std::vector<uint64_t> acked(c.acked().begin(), c.acked().end());
    if (absl::Status st = progress_->Ack(c.name(), req.topic(), q, acked, c.committed());
        !st.ok()) {
      return st;
    }
  }
  reply->set_end_offset(t->topic->end_offset(q));
  reply->set_appended(*appended);
  return absl::OkStatus();
}

// The dedup index learns the keys of the records appended (the last
// `appended` of the request), and the queue's mark moves past them.
absl::Status QueueMoves::IndexDedupKeys(TopicState& t, int queue, const v1::ImportQueueRequest& req,
                                        uint64_t appended) {
  int64_t oldest = dedup_->OldestMs();
  std::vector<std::pair<std::string, DedupEntry>> entries;
  for (int i = req.records_size() - static_cast<int>(appended); i < req.records_size(); ++i) {
    const v1::QueueRecord& r = req.records(i);
    if (r.message().dedup_key().empty() || r.message().born_unix_ms() < oldest) continue;
    entries.emplace_back(r.message().dedup_key(),
                         DedupEntry{queue, r.offset(), r.message().born_unix_ms()});
  }
  absl::MutexLock lock(&t.dedup_mu);
  std::map<int, uint64_t> marks;
  uint64_t end = t.topic->end_offset(queue);
  bool settled = static_cast<size_t>(queue) < t.marks.size() && t.unindexed[queue].empty();
  if (settled && t.marks[queue] < end) marks[queue] = end;
  if (entries.empty() && marks.empty()) return absl::OkStatus();
  if (absl::Status st = dedup_->Index(t, entries, marks); !st.ok()) return st;
  for (const auto& [q, mark] : marks) t.marks[q] = mark;
  return absl::OkStatus();
}

absl::Status QueueMoves::Open(const v1::OpenQueueRequest& req) {
  absl::StatusOr<TopicState*> t = Find(req.topic(), req.queue());
  if (!t.ok()) return t.status();
  std::optional<QueueHold> hold = holds_->Find(req.topic(), req.queue());
  if (!hold.has_value()) return absl::OkStatus();  // open already
  if (hold->sealed) {
    return absl::FailedPreconditionError(
        absl::StrCat("queue ", req.queue(), " of topic '", req.topic(),
                     "' is sealed here: it moves away, to broker group '", hold->group, "'"));
  }
  // The cursors start from the imported progress before anything of the
  // queue is delivered.
  if (absl::Status st = groups_->ReloadQueue(req.topic(), req.queue()); !st.ok()) return st;
  if (absl::Status st = holds_->Open(req.topic(), req.queue()); !st.ok()) return st;
  SPDLOG_INFO("topic {} queue {}: moved in from broker group '{}', open", req.topic(), req.queue(),
              hold->group);
  return absl::OkStatus();
}

}  // namespace formica::dms
