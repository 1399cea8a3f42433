#include "consumer_groups.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dms_names.h"
#include "queue_holds.h"

namespace formica::dms {
namespace {

constexpr int kMaxInFlightPerConsumer = 10000;
constexpr size_t kMaxMessagesPerReply = 256;
// A Consume reply's encoded size: gRPC's default limit on a message a client
// receives, so a client that keeps it gets every reply; larger only when one
// message alone is.
constexpr size_t kMaxReplyBytes = 4 << 20;

bool TagsMatch(const absl::flat_hash_set<std::string>& wanted, const v1::StoredMessage& m) {
  if (wanted.empty()) return true;
  for (const std::string& t : m.tags()) {
    if (wanted.contains(t)) return true;
  }
  return false;
}

}  // namespace

ConsumerGroups::ConsumerGroups(GroupOptions options, TopicCatalog* topics, GroupProgress* progress,
                               DeadLetters* letters, Clock* clock)
    : options_(std::move(options)),
      topics_(topics),
      progress_(progress),
      letters_(letters),
      clock_(clock) {}

std::shared_ptr<Member> ConsumerGroups::NewMember() {
  auto member = std::make_shared<Member>();
  member->id = next_member_id_.fetch_add(1);
  return member;
}

std::vector<std::shared_ptr<GroupState>> ConsumerGroups::Groups() {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<GroupState>> all;
  for (auto& [key, g] : groups_) all.push_back(g);
  return all;
}

std::vector<std::string> ConsumerGroups::GroupNames() {
  std::set<std::string> names;
  for (const std::shared_ptr<GroupState>& g : Groups()) names.insert(g->base);
  return {names.begin(), names.end()};
}

absl::StatusOr<std::shared_ptr<GroupState>> ConsumerGroups::Join(
    const v1::Subscribe& sub, const std::shared_ptr<Member>& member) {
  if (sub.group().empty()) return absl::InvalidArgumentError("subscribe: group is required");
  if (absl::Status st = ValidName("group", sub.group()); !st.ok()) return st;
  if (sub.broadcast()) {
    if (sub.consumer_id().empty()) {
      return absl::InvalidArgumentError(
          "subscribe: a broadcast consumer needs a consumer_id (its stable name)");
    }
    if (absl::Status st = ValidName("consumer_id", sub.consumer_id()); !st.ok()) return st;
  }
  if (sub.max_in_flight() < 0 || sub.max_in_flight() > kMaxInFlightPerConsumer) {
    return absl::InvalidArgumentError(
        absl::StrCat("subscribe: max_in_flight must be 0 to ", kMaxInFlightPerConsumer));
  }
  if (sub.max_attempts() < 0 || sub.ack_timeout_ms() < 0) {
    return absl::InvalidArgumentError("subscribe: max_attempts and ack_timeout_ms must be >= 0");
  }
  TopicState* t = topics_->Find(sub.topic());
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat("subscribe: topic '", sub.topic(), "' does not exist"));
  }
  if (stopping_.load()) return absl::UnavailableError("dmsd is stopping");
  Spec spec;
  for (const std::string& tag : sub.tags()) spec.tags.insert(tag);
  spec.ordered = !sub.concurrent();
  spec.max_attempts = sub.max_attempts() > 0 ? sub.max_attempts() : options_.max_attempts;
  spec.ack_timeout =
      sub.ack_timeout_ms() > 0 ? absl::Milliseconds(sub.ack_timeout_ms()) : options_.ack_timeout;
  member->consumer_id = sub.consumer_id();
  member->max_in_flight = sub.max_in_flight() > 0 ? sub.max_in_flight() : 64;
  std::string name =
      sub.broadcast() ? absl::StrCat(sub.group(), "@", sub.consumer_id()) : sub.group();
  std::shared_ptr<GroupState> g;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<GroupState>& slot = groups_[{name, t->name}];
    if (slot == nullptr) {
      slot = std::make_shared<GroupState>();
      slot->name = name;
      slot->base = sub.group();
      slot->member_name = sub.broadcast() ? sub.consumer_id() : "";
      slot->topic = t;
    }
    g = slot;
  }
  absl::MutexLock lock(&g->mu);
  if (!g->members.empty() && !(g->spec == spec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("subscribe: group '", sub.group(), "' already consumes topic '", t->name,
                     "' with another subscription (tags [", absl::StrJoin(g->spec.tags, ","),
                     "], ordered=", g->spec.ordered, ", max_attempts=", g->spec.max_attempts,
                     ", ack_timeout=", absl::FormatDuration(g->spec.ack_timeout),
                     "); every member of a group must subscribe alike"));
  }
  if (g->cursors.empty() || !(g->spec == spec)) {
    // First member (or a new subscription once all left): the cursors
    // start from what is durable.
    // Built aside and swapped in whole, so a failure leaves the group as it was.
    CursorOptions co = CursorOptionsFor(spec);
    std::vector<std::unique_ptr<GroupCursor>> cursors;
    std::vector<uint64_t> persisted;
    for (int q = 0; q < t->topic->queues(); ++q) {
      absl::StatusOr<QueueProgress> p = progress_->Load(name, t->name, q);
      if (!p.ok()) return p.status();
      uint64_t committed = p->known ? p->committed : t->topic->first_offset(q);
      cursors.push_back(std::make_unique<GroupCursor>(co, committed, p->acked));
      persisted.push_back(committed);
    }
    std::map<std::pair<int, uint64_t>, Replay> replays;
    if (absl::Status st = LoadReplays(*g, &replays); !st.ok()) return st;
    g->spec = spec;
    g->cursors = std::move(cursors);
    g->persisted = std::move(persisted);
    g->replays = std::move(replays);
    g->owners.clear();
  }
  g->members[member->id] = member;
  SPDLOG_INFO("group {} topic {}: member {} joined ({} members)", name, t->name,
              member->consumer_id.empty() ? absl::StrCat("#", member->id) : member->consumer_id,
              g->members.size());
  return g;
}

// The group's dead letters marked for replay.
absl::Status ConsumerGroups::LoadReplays(GroupState& g,
                                         std::map<std::pair<int, uint64_t>, Replay>* out) {
  out->clear();
  std::map<std::pair<int, uint64_t>, v1::DeadLetter> letters;
  if (absl::Status st = letters_->Replaying(g.name, g.topic->name, &letters); !st.ok()) return st;
  for (auto& [ref, letter] : letters) {
    Replay& r = (*out)[ref];
    r.letter = std::move(letter);
    r.due = absl::InfinitePast();
  }
  return absl::OkStatus();
}

// What a member held goes out again. Each message it was sent counts as
// an attempt, so a message that kills its consumers reaches the
// dead-letter queue after its attempts like any other; not so what never
// left its outbox, nor anything when dmsd itself is stopping (the
// consumer could not have acked it).
void ConsumerGroups::Leave(GroupState& g, const std::shared_ptr<Member>& member) {
  absl::MutexLock lock(&g.mu);
  absl::Time now = clock_->Now();
  bool broker_stopping = stopping_.load();
  std::set<std::pair<int, uint64_t>> unsent, unsent_replays;
  for (const v1::Delivered& d : member->outbox) {
    (d.ref().replay() ? unsent_replays : unsent).insert({d.ref().queue(), d.ref().offset()});
  }
  std::vector<std::pair<int, uint64_t>> held;
  for (const auto& [ref, owner] : g.owners) {
    if (owner == member->id) held.push_back(ref);
  }
  for (const auto& ref : held) {
    const auto& [q, offset] = ref;
    g.owners.erase(ref);
    GroupCursor& cursor = *g.cursors[q];
    if (broker_stopping || unsent.count(ref) > 0) {
      cursor.Release(offset, now);
      continue;
    }
    absl::StatusOr<bool> again = cursor.Abandon(offset, now);
    if (again.ok() && !*again) {
      DeadLetter(g, q, offset, cursor,
                 absl::StrCat("delivered ", g.spec.max_attempts,
                              " times, the last to a consumer that went away without an ack"));
    }
  }
  std::vector<std::pair<int, uint64_t>> replays_held;
  for (auto& [ref, r] : g.replays) {
    if (r.out && r.owner == member->id) replays_held.push_back(ref);
  }
  for (const auto& ref : replays_held) {
    Replay& r = g.replays[ref];
    r.out = false;
    r.due = now;
    if (broker_stopping || unsent_replays.count(ref) > 0) {
      r.attempts = std::max(0, r.attempts - 1);
    } else if (r.attempts >= g.spec.max_attempts) {
      DeadAgain(g, ref, "its consumer went away without an ack in a replay, attempts used up");
    }
  }
  g.members.erase(member->id);
  SPDLOG_INFO("group {} topic {}: a member left ({} members)", g.name, g.topic->name,
              g.members.size());
}

std::shared_ptr<Member> ConsumerGroups::PickMember(GroupState& g) {
  if (g.members.empty()) return nullptr;
  auto it = g.members.begin();
  std::advance(it, g.next_member % g.members.size());
  for (size_t i = 0; i < g.members.size(); ++i) {
    if (it == g.members.end()) it = g.members.begin();
    const std::shared_ptr<Member>& m = it->second;
    ++it;
    if (!m->closed && m->out < m->max_in_flight) {
      g.next_member = (g.next_member + 1 + i) % g.members.size();
      return m;
    }
  }
  return nullptr;
}

int ConsumerGroups::Credit(GroupState& g) {
  int credit = 0;
  for (auto& [id, m] : g.members) {
    if (!m->closed) credit += std::max(0, m->max_in_flight - m->out);
  }
  return credit;
}

void ConsumerGroups::Hand(GroupState& g, const std::shared_ptr<Member>& m, int queue,
                          uint64_t offset, int attempt, v1::StoredMessage message, bool replay) {
  if (!replay) {
    auto [it, fresh] = g.owners.try_emplace({queue, offset}, m->id);
    if (!fresh) {
      // Out again after an ack timeout: the old holder's slot is free.
      if (auto old = g.members.find(it->second); old != g.members.end()) --old->second->out;
      it->second = m->id;
    }
  }
  ++m->out;
  v1::Delivered& d = m->outbox.emplace_back();
  d.mutable_ref()->set_queue(queue);
  d.mutable_ref()->set_offset(offset);
  d.mutable_ref()->set_replay(replay);
  d.set_attempt(attempt);
  *d.mutable_message() = std::move(message);
}

// Hands out what is due to members with room.
CursorOptions ConsumerGroups::CursorOptionsFor(const Spec& spec) const {
  CursorOptions co;
  co.ack_timeout = spec.ack_timeout;
  co.max_attempts = spec.max_attempts;
  co.ordered = spec.ordered;
  co.max_in_flight = spec.ordered ? 1 : 1 << 20;
  co.retry_initial = options_.retry_initial;
  co.retry_max = options_.retry_max;
  return co;
}

absl::Status ConsumerGroups::ReloadQueue(const std::string& topic, int queue) {
  for (const std::shared_ptr<GroupState>& g : Groups()) {
    if (g->topic->name != topic) continue;
    absl::MutexLock lock(&g->mu);
    if (g->cursors.empty() || queue >= static_cast<int>(g->cursors.size())) continue;
    absl::StatusOr<QueueProgress> p = progress_->Load(g->name, topic, queue);
    if (!p.ok()) return p.status();
    uint64_t committed = p->known ? p->committed : g->topic->topic->first_offset(queue);
    g->cursors[queue] =
        std::make_unique<GroupCursor>(CursorOptionsFor(g->spec), committed, p->acked);
    g->persisted[queue] = committed;
    // Messages of the queue still out (handed out before it moved away)
    // are not this cursor's: their holders' credit comes back.
    for (auto it = g->owners.begin(); it != g->owners.end();) {
      if (it->first.first != queue) {
        ++it;
        continue;
      }
      if (auto m = g->members.find(it->second); m != g->members.end() && m->second->out > 0) {
        --m->second->out;
      }
      it = g->owners.erase(it);
    }
  }
  return absl::OkStatus();
}

void ConsumerGroups::Pump(GroupState& g) {
  absl::MutexLock lock(&g.mu);
  if (g.members.empty() || g.cursors.empty()) return;
  absl::Time now = clock_->Now();
  int64_t now_ms = absl::ToUnixMillis(now);  // the clock's NowMs
  // Replays first.
  for (auto it = g.replays.begin(); it != g.replays.end();) {
    Replay& r = it->second;
    auto ref = it->first;
    ++it;
    if (r.out && r.due <= now) {  // ack timeout
      r.out = false;
      if (auto m = g.members.find(r.owner); m != g.members.end()) --m->second->out;
      if (r.attempts >= g.spec.max_attempts) {
        DeadAgain(g, ref, "no ack within the ack timeout in a replay");
        continue;
      }
    }
    if (r.out || r.due > now) continue;
    std::shared_ptr<Member> m = PickMember(g);
    if (m == nullptr) break;
    r.out = true;
    ++r.attempts;
    r.due = now + g.spec.ack_timeout;
    r.owner = m->id;
    Hand(g, m, ref.first, ref.second, r.attempts, r.letter.message(), /*replay=*/true);
  }
  int queues = static_cast<int>(g.cursors.size());
  for (int i = 0; i < queues; ++i) {
    int credit = Credit(g);
    if (credit == 0) break;
    int q = static_cast<int>((g.next_queue + i) % queues);
    if (holds_ != nullptr && !holds_->Deliverable(g.topic->name, q)) continue;
    GroupCursor& cursor = *g.cursors[q];
    Topic& topic = *g.topic->topic;
    // Take a fair share per queue so one busy queue cannot starve others.
    size_t share = std::max<size_t>(1, static_cast<size_t>(credit));
    NextBatch batch = cursor.Next(topic.end_offset(q), now, share);
    for (uint64_t offset : batch.dead_letters) {
      DeadLetter(g, q, offset, cursor, "no ack within the ack timeout, attempts used up");
    }
    if (batch.deliveries.empty()) continue;
    std::vector<Delivery> ds = batch.deliveries;
    std::sort(ds.begin(), ds.end(),
              [](const Delivery& a, const Delivery& b) { return a.offset < b.offset; });
    size_t k = 0;
    while (k < ds.size()) {
      size_t run = 1;
      while (k + run < ds.size() && ds[k + run].offset == ds[k].offset + run) ++run;
      std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
      absl::Status st = topic.Read(q, ds[k].offset, run, &got);
      if (absl::IsOutOfRange(st)) {
        // Removed by retention before this group took them; the rest of
        // the run is still kept and goes out on the next pump.
        uint64_t first = topic.first_offset(q);
        size_t lost = 0;
        for (size_t j = 0; j < run; ++j) {
          if (ds[k + j].offset < first) {
            cursor.Ack(ds[k + j].offset).IgnoreError();
            ++lost;
          } else {
            cursor.Release(ds[k + j].offset, now);
          }
        }
        g.lost_to_retention += lost;
        SPDLOG_WARN(
            "group {} topic {} queue {}: {} messages were removed by retention before "
            "they were consumed",
            g.name, g.topic->name, q, lost);
        k += run;
        continue;
      }
      if (!st.ok()) {
        // Tried again in a second (the queue waits for it in order), and
        // said at most every ten seconds: an operator must look.
        if (now - g.last_read_error >= absl::Seconds(10)) {
          g.last_read_error = now;
          SPDLOG_ERROR("group {} topic {} queue {}: cannot read offset {}: {}; retrying", g.name,
                       g.topic->name, q, ds[k].offset, std::string(st.message()));
        }
        for (size_t j = 0; j < run; ++j) cursor.Release(ds[k + j].offset, now + absl::Seconds(1));
        k += run;
        continue;
      }
      for (size_t j = 0; j < run; ++j) {
        const Delivery& d = ds[k + j];
        if (j >= got.size()) {
          cursor.Release(d.offset, now);
          continue;
        }
        v1::StoredMessage& m = got[j].second;
        if (m.lost()) {
          cursor.Ack(d.offset).IgnoreError();  // a lost offset's placeholder: never delivered
          continue;
        }
        if (!TagsMatch(g.spec.tags, m)) {
          cursor.Ack(d.offset).IgnoreError();  // not for this group; made durable lazily
          continue;
        }
        if (m.deliver_at_unix_ms() > now_ms) {
          cursor.Defer(d.offset, absl::FromUnixMillis(m.deliver_at_unix_ms())).IgnoreError();
          continue;
        }
        std::shared_ptr<Member> member = PickMember(g);
        if (member == nullptr) {  // cannot happen: deliveries stay within the credit
          cursor.Release(d.offset, now);
          continue;
        }
        Hand(g, member, q, d.offset, d.attempt, std::move(m), /*replay=*/false);
      }
      k += run;
    }
  }
  g.next_queue = (g.next_queue + 1) % static_cast<size_t>(queues);
}

// Parks `offset` in the group's dead-letter queue (durably) and counts it
// as acked. The cursor has already forgotten it.
void ConsumerGroups::DeadLetter(GroupState& g, int queue, uint64_t offset, GroupCursor& cursor,
                                absl::string_view reason) {
  absl::Status st = letters_->Park(g.name, g.topic->name, *g.topic->topic, queue, offset,
                                   g.spec.max_attempts, reason);
  if (st.ok()) st = progress_->Ack(g.name, g.topic->name, queue, offset, cursor.committed());
  if (!st.ok() && options_.replicated && absl::IsUnavailable(st)) {
    // A broker group's leader stepping down: its engines are discarded and
    // the next leader rebuilds from the group's stores, where the message
    // is not acked, so it is delivered again.
    SPDLOG_WARN(
        "group {} topic {} queue {} offset {}: dead letter not parked ({}); the next "
        "leader delivers it again",
        g.name, g.topic->name, queue, offset, std::string(st.message()));
    return;
  }
  if (!st.ok()) {
    // The cursor has let it go; stopping now (before any checkpoint) is
    // what gets it delivered again: a restart rebuilds from the acks on
    // disk, where it is not acked.
    SPDLOG_CRITICAL(
        "group {} topic {} queue {} offset {}: cannot park the dead letter: {}; dmsd stops so "
        "that the message is not lost (it is delivered again after the restart)",
        g.name, g.topic->name, queue, offset, std::string(st.message()));
    spdlog::shutdown();
    std::abort();
  }
  if (auto it = g.owners.find({queue, offset}); it != g.owners.end()) {
    if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
    g.owners.erase(it);
  }
  SPDLOG_WARN("group {} topic {} queue {} offset {}: dead-lettered ({})", g.name, g.topic->name,
              queue, offset, std::string(reason));
}

// A replayed dead letter failed its attempts again: back in the
// dead-letter queue, not replaying.
void ConsumerGroups::DeadAgain(GroupState& g, std::pair<int, uint64_t> key,
                               absl::string_view reason) {
  auto it = g.replays.find(key);
  if (it == g.replays.end()) return;
  letters_->ParkAgain(g.name, std::move(it->second.letter), it->second.attempts, reason);
  g.replays.erase(it);
}

// Settles a member's acks and retries: acks are made durable before the
// cursor forgets them, and confirmed to the member.
absl::Status ConsumerGroups::CheckAcks(const GroupState& g, const v1::ConsumeRequest& req) const {
  const int queues = g.topic->topic->queues();
  for (const v1::MessageRef& ref : req.acks()) {
    if (ref.queue() < 0 || ref.queue() >= queues) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ack: queue ", ref.queue(), " does not exist in topic '", g.topic->name, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ConsumerGroups::Settle(GroupState& g, Member& member, const v1::ConsumeRequest& req) {
  if (absl::Status st = CheckAcks(g, req); !st.ok()) return st;
  int queues = g.topic->topic->queues();
  std::map<int, std::vector<uint64_t>> acks;
  std::vector<std::pair<int, uint64_t>> replay_acks;
  for (const v1::MessageRef& ref : req.acks()) {
    if (ref.replay()) {
      replay_acks.emplace_back(ref.queue(), ref.offset());
    } else {
      acks[ref.queue()].push_back(ref.offset());
    }
  }
  std::map<int, uint64_t> committed;
  {
    // Only messages handed out are acked (a stray ack must not skip one).
    absl::MutexLock lock(&g.mu);
    for (auto& [q, offsets] : acks) {
      committed[q] = g.cursors[q]->committed();
      offsets.erase(std::remove_if(offsets.begin(), offsets.end(),
                                   [&](uint64_t o) {
                                     return g.owners.count({q, o}) == 0;
                                   }),
                    offsets.end());
    }
    replay_acks.erase(std::remove_if(replay_acks.begin(), replay_acks.end(),
                                     [&](const std::pair<int, uint64_t>& r) {
                                       auto it = g.replays.find(r);
                                       return it == g.replays.end() || !it->second.out;
                                     }),
                      replay_acks.end());
  }
  std::map<int, GroupProgress::QueueAcks> durable;
  for (const auto& [q, offsets] : acks) {
    if (offsets.empty()) continue;
    durable[q] = GroupProgress::QueueAcks{offsets, committed[q]};
  }
  if (absl::Status st = progress_->AckQueues(g.name, g.topic->name, durable); !st.ok()) {
    return st;
  }
  if (!replay_acks.empty()) {
    if (absl::Status st = letters_->Remove(g.name, g.topic->name, replay_acks); !st.ok()) {
      return st;
    }
  }
  absl::Time now = clock_->Now();
  absl::MutexLock lock(&g.mu);
  for (const auto& [q, offsets] : acks) {
    for (uint64_t offset : offsets) {
      if (!g.cursors[q]->Ack(offset).ok()) continue;
      if (auto it = g.owners.find({q, offset}); it != g.owners.end()) {
        if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
        g.owners.erase(it);
      }
      v1::MessageRef& r = member.acked.emplace_back();
      r.set_queue(q);
      r.set_offset(offset);
    }
  }
  for (const auto& [q, offset] : replay_acks) {
    auto it = g.replays.find({q, offset});
    if (it == g.replays.end()) continue;
    if (it->second.out) {
      if (auto m = g.members.find(it->second.owner); m != g.members.end()) --m->second->out;
    }
    g.replays.erase(it);
    v1::MessageRef& r = member.acked.emplace_back();
    r.set_queue(q);
    r.set_offset(offset);
    r.set_replay(true);
  }
  for (const v1::MessageRef& ref : req.retries()) {
    if (ref.queue() < 0 || ref.queue() >= queues) continue;
    std::pair<int, uint64_t> key{ref.queue(), ref.offset()};
    if (ref.replay()) {
      auto it = g.replays.find(key);
      if (it == g.replays.end() || !it->second.out) continue;
      Replay& r = it->second;
      r.out = false;
      if (auto m = g.members.find(r.owner); m != g.members.end()) --m->second->out;
      if (r.attempts >= g.spec.max_attempts) {
        DeadAgain(g, key, absl::StrCat("retried ", r.attempts, " times in a replay"));
      } else {
        absl::Duration d = options_.retry_initial;
        for (int i = 1; i < r.attempts && d < options_.retry_max; ++i) d *= 2;
        r.due = now + std::min(d, options_.retry_max);
      }
      continue;
    }
    GroupCursor& cursor = *g.cursors[ref.queue()];
    absl::StatusOr<bool> again = cursor.RetryLater(ref.offset(), now);
    if (!again.ok()) continue;  // not out (acked, or timed out and out again)
    if (auto it = g.owners.find(key); it != g.owners.end()) {
      if (auto m = g.members.find(it->second); m != g.members.end()) --m->second->out;
      g.owners.erase(it);
    }
    if (!*again) {
      DeadLetter(g, ref.queue(), ref.offset(), cursor,
                 absl::StrCat("retried ", g.spec.max_attempts, " times"));
    }
  }
  return absl::OkStatus();
}

ConsumerGroups::Collected ConsumerGroups::Collect(GroupState& g, Member& member,
                                                  absl::Duration wait,
                                                  const std::function<bool()>& stopping,
                                                  const std::function<bool()>& cancelled,
                                                  v1::ConsumeReply* reply) {
  absl::MutexLock lock(&g.mu);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
    return member.closed || !member.outbox.empty() || !member.acked.empty();
  };
  g.mu.AwaitWithTimeout(absl::Condition(&ready), wait);
  if (stopping()) return Collected::kStopping;
  if (member.closed || cancelled()) return Collected::kClosed;
  for (v1::MessageRef& r : member.acked) *reply->add_acked() = std::move(r);
  member.acked.clear();
  size_t n = 0, bytes = reply->ByteSizeLong();
  while (n < member.outbox.size() && n < kMaxMessagesPerReply) {
    // The field's tag and length take at most 6 bytes.
    size_t more = member.outbox[n].ByteSizeLong() + 6;
    if (n > 0 && bytes + more > kMaxReplyBytes) break;
    bytes += more;
    *reply->add_messages() = std::move(member.outbox[n++]);
  }
  member.outbox.erase(member.outbox.begin(), member.outbox.begin() + n);
  return Collected::kReady;
}

void ConsumerGroups::Close(GroupState& g, Member& member) {
  absl::MutexLock lock(&g.mu);
  member.closed = true;
}

void ConsumerGroups::Unsend(GroupState& g, Member& member, v1::ConsumeReply* reply) {
  absl::MutexLock lock(&g.mu);
  member.outbox.insert(member.outbox.begin(),
                       std::make_move_iterator(reply->mutable_messages()->begin()),
                       std::make_move_iterator(reply->mutable_messages()->end()));
}

void ConsumerGroups::PumpAll() {
  for (const std::shared_ptr<GroupState>& g : Groups()) Pump(*g);
}

void ConsumerGroups::Checkpoint() {
  for (const std::shared_ptr<GroupState>& g : Groups()) {
    std::vector<std::pair<int, uint64_t>> moved;
    {
      absl::MutexLock lock(&g->mu);
      for (size_t q = 0; q < g->cursors.size(); ++q) {
        uint64_t c = g->cursors[q]->committed();
        if (c > g->persisted[q]) moved.emplace_back(static_cast<int>(q), c);
      }
    }
    for (const auto& [q, c] : moved) {
      if (progress_->Ack(g->name, g->topic->name, q, std::vector<uint64_t>{}, c).ok()) {
        absl::MutexLock lock(&g->mu);
        g->persisted[q] = std::max(g->persisted[q], c);
      }
    }
  }
}

absl::Status ConsumerGroups::Lag(const v1::GetLagRequest& req, v1::GetLagReply* reply) {
  if (req.group().empty()) return absl::InvalidArgumentError("lag: group is required");
  std::vector<TopicState*> ts;
  if (!req.topic().empty()) {
    TopicState* t = topics_->Find(req.topic());
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat("topic '", req.topic(), "' does not exist"));
    }
    ts.push_back(t);
  } else {
    ts = topics_->All();
  }
  bool found = false;
  for (TopicState* t : ts) {
    std::vector<std::shared_ptr<GroupState>> states;
    {
      for (std::shared_ptr<GroupState>& g : Groups()) {
        if (g->topic == t && g->base == req.group()) states.push_back(std::move(g));
      }
    }
    if (!states.empty()) {
      for (const std::shared_ptr<GroupState>& g : states) {
        absl::MutexLock lock(&g->mu);
        for (size_t q = 0; q < g->cursors.size(); ++q) {
          uint64_t end = t->topic->end_offset(static_cast<int>(q));
          v1::QueueLag* l = reply->add_queues();
          l->set_topic(t->name);
          l->set_queue(static_cast<int>(q));
          l->set_member(g->member_name);
          l->set_committed(g->cursors[q]->committed());
          l->set_end_offset(end);
          l->set_lag(g->cursors[q]->Lag(end));
          found = true;
        }
      }
      continue;
    }
    for (int q = 0; q < t->topic->queues(); ++q) {
      absl::StatusOr<QueueProgress> p = progress_->Load(req.group(), t->name, q);
      if (!p.ok()) return p.status();
      if (!p->known) continue;
      uint64_t end = t->topic->end_offset(q);
      v1::QueueLag* l = reply->add_queues();
      l->set_topic(t->name);
      l->set_queue(q);
      l->set_committed(p->committed);
      l->set_end_offset(end);
      l->set_lag(end > p->committed
                     ? end - p->committed - std::min<uint64_t>(end - p->committed, p->acked.size())
                     : 0);
      found = true;
    }
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat(
        "group '", req.group(), "' has not consumed ",
        req.topic().empty() ? "any topic" : "topic '" + req.topic() + "'", " on this broker"));
  }
  uint64_t total = 0;
  for (const v1::QueueLag& l : reply->queues()) total += l.lag();
  reply->set_total(total);
  std::vector<v1::DeadLetter> letters;
  if (absl::Status st = letters_->List(req.group(), req.topic(), 1 << 30, &letters); !st.ok()) {
    return st;
  }
  reply->set_dead_letters(letters.size());
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ConsumerGroups::ReplayDeadLetters(const std::string& group,
                                                           const std::string& topic) {
  absl::StatusOr<uint64_t> n = letters_->MarkReplaying(group, topic);
  if (!n.ok()) return n.status();
  // Groups consuming now take them at once; others on their next join.
  std::vector<std::shared_ptr<GroupState>> states;
  for (std::shared_ptr<GroupState>& g : Groups()) {
    if (g->base == group) states.push_back(std::move(g));
  }
  for (const std::shared_ptr<GroupState>& g : states) {
    absl::MutexLock lock(&g->mu);
    if (g->cursors.empty()) continue;
    std::map<std::pair<int, uint64_t>, Replay> keep;
    for (auto& [ref, r] : g->replays) {
      if (r.out) keep[ref] = r;  // already out: keep its attempt
    }
    std::map<std::pair<int, uint64_t>, Replay> loaded;
    if (absl::Status st = LoadReplays(*g, &loaded); !st.ok()) return st;
    g->replays = std::move(loaded);
    for (auto& [ref, r] : keep) g->replays[ref] = r;
  }
  return *n;
}

}  // namespace formica::dms
