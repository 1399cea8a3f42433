#include "topic_catalog.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dedup_index.h"
#include "dms_names.h"

namespace formica::dms {
namespace {

// Offsets a queue may skip at start (see NeverReuseOffsets): more is not a
// damaged tail but a wrong data directory.
constexpr uint64_t kMaxLostOffsets = 1 << 22;

// Whether a directory holds any queue log record (a non-empty .log file).
bool HoldsRecords(const std::string& dir) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec) && it->path().extension() == ".log" && it->file_size(ec) > 0) {
      return true;
    }
  }
  return ec.value() != 0;  // unreadable: it may hold some
}

absl::Status MoveDirectory(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (std::filesystem::exists(to, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot move ", from, " to ", to,
                     ": it exists; both hold the same topic, an operator "
                     "must decide which to keep"));
  }
  std::filesystem::rename(from, to, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot move ", from, " to ", to, ": ", ec.message()));
  }
  for (const std::string& d : {std::filesystem::path(from).parent_path().string(),
                               std::filesystem::path(to).parent_path().string()}) {
    int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
  return absl::OkStatus();
}

}  // namespace

TopicCatalog::TopicCatalog(CatalogOptions options, GroupProgress* progress, DedupIndex* dedup,
                           Clock* clock)
    : options_(std::move(options)), progress_(progress), dedup_(dedup), clock_(clock) {}

absl::Status TopicCatalog::OpenAll(const std::map<std::string, int>& create) {
  absl::StatusOr<std::vector<GroupQueue>> known = progress_->Queues();
  if (!known.ok()) return known.status();
  {
    absl::MutexLock lock(&mu_);
    for (GroupQueue& q : *known) progress_at_start_[q.topic].push_back(std::move(q));
  }
  if (options_.shared_topics != nullptr) return OpenShared(create);
  std::vector<std::string> names;
  std::string topics_dir = options_.data_dir + "/topics";
  // Listed whole first: some are renamed or moved below.
  std::vector<std::filesystem::directory_entry> entries{
      std::filesystem::directory_iterator(topics_dir), std::filesystem::directory_iterator()};
  for (const auto& entry : entries) {
    std::string file = entry.path().filename().string();
    if (!entry.is_directory()) {
      SPDLOG_WARN("{} is not a topic directory; left alone", entry.path().string());
      continue;
    }
    std::optional<std::string> name = TopicOfDirectory(file);
    if (!name.has_value() && ValidName("topic name", file).ok()) {
      // Named by an earlier dmsd, with the topic's name as it is.
      name = file;
      if (absl::Status st = MoveDirectory(entry.path().string(),
                                          absl::StrCat(topics_dir, "/", TopicDirectory(file)));
          !st.ok()) {
        return st;
      }
      SPDLOG_INFO("topic {}: directory {} renamed to {}", file, file, TopicDirectory(file));
    }
    std::string dir =
        absl::StrCat(topics_dir, "/", name.has_value() ? TopicDirectory(*name) : file);
    if (!name.has_value()) {
      if (!HoldsRecords(dir)) {
        SPDLOG_WARN("{} is not a topic directory and holds no messages; left alone", dir);
      } else if (absl::Status st =
                     Damaged(dir, "it holds queue logs but its name is not one dmsd gives a topic");
                 !st.ok()) {
        return st;
      }
      continue;
    }
    if (!std::filesystem::exists(dir + "/QUEUES")) {
      if (HoldsRecords(dir)) {
        if (absl::Status st = Damaged(dir,
                                      "it holds queue logs but no QUEUES file (the topic's queue "
                                      "count), so its messages cannot be placed");
            !st.ok()) {
          return st;
        }
      } else {
        // A creation cut short before its queue count was written.
        SPDLOG_WARN(
            "{} holds no QUEUES file and no messages (a topic creation cut short); "
            "skipped",
            dir);
      }
      continue;
    }
    names.push_back(*name);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    absl::StatusOr<TopicState*> t = Open(name, 0);
    if (t.ok()) continue;
    if (!absl::IsDataLoss(t.status())) return t.status();
    std::string dir = absl::StrCat(topics_dir, "/", TopicDirectory(name));
    if (absl::Status st = Damaged(dir, t.status().message()); !st.ok()) return st;
  }
  {
    absl::MutexLock lock(&mu_);
    progress_at_start_.clear();
  }
  for (const auto& [name, queues] : create) {
    absl::StatusOr<TopicState*> t = Open(name, queues);
    if (!t.ok()) {
      return absl::Status(
          t.status().code(),
          absl::StrCat("topic '", name, "' from the config: ", t.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status TopicCatalog::OpenShared(const std::map<std::string, int>& create) {
  // The group's topics, then the config's it lacks (created through the
  // group's log by the leader).
  std::map<std::string, int> open = create;
  for (const std::string& name : options_.shared_topics->Names()) open.emplace(name, 0);
  for (const auto& [name, queues] : open) {
    absl::StatusOr<TopicState*> t = Open(name, queues);
    if (!t.ok()) return t.status();
  }
  {
    absl::MutexLock lock(&mu_);
    progress_at_start_.clear();
  }
  return absl::OkStatus();
}

// A topic directory that may hold acknowledged messages and cannot be
// opened: dmsd refuses to start, unless the operator asked to move such
// directories aside (storage.quarantine_damaged_topics).
absl::Status TopicCatalog::Damaged(const std::string& dir, absl::string_view why) {
  if (!options_.quarantine_damaged_topics) {
    return absl::DataLossError(absl::StrCat(
        "topic directory ", dir, " cannot be opened: ", why,
        ". dmsd does not start without the messages it may hold: repair or remove it, or start "
        "with --quarantine-damaged-topics=true (storage.quarantine_damaged_topics) to move it "
        "to ",
        options_.data_dir, "/quarantine and start without it"));
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir + "/quarantine", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", options_.data_dir, "/quarantine: ", ec.message()));
  }
  std::string to = absl::StrCat(
      options_.data_dir, "/quarantine/", std::filesystem::path(dir).filename().string(), ".",
      absl::FormatTime("%Y%m%dT%H%M%S", clock_->Now(), absl::UTCTimeZone()));
  if (absl::Status st = MoveDirectory(dir, to); !st.ok()) return st;
  SPDLOG_ERROR(
      "topic directory {} cannot be opened: {}; moved to {} "
      "(storage.quarantine_damaged_topics) and dmsd starts without it",
      dir, std::string(why), to);
  return absl::OkStatus();
}

absl::StatusOr<TopicState*> TopicCatalog::Open(const std::string& name, int queues) {
  absl::MutexLock lock(&mu_);
  auto it = topics_.find(name);
  if (it != topics_.end()) {
    if (queues > 0 && it->second->topic->queues() != queues) {
      return absl::AlreadyExistsError(absl::StrCat(
          "topic '", name, "' exists with ", it->second->topic->queues(), " queues, not ", queues));
    }
    return it->second.get();
  }
  TopicOptions to;
  to.dir = absl::StrCat(options_.data_dir, "/topics/", TopicDirectory(name));
  to.queues = queues;
  to.log.sync = options_.sync;
  to.log.segment_bytes = static_cast<uint64_t>(options_.segment_bytes);
  to.log.max_record_bytes = options_.max_record_bytes;
  std::vector<RecoveryReport> reports;
  absl::StatusOr<std::shared_ptr<Topic>> topic;
  if (options_.shared_topics != nullptr) {
    std::shared_ptr<Topic> shared = options_.shared_topics->Find(name);
    if (shared == nullptr) {
      if (queues <= 0) return absl::NotFoundError(absl::StrCat("no topic '", name, "'"));
      absl::StatusOr<std::shared_ptr<Topic>> created = options_.shared_topics->Create(name, queues);
      if (!created.ok()) return created.status();
      shared = *std::move(created);
    }
    if (queues > 0 && shared->queues() != queues) {
      return absl::AlreadyExistsError(absl::StrCat("topic '", name, "' exists with ",
                                                   shared->queues(), " queues, not ", queues));
    }
    topic = std::move(shared);
  } else {
    topic = Topic::Open(to, &reports);
  }
  if (!topic.ok()) return topic.status();
  uint64_t records = 0;
  for (size_t q = 0; q < reports.size(); ++q) {
    records += reports[q].records;
    if (!reports[q].cut_file.empty()) {
      SPDLOG_WARN(
          "topic {} queue {}: cut a damaged tail of {} at byte {} ({} bytes): {}; every whole "
          "record before it is kept",
          name, q, reports[q].cut_file, reports[q].cut_at, reports[q].cut_bytes,
          reports[q].cut_reason);
    }
  }
  auto state = std::make_unique<TopicState>();
  state->name = name;
  state->topic = *std::move(topic);
  if (absl::Status st = NeverReuseOffsets(*state, reports); !st.ok()) return st;
  if (absl::Status st = dedup_->CatchUp(*state); !st.ok()) return st;
  SPDLOG_INFO("topic {}: {} queues, {} messages kept", name, state->topic->queues(), records);
  TopicState* raw = state.get();
  topics_[name] = std::move(state);
  return raw;
}

// An offset once handed out is never handed out again: a queue whose log
// ends below what some group acknowledged, or below its dedup mark (its
// tail was cut, or lost in a machine crash with storage.flush: async),
// continues above all of it, the offsets between holding placeholders
// that are never delivered. Each group is told what it lost.
// Dedup keys of messages a cut removed are forgotten too, so a retried
// send stores its message again instead of answering with a lost one.
absl::Status TopicCatalog::NeverReuseOffsets(TopicState& t,
                                             const std::vector<RecoveryReport>& reports) {
  std::map<int, uint64_t> lost_from;  // queue -> its first lost offset
  // A queue to continue above its log's end.
  struct Skip {
    int queue;
    uint64_t end, next;
    std::string why;
    std::vector<std::pair<std::string, QueueProgress>> groups;
  };
  std::vector<Skip> skips;
  std::vector<GroupQueue> known;
  if (auto it = progress_at_start_.find(t.name); it != progress_at_start_.end()) {
    known = it->second;
  } else if (progress_at_start_.empty()) {
    absl::StatusOr<std::vector<GroupQueue>> all = progress_->Queues();
    if (!all.ok()) return all.status();
    for (GroupQueue& q : *all) {
      if (q.topic == t.name) known.push_back(std::move(q));
    }
  }
  for (int q = 0; q < t.topic->queues(); ++q) {
    uint64_t end = t.topic->end_offset(q);
    // Who reached how far: the dedup index's mark, then each group.
    std::vector<std::pair<std::string, uint64_t>> reached;
    absl::StatusOr<std::optional<uint64_t>> mark = dedup_->Mark(t.name, q);
    if (!mark.ok()) return mark.status();
    if (mark->has_value()) reached.emplace_back("the dedup index", **mark);
    std::vector<std::pair<std::string, QueueProgress>> groups;
    for (const GroupQueue& g : known) {
      if (g.queue != q) continue;
      absl::StatusOr<QueueProgress> p = progress_->Load(g.group, t.name, q);
      if (!p.ok()) return p.status();
      reached.emplace_back(absl::StrCat("group ", g.group),
                           std::max(p->committed, p->acked.empty() ? 0 : *p->acked.rbegin() + 1));
      groups.emplace_back(g.group, *std::move(p));
    }
    uint64_t next = end;
    for (const auto& [who, offset] : reached) next = std::max(next, offset);
    std::vector<std::string> furthest;
    for (const auto& [who, offset] : reached) {
      if (offset == next) furthest.push_back(who);
    }
    std::string why = absl::StrJoin(furthest, ", ");
    if (static_cast<size_t>(q) < reports.size() && !reports[q].cut_file.empty()) {
      lost_from[q] = end;
    }
    if (next == end) continue;
    lost_from[q] = end;
    if (next - end > kMaxLostOffsets) {
      return absl::DataLossError(
          absl::StrCat("topic ", t.name, " queue ", q, ": the log ends at offset ", end, " but ",
                       why, " reached offset ", next, "; more than ", kMaxLostOffsets,
                       " offsets lost is not a damaged tail: check the data directory"));
    }
    skips.push_back(Skip{q, end, next, why, std::move(groups)});
  }
  // Keys first: a start-up cut short after the placeholders are durable
  // finds no cut next time, so nothing would forget them after.
  if (absl::Status st = dedup_->ForgetLost(t, lost_from); !st.ok()) return st;
  for (const auto& [q, end, next, why, groups] : skips) {
    if (absl::Status st = t.topic->SkipTo(q, next); !st.ok()) return st;
    SPDLOG_ERROR(
        "topic {} queue {}: offsets {} to {} were handed out before but their messages are "
        "not in the log (a damaged tail was cut, or lost in a machine crash); new messages "
        "start at offset {} (reached by {}), so no offset is used twice",
        t.name, q, end, next - 1, next, why);
    for (const auto& [group, p] : groups) {
      // Recorded as acked for the group, so its lag counts only what it
      // will get.
      std::vector<uint64_t> lost;
      for (uint64_t o = std::max(end, p.committed); o < next; ++o) {
        if (p.acked.count(o) == 0) lost.push_back(o);
      }
      if (lost.empty()) {
        SPDLOG_ERROR("topic {} queue {} group {}: lost nothing (it had acknowledged them all)",
                     t.name, q, group);
        continue;
      }
      if (absl::Status st = progress_->Ack(group, t.name, q, lost, p.committed); !st.ok()) {
        return st;
      }
      SPDLOG_ERROR(
          "topic {} queue {} group {}: lost {} messages it never acknowledged, offsets {} to {}",
          t.name, q, group, lost.size(), lost.front(), lost.back());
    }
  }
  return absl::OkStatus();
}

TopicState* TopicCatalog::Find(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = topics_.find(name);
  return it == topics_.end() ? nullptr : it->second.get();
}

std::vector<TopicState*> TopicCatalog::All() {
  absl::MutexLock lock(&mu_);
  std::vector<TopicState*> out;
  for (auto& [name, t] : topics_) out.push_back(t.get());
  return out;
}

}  // namespace formica::dms
