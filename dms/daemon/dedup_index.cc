#include "dedup_index.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "now_ms.h"

namespace formica::dms {

DedupIndex::DedupIndex(DedupStore* store, Clock* clock, absl::Duration window)
    : store_(store), clock_(clock), window_(window) {}

int64_t DedupIndex::OldestMs() const { return NowMs(*clock_) - absl::ToInt64Milliseconds(window_); }

// A key can outlive its message (a damaged tail was cut, or a machine crash
// lost an unsynced tail, and start-up did not get to forget the key) and
// point at a lost offset's placeholder or at another message: then the send
// is not a duplicate. A record retention removed was stored, so its key
// still holds.
absl::StatusOr<std::optional<Produced>> DedupIndex::Lookup(TopicState& t, const std::string& key,
                                                           int64_t oldest_ms) {
  absl::StatusOr<std::optional<DedupEntry>> found = store_->Find(t.name, key);
  if (!found.ok()) return found.status();
  if (!found->has_value() || (*found)->born_unix_ms < oldest_ms) return std::nullopt;
  const DedupEntry& e = **found;
  Produced p{e.queue, e.offset};
  if (e.queue < 0 || e.queue >= t.topic->queues()) return std::nullopt;
  if (e.offset < t.topic->first_offset(e.queue)) return p;
  std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
  absl::Status st = t.topic->Read(e.queue, e.offset, 1, &got);
  if (absl::IsOutOfRange(st)) return p;  // removed by retention just now
  if (!st.ok()) return st;
  bool holds = !got.empty() && got[0].first == e.offset && !got[0].second.lost() &&
               got[0].second.dedup_key() == key;
  if (!holds) return std::nullopt;
  return p;
}

absl::Status DedupIndex::CatchUp(TopicState& t) {
  absl::MutexLock lock(&t.dedup_mu);
  int n = t.topic->queues();
  t.unindexed.assign(n, {});
  t.marks.assign(n, 0);
  int64_t oldest = OldestMs();
  uint64_t indexed = 0;
  for (int q = 0; q < n; ++q) {
    absl::StatusOr<std::optional<uint64_t>> stored = store_->Mark(t.name, q);
    if (!stored.ok()) return stored.status();
    uint64_t mark = stored->value_or(0);
    mark = std::max(mark, t.topic->first_offset(q));
    std::vector<std::pair<std::string, DedupEntry>> entries;
    while (mark < t.topic->end_offset(q)) {
      std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
      if (absl::Status st = t.topic->Read(q, mark, 512, &got); !st.ok()) return st;
      if (got.empty()) break;
      for (const auto& [offset, m] : got) {
        if (!m.dedup_key().empty() && m.born_unix_ms() >= oldest) {
          entries.emplace_back(m.dedup_key(), DedupEntry{q, offset, m.born_unix_ms()});
          ++indexed;
        }
        mark = offset + 1;
      }
    }
    if (absl::Status st = store_->Index(t.name, entries, {{q, mark}}); !st.ok()) return st;
    t.marks[q] = mark;
  }
  if (indexed > 0) SPDLOG_INFO("topic {}: indexed {} dedup keys from the log", t.name, indexed);
  return absl::OkStatus();
}

absl::Status DedupIndex::ForgetLost(const TopicState& t, const std::map<int, uint64_t>& lost_from) {
  if (lost_from.empty()) return absl::OkStatus();
  absl::StatusOr<size_t> forgotten = store_->ForgetFrom(t.name, lost_from);
  if (!forgotten.ok()) return forgotten.status();
  if (*forgotten == 0) return absl::OkStatus();
  SPDLOG_WARN(
      "topic {}: forgot the dedup keys of {} lost messages (a retried send stores them "
      "again)",
      t.name, *forgotten);
  return absl::OkStatus();
}

void DedupIndex::Sweep() { store_->Sweep(OldestMs()); }

}  // namespace formica::dms
