#include "produce_engine.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "dms_names.h"
#include "now_ms.h"
#include "queue_holds.h"

namespace formica::dms {
namespace {

constexpr int kMaxKeyBytes = 1024;
constexpr int kMaxTags = 32;
constexpr int kMaxTagBytes = 128;
constexpr int kMaxDedupKeyBytes = 256;

}  // namespace

// A produce with dedup keys, from its start to its answer.
struct DedupCall {
  TopicState* topic = nullptr;
  std::shared_ptr<const std::vector<v1::StoredMessage>> stored;
  std::vector<int> queues;  // of each stored message
  v1::ProduceReply* reply = nullptr;
  std::function<void(absl::Status)> finish;
  std::vector<int> to_store;              // indexes of the messages written
  std::vector<std::pair<int, int>> same;  // (i, earlier index in this request)
  std::vector<std::string> claimed;       // keys this call put in `pending`
  std::vector<Produced> placed;           // where to_store[j] went
  std::map<int, uint64_t> last;           // per queue written: the last offset
};

ProduceEngine::ProduceEngine(ProduceOptions options, TopicCatalog* topics, DedupIndex* dedup,
                             const DiskWatermark* disk, Clock* clock)
    : options_(std::move(options)), topics_(topics), dedup_(dedup), disk_(disk), clock_(clock) {}

absl::Status ProduceEngine::Check(int i, const v1::Message& m, int64_t now_ms) const {
  auto bad = [i](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("message ", i, ": ", why));
  };
  if (static_cast<int64_t>(m.body().size()) > options_.max_body_bytes) {
    return bad(absl::StrCat("the body of ", m.body().size(), " bytes is over the limit of ",
                            options_.max_body_bytes, " (limits.max_body_bytes)"));
  }
  if (m.key().size() > kMaxKeyBytes) {
    return bad(absl::StrCat("the key is over ", kMaxKeyBytes, " bytes"));
  }
  if (m.tags_size() > kMaxTags) return bad(absl::StrCat("more than ", kMaxTags, " tags"));
  for (const std::string& tag : m.tags()) {
    if (tag.empty() || tag.size() > kMaxTagBytes) {
      return bad(absl::StrCat("a tag must be 1 to ", kMaxTagBytes, " bytes"));
    }
  }
  if (m.dedup_key().size() > kMaxDedupKeyBytes) {
    return bad(absl::StrCat("the dedup key is over ", kMaxDedupKeyBytes, " bytes"));
  }
  size_t props = 0;
  for (const auto& [k, v] : m.properties()) props += k.size() + v.size();
  if (props > kMaxPropertiesBytes) {
    return bad(absl::StrCat("properties over ", kMaxPropertiesBytes, " bytes"));
  }
  if (m.delay_ms() < 0 || m.deliver_at_unix_ms() < 0) {
    return bad("delay_ms and deliver_at_unix_ms cannot be negative");
  }
  int64_t max_ms = absl::ToInt64Milliseconds(options_.max_delay);
  if (m.delay_ms() > max_ms || m.deliver_at_unix_ms() > now_ms + max_ms) {
    return bad(absl::StrCat("the delay is over the limit of ",
                            absl::FormatDuration(options_.max_delay), " (limits.max_delay)"));
  }
  return absl::OkStatus();
}

v1::StoredMessage ProduceEngine::Stored(const v1::Message& m, const std::string& producer_group,
                                        int64_t now) const {
  v1::StoredMessage s;
  s.set_key(m.key());
  *s.mutable_tags() = m.tags();
  *s.mutable_properties() = m.properties();
  s.set_body(m.body());
  s.set_born_unix_ms(now);
  int64_t at = std::max(m.deliver_at_unix_ms(), m.delay_ms() > 0 ? now + m.delay_ms() : 0);
  if (at > now) s.set_deliver_at_unix_ms(at);
  s.set_producer_group(producer_group);
  s.set_dedup_key(m.dedup_key());
  return s;
}

// The queue the broker picks: the key's, or for a keyless message the next
// in turn that is not held (sealed for a move, or moving in), so that a
// client that names no queue is not refused for a queue it did not choose.
int ProduceEngine::PickQueue(TopicState& t, const std::string& key) {
  int q = t.topic->QueueFor(key);
  if (!key.empty() || holds_ == nullptr) return q;
  for (int tries = 1; tries < t.topic->queues() && holds_->Find(t.name, q).has_value(); ++tries) {
    q = t.topic->QueueFor(key);
  }
  return q;
}

// A committed half message goes into its topic once (its dedup key).
absl::StatusOr<v1::Receipt> ProduceEngine::ProduceOne(const std::string& topic,
                                                      v1::StoredMessage m) {
  TopicState* t = topics_->Find(topic);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("topic '", topic, "' is gone"));
  v1::ProduceReply reply;
  reply.add_receipts();
  std::vector<int> queues = {PickQueue(*t, m.key())};
  auto one = std::make_shared<std::vector<v1::StoredMessage>>();
  one->push_back(std::move(m));
  absl::Notification done;
  absl::Status result;
  std::function<void(absl::Status)> finish = [&](absl::Status st) {
    result = st;
    done.Notify();
  };
  if (absl::Status st = Admit(*t, queues, &finish); !st.ok()) return st;
  ProduceDedup(*t, std::move(one), std::move(queues), &reply, std::move(finish));
  done.WaitForNotification();
  if (!result.ok()) return result;
  return reply.receipts(0);
}

absl::StatusOr<v1::StoredMessage> ProduceEngine::PrepareHalf(const std::string& topic,
                                                             const std::string& producer_group,
                                                             const v1::Message& message) {
  if (topics_->Find(topic) == nullptr) {
    return absl::NotFoundError(absl::StrCat("topic '", topic, "' does not exist; create it first"));
  }
  if (absl::Status st = ValidName("producer_group", producer_group); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a transactional message needs its producer group (asked when it is undecided): ",
        st.message()));
  }
  int64_t now = NowMs(*clock_);
  if (absl::Status st = Check(0, message, now); !st.ok()) return st;
  if (std::string full = disk_->refusal(); !full.empty()) {
    return absl::ResourceExhaustedError(full);
  }
  return Stored(message, producer_group, now);
}

// Validates and stores; `finish` runs exactly once, when the messages are
// durable or with the error.
void ProduceEngine::Produce(const v1::ProduceRequest& req, v1::ProduceReply* reply,
                            std::function<void(absl::Status)> finish) {
  TopicState* t = nullptr;
  auto stored = std::make_shared<std::vector<v1::StoredMessage>>();
  std::vector<int> queues;
  absl::Status st = Prepare(req, reply, &t, stored.get(), &queues);
  if (st.ok()) st = Admit(*t, queues, &finish);
  if (!st.ok()) {
    finish(st);
    return;
  }
  bool any_dedup = std::any_of(stored->begin(), stored->end(),
                               [](const v1::StoredMessage& s) { return !s.dedup_key().empty(); });
  if (any_dedup) {
    ProduceDedup(*t, std::move(stored), std::move(queues), reply, std::move(finish));
    return;
  }
  ProducePlain(*t, std::move(stored), queues, reply, std::move(finish));
}

// The queues a produce writes to are admitted by the holds (none moving
// between broker groups) and counted until `finish` runs.
absl::Status ProduceEngine::Admit(TopicState& t, const std::vector<int>& queues,
                                  std::function<void(absl::Status)>* finish) {
  if (holds_ == nullptr) return absl::OkStatus();
  std::vector<int> touched(queues);
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  if (absl::Status st = holds_->Admit(t.name, touched); !st.ok()) return st;
  *finish = [holds = holds_, name = t.name, touched = std::move(touched),
             inner = std::move(*finish)](absl::Status st) {
    holds->Done(name, touched);
    inner(st);
  };
  return absl::OkStatus();
}

absl::Status ProduceEngine::Prepare(const v1::ProduceRequest& req, v1::ProduceReply* reply,
                                    TopicState** topic, std::vector<v1::StoredMessage>* stored,
                                    std::vector<int>* queues) {
  TopicState* t = topics_->Find(req.topic());
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("topic '", req.topic(), "' does not exist; create it first"));
  }
  if (req.messages_size() == 0) return absl::InvalidArgumentError("no messages to produce");
  if (!req.producer_group().empty()) {
    if (absl::Status st = ValidName("producer_group", req.producer_group()); !st.ok()) return st;
  }
  if (req.messages_size() > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat(req.messages_size(),
                                                   " messages in one produce; the limit is ",
                                                   options_.max_batch, " (limits.max_batch)"));
  }
  if (std::string full = disk_->refusal(); !full.empty()) {
    return absl::ResourceExhaustedError(full);
  }
  int64_t now = NowMs(*clock_);
  int n = req.messages_size();
  if (req.queues_size() > 0 && req.queues_size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("queues names ", req.queues_size(),
                                                   " queues for ", n, " messages; give one each"));
  }
  for (int q : req.queues()) {
    if (q < 0 || q >= t->topic->queues()) {
      return absl::InvalidArgumentError(absl::StrCat("queue ", q, " does not exist; topic '",
                                                     t->name, "' has ", t->topic->queues(),
                                                     " queues"));
    }
  }
  stored->resize(n);
  for (int i = 0; i < n; ++i) {
    const v1::Message& m = req.messages(i);
    if (absl::Status st = Check(i, m, now); !st.ok()) return st;
    (*stored)[i] = Stored(m, req.producer_group(), now);
  }
  queues->resize(n);
  for (int i = 0; i < n; ++i) {
    (*queues)[i] = req.queues_size() > 0 ? req.queues(i) : PickQueue(*t, req.messages(i).key());
  }
  reply->mutable_receipts()->Reserve(n);
  for (int i = 0; i < n; ++i) reply->add_receipts();
  *topic = t;
  return absl::OkStatus();
}

// Writes each queue's messages, then finishes once every queue touched
// has synced past them.
void ProduceEngine::ProducePlain(TopicState& t,
                                 std::shared_ptr<std::vector<v1::StoredMessage>> stored,
                                 const std::vector<int>& queues, v1::ProduceReply* reply,
                                 std::function<void(absl::Status)> finish) {
  std::vector<const v1::StoredMessage*> ptrs;
  for (const v1::StoredMessage& s : *stored) ptrs.push_back(&s);
  std::vector<Produced> placed;
  std::map<int, uint64_t> last;
  if (absl::Status st = t.topic->WriteBatch(ptrs, queues, &placed, &last); !st.ok()) {
    finish(st);
    return;
  }
  for (size_t i = 0; i < placed.size(); ++i) {
    reply->mutable_receipts(static_cast<int>(i))->set_queue(placed[i].queue);
    reply->mutable_receipts(static_cast<int>(i))->set_offset(placed[i].offset);
  }
  struct Pending {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);
    std::function<void(absl::Status)> finish;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = last.size();
  pending->finish = std::move(finish);
  for (const auto& [q, offset] : last) {
    t.topic->WhenDurable(q, offset, [pending](absl::Status st) {
      absl::Status outcome;
      {
        absl::MutexLock lock(&pending->mu);
        if (!st.ok() && pending->error.ok()) pending->error = st;
        if (--pending->left > 0) return;
        outcome = pending->error;
      }
      pending->finish(outcome);
    });
  }
}

// With dedup keys: a key seen within the window answers with the first
// send's receipt; a key being stored by another call now parks this call
// until that one ends. `finish` runs once, when the new messages are
// durable and indexed or with the error; no thread waits for the disk.
void ProduceEngine::ProduceDedup(TopicState& t,
                                 std::shared_ptr<const std::vector<v1::StoredMessage>> stored,
                                 std::vector<int> queues, v1::ProduceReply* reply,
                                 std::function<void(absl::Status)> finish) {
  auto call = std::make_shared<DedupCall>();
  call->topic = &t;
  call->stored = std::move(stored);
  call->queues = std::move(queues);
  call->reply = reply;
  call->finish = std::move(finish);
  StartDedup(std::move(call));
}

void ProduceEngine::StartDedup(std::shared_ptr<DedupCall> call) {
  TopicState& t = *call->topic;
  absl::Status placed;
  {
    absl::MutexLock lock(&t.dedup_mu);
    for (const v1::StoredMessage& s : *call->stored) {
      if (!s.dedup_key().empty() && t.pending.contains(s.dedup_key())) {
        t.parked.push_back(std::move(call));
        return;
      }
    }
    placed = PlaceDedup(t, *call);
  }
  if (!placed.ok()) {
    RestartParked(t);
    call->finish(placed);
    return;
  }
  struct Syncs {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);
  };
  if (call->last.empty()) {
    EndDedup(std::move(call), absl::OkStatus());
    return;
  }
  auto syncs = std::make_shared<Syncs>();
  {
    absl::MutexLock lock(&syncs->mu);
    syncs->left = call->last.size();
  }
  std::map<int, uint64_t> last = call->last;
  for (const auto& [q, offset] : last) {
    t.topic->WhenDurable(q, offset, [this, call, syncs](absl::Status st) {
      absl::Status outcome;
      {
        absl::MutexLock lock(&syncs->mu);
        if (!st.ok() && syncs->error.ok()) syncs->error = st;
        if (--syncs->left > 0) return;
        outcome = syncs->error;
      }
      EndDedup(call, outcome);
    });
  }
}

// Looks the keys up and writes the new messages, registering each offset
// before any later mark could pass it; the syncs come after.
absl::Status ProduceEngine::PlaceDedup(TopicState& t, DedupCall& call) {
  const std::vector<v1::StoredMessage>& stored = *call.stored;
  int n = static_cast<int>(stored.size());
  int64_t oldest = dedup_->OldestMs();
  absl::flat_hash_map<std::string, int> first;
  auto release = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t.dedup_mu) {
    for (const std::string& k : call.claimed) t.pending.erase(k);
    call.claimed.clear();
  };
  for (int i = 0; i < n; ++i) {
    const std::string& key = stored[i].dedup_key();
    if (!key.empty()) {
      if (auto it = first.find(key); it != first.end()) {
        call.same.emplace_back(i, it->second);
        continue;
      }
      absl::StatusOr<std::optional<Produced>> seen = dedup_->Lookup(t, key, oldest);
      if (!seen.ok()) {
        release();
        return seen.status();
      }
      if (seen->has_value()) {
        v1::Receipt* r = call.reply->mutable_receipts(i);
        r->set_queue((*seen)->queue);
        r->set_offset((*seen)->offset);
        r->set_duplicate(true);
        continue;
      }
      first[key] = i;
      t.pending.insert(key);
      call.claimed.push_back(key);
    }
    call.to_store.push_back(i);
  }
  // Each queue's messages in one write (in a broker group, one entry of
  // its log per queue, not per message).
  std::vector<const v1::StoredMessage*> messages;
  std::vector<int> queues;
  for (int i : call.to_store) {
    messages.push_back(&stored[i]);
    queues.push_back(call.queues[i]);
  }
  std::vector<Produced> placed;
  std::map<int, uint64_t> last;
  absl::Status written = t.topic->WriteBatch(messages, queues, &placed, &last);
  for (const Produced& p : placed) {
    // On an error, the queues written before it (those in `last`) stay
    // unindexed, pinning their marks: a restart indexes them from the log.
    if (last.count(p.queue) > 0) t.unindexed[p.queue].insert(p.offset);
  }
  if (!written.ok()) {
    release();
    return written;
  }
  call.placed = std::move(placed);
  call.last = std::move(last);
  return absl::OkStatus();
}

// The writes of `call` are durable (or `synced` says why not): index
// them, free their keys for parked calls, and answer. The index write (in
// a broker group, a commit of its log) runs outside the topic's lock, so
// the calls of a topic index at once rather than one after another; each
// call's offsets stay unindexed until its own write succeeds, so no mark
// written meanwhile passes them (a restart indexes from the mark on).
void ProduceEngine::EndDedup(std::shared_ptr<DedupCall> call, absl::Status synced) {
  TopicState& t = *call->topic;
  const std::vector<v1::StoredMessage>& stored = *call->stored;
  absl::Status indexed;
  std::vector<std::pair<std::string, DedupEntry>> entries;
  std::map<int, uint64_t> marks;  // as they are once these are indexed
  if (synced.ok()) {
    for (size_t j = 0; j < call->placed.size(); ++j) {
      const Produced& p = call->placed[j];
      const v1::StoredMessage& s = stored[call->to_store[j]];
      if (!s.dedup_key().empty()) {
        entries.emplace_back(s.dedup_key(), DedupEntry{p.queue, p.offset, s.born_unix_ms()});
      }
    }
    std::map<int, std::set<uint64_t>> own;
    for (const Produced& p : call->placed) own[p.queue].insert(p.offset);
    absl::MutexLock lock(&t.dedup_mu);
    for (const auto& [q, offset] : call->last) {
      uint64_t mark = offset + 1;
      for (uint64_t u : t.unindexed[q]) {  // the first offset another call has not indexed
        if (own[q].count(u) == 0) {
          mark = u;
          break;
        }
      }
      if (mark > t.marks[q]) marks[q] = mark;
    }
  }
  // Nothing to record (every message a duplicate): no write at all.
  if (synced.ok() && (!entries.empty() || !marks.empty())) {
    indexed = dedup_->Index(t, entries, marks);
  }
  {
    absl::MutexLock lock(&t.dedup_mu);
    if (synced.ok() && indexed.ok()) {
      for (const Produced& p : call->placed) {
        t.unindexed[p.queue].erase(t.unindexed[p.queue].find(p.offset));
      }
      for (const auto& [q, mark] : marks) t.marks[q] = std::max(t.marks[q], mark);
    }
    // Not indexed (or not synced): their offsets pin the marks until a
    // restart indexes them from the log.
    for (const std::string& k : call->claimed) t.pending.erase(k);
  }
  RestartParked(t);
  if (!synced.ok()) {
    call->finish(synced);
    return;
  }
  if (!indexed.ok()) {
    call->finish(indexed);
    return;
  }
  v1::ProduceReply* reply = call->reply;
  for (size_t j = 0; j < call->placed.size(); ++j) {
    v1::Receipt* r = reply->mutable_receipts(call->to_store[j]);
    r->set_queue(call->placed[j].queue);
    r->set_offset(call->placed[j].offset);
  }
  for (const auto& [i, earlier] : call->same) {
    *reply->mutable_receipts(i) = reply->receipts(earlier);
    reply->mutable_receipts(i)->set_duplicate(true);
  }
  call->finish(absl::OkStatus());
}

// Calls parked on keys that may be free now try again.
void ProduceEngine::RestartParked(TopicState& t) {
  std::vector<std::shared_ptr<DedupCall>> parked;
  {
    absl::MutexLock lock(&t.dedup_mu);
    parked.swap(t.parked);
  }
  for (std::shared_ptr<DedupCall>& call : parked) StartDedup(std::move(call));
}

}  // namespace formica::dms
