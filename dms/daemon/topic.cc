#include "topic.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "formica/internal/dms_placement.h"

namespace formica::dms {

std::string TopicDirectory(absl::string_view name) {
  if (!std::any_of(name.begin(), name.end(),
                   [](char c) { return absl::ascii_isupper(static_cast<unsigned char>(c)); })) {
    return std::string(name);
  }
  // "^" name-in-lower-case "^" mask: hex digit j has bit k set when
  // character 4j+k is upper case.
  std::string out = absl::StrCat("^", absl::AsciiStrToLower(name), "^");
  for (size_t j = 0; j < name.size(); j += 4) {
    int digit = 0;
    for (size_t k = 0; k < 4 && j + k < name.size(); ++k) {
      if (absl::ascii_isupper(static_cast<unsigned char>(name[j + k]))) digit |= 1 << k;
    }
    out.push_back("0123456789abcdef"[digit]);
  }
  return out;
}

std::optional<std::string> TopicOfDirectory(absl::string_view directory) {
  auto plain = [](char c) {
    return absl::ascii_islower(static_cast<unsigned char>(c)) ||
           absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  };
  const std::string whole(directory);
  std::string name;
  if (absl::ConsumePrefix(&directory, "^")) {
    size_t sep = directory.find('^');
    if (sep == absl::string_view::npos) return std::nullopt;
    name = std::string(directory.substr(0, sep));
    absl::string_view mask = directory.substr(sep + 1);
    if (mask.size() != (name.size() + 3) / 4) return std::nullopt;
    for (size_t j = 0; j < mask.size(); ++j) {
      int digit = 0;
      char c = mask[j];
      if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else {
        return std::nullopt;
      }
      for (size_t k = 0; k < 4; ++k) {
        if ((digit & (1 << k)) == 0) continue;
        if (4 * j + k >= name.size()) return std::nullopt;
        name[4 * j + k] = absl::ascii_toupper(static_cast<unsigned char>(name[4 * j + k]));
      }
    }
  } else {
    name = std::string(directory);
  }
  if (name.empty() || name.size() > 128 || name == "." || name == ".." ||
      !std::all_of(name.begin(), name.end(), [&](char c) {
        return plain(c) || absl::ascii_isupper(static_cast<unsigned char>(c));
      })) {
    return std::nullopt;
  }
  // Only the one directory name each topic has (no "^a^0" for "a").
  if (TopicDirectory(name) != whole) return std::nullopt;
  return name;
}

std::string ReplicatedLogId(absl::string_view topic, int queue) {
  return absl::StrCat(topic, "/", queue);
}

absl::StatusOr<std::unique_ptr<Topic>> Topic::Open(TopicOptions options,
                                                   std::vector<RecoveryReport>* reports) {
  if (options.dir.empty()) return absl::InvalidArgumentError("TopicOptions.dir is required");
  std::string meta = options.dir + "/QUEUES";
  if (options.queues == 0 && std::filesystem::exists(meta)) {
    std::ifstream in(meta);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &options.queues)) {
      return absl::DataLossError(absl::StrCat(meta, " does not hold a queue count"));
    }
  }
  if (options.queues < 1 || options.queues > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("a topic has 1 to 1024 queues, not ", options.queues));
  }
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create topic directory ", options.dir, ": ", ec.message()));
  }
  if (std::filesystem::exists(meta)) {
    std::ifstream in(meta);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    int stored = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &stored) || stored < 1) {
      return absl::DataLossError(absl::StrCat(meta, " does not hold a queue count"));
    }
    if (stored != options.queues) {
      return absl::FailedPreconditionError(absl::StrCat(
          "topic in ", options.dir, " has ", stored, " queues, not ", options.queues,
          "; changing the count would move keys between queues and break their order"));
    }
  } else {
    // Written whole and synced, then renamed: a crash leaves either no
    // file or this one.
    std::string tmp = meta + ".tmp";
    std::string text = absl::StrCat(options.queues, "\n");
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    bool ok = fd >= 0 &&
              ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
              ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok || ::rename(tmp.c_str(), meta.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot write ", meta, ": ", std::strerror(errno)));
    }
    int dir = ::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }
  std::unique_ptr<Topic> topic(new Topic());
  if (reports != nullptr) reports->clear();
  for (int q = 0; q < options.queues; ++q) {
    LogOptions lo = options.log;
    lo.dir = absl::StrCat(options.dir, "/", q);
    if (lo.replication != nullptr) lo.replication_id = ReplicatedLogId(options.name, q);
    RecoveryReport report;
    absl::StatusOr<std::unique_ptr<MessageLog>> log = MessageLog::Open(lo, &report);
    if (!log.ok()) return log.status();
    topic->logs_.push_back(*std::move(log));
    if (reports != nullptr) reports->push_back(report);
  }
  return topic;
}

int Topic::QueueFor(absl::string_view key) {
  if (key.empty()) {
    return static_cast<int>(round_robin_.fetch_add(1, std::memory_order_relaxed) % logs_.size());
  }
  return QueueForKey(key, static_cast<int>(logs_.size()));  // the producer's rule too
}

namespace {

// The one encoding of a message in a queue log.
absl::Status Encode(const v1::StoredMessage& message, std::string* bytes) {
  if (!message.SerializeToString(bytes)) return absl::InternalError("cannot encode the message");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Produced> Topic::Produce(const v1::StoredMessage& message) {
  Produced p;
  p.queue = QueueFor(message.key());
  std::string bytes;
  if (absl::Status st = Encode(message, &bytes); !st.ok()) return st;
  absl::StatusOr<uint64_t> offset = logs_[p.queue]->Append(bytes);
  if (!offset.ok()) return offset.status();
  p.offset = *offset;
  return p;
}

absl::StatusOr<Produced> Topic::Write(int queue, const v1::StoredMessage& message) {
  Produced p;
  p.queue = queue;
  std::string bytes;
  if (absl::Status st = Encode(message, &bytes); !st.ok()) return st;
  absl::StatusOr<uint64_t> offset = logs_[p.queue]->Write(bytes);
  if (!offset.ok()) return offset.status();
  p.offset = *offset;
  return p;
}

void Topic::WhenDurable(int queue, uint64_t offset, std::function<void(absl::Status)> done) {
  logs_[queue]->WhenDurable(offset, std::move(done));
}

uint64_t Topic::first_offset(int queue) const { return logs_[queue]->first_offset(); }
uint64_t Topic::end_offset(int queue) const { return logs_[queue]->synced_end(); }

uint64_t Topic::bytes(int queue) const {
  uint64_t bytes = 0;
  for (const SegmentInfo& s : logs_[queue]->Segments()) bytes += s.bytes;
  return bytes;
}

absl::StatusOr<uint64_t> Topic::RemoveOld(int queue, absl::Time cutoff, uint64_t max_bytes) {
  MessageLog& log = *logs_[queue];
  std::vector<SegmentInfo> segs = log.Segments();
  uint64_t total = 0;
  for (const SegmentInfo& s : segs) total += s.bytes;
  uint64_t remove_before = 0;
  // Never the newest segment: it takes the appends.
  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    bool old = segs[i].last_write < cutoff;
    bool over = max_bytes > 0 && total > max_bytes;
    if (!old && !over) break;
    remove_before = segs[i].end;
    total -= segs[i].bytes;
  }
  if (remove_before == 0) return 0;
  if (absl::Status st = log.RemoveBefore(remove_before); !st.ok()) return st;
  return remove_before;
}

absl::Status Topic::WriteBatch(const std::vector<const v1::StoredMessage*>& messages,
                               const std::vector<int>& queues, std::vector<Produced>* out,
                               std::map<int, uint64_t>* last) {
  out->assign(messages.size(), Produced());
  last->clear();
  // Each queue's messages in one write, in request order.
  std::vector<std::vector<size_t>> by_queue(logs_.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    int q = queues[i];
    (*out)[i].queue = q;
    by_queue[q].push_back(i);
  }
  std::vector<std::string> bytes(messages.size());
  for (size_t q = 0; q < by_queue.size(); ++q) {
    if (by_queue[q].empty()) continue;
    std::vector<absl::string_view> payloads;
    for (size_t i : by_queue[q]) {
      if (absl::Status st = Encode(*messages[i], &bytes[i]); !st.ok()) return st;
      payloads.push_back(bytes[i]);
    }
    absl::StatusOr<uint64_t> first = logs_[q]->WriteMany(payloads);
    if (!first.ok()) return first.status();
    for (size_t j = 0; j < by_queue[q].size(); ++j) (*out)[by_queue[q][j]].offset = *first + j;
    (*last)[static_cast<int>(q)] = *first + by_queue[q].size() - 1;
  }
  return absl::OkStatus();
}

absl::Status Topic::SkipTo(int queue, uint64_t next) {
  MessageLog& log = *logs_[queue];
  v1::StoredMessage placeholder;
  placeholder.set_lost(true);
  std::string bytes;
  if (absl::Status st = Encode(placeholder, &bytes); !st.ok()) return st;
  constexpr uint64_t kChunk = 4096;
  uint64_t last = 0;
  bool wrote = false;
  for (uint64_t end = log.synced_end(); end < next;) {
    size_t n = static_cast<size_t>(std::min(kChunk, next - end));
    std::vector<absl::string_view> payloads(n, bytes);
    absl::StatusOr<uint64_t> first = log.WriteMany(payloads);
    if (!first.ok()) return first.status();
    last = *first + n - 1;
    end = *first + n;
    wrote = true;
  }
  return wrote ? log.WaitDurable(last) : absl::OkStatus();
}

absl::StatusOr<uint64_t> Topic::Import(int queue, uint64_t first,
                                       const std::vector<v1::StoredMessage>& records) {
  MessageLog& log = *logs_[queue];
  // From what is written, durable or not, so that records written by an
  // import whose wait failed are not written again.
  uint64_t end = log.written_end();
  if (end < first) {
    // A log holding no record (the usual destination) begins at `first` in
    // one step; one holding records gets a placeholder per offset up to it.
    absl::Status st = log.StartAt(first);
    if (absl::IsFailedPrecondition(st)) st = SkipTo(queue, first);
    if (!st.ok()) return st;
    end = log.written_end();
  }
  if (first + records.size() <= end) return 0;  // all held already
  size_t skip = static_cast<size_t>(end - first);
  std::vector<std::string> bytes(records.size() - skip);
  std::vector<absl::string_view> payloads;
  for (size_t i = skip; i < records.size(); ++i) {
    if (absl::Status st = Encode(records[i], &bytes[i - skip]); !st.ok()) return st;
    payloads.push_back(bytes[i - skip]);
  }
  absl::StatusOr<uint64_t> at = log.WriteMany(payloads);
  if (!at.ok()) return at.status();
  if (*at != end) {
    return absl::InternalError(absl::StrCat("queue ", queue, ": imported records landed at offset ",
                                            *at, ", not at ", end));
  }
  if (absl::Status st = log.WaitDurable(*at + payloads.size() - 1); !st.ok()) return st;
  return payloads.size();
}

absl::Status Topic::Read(int queue, uint64_t from, size_t max,
                         std::vector<std::pair<uint64_t, v1::StoredMessage>>* out) {
  if (queue < 0 || queue >= queues()) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue ", queue, " does not exist; the topic has ", queues()));
  }
  std::vector<LogRecord> records;
  if (absl::Status st = logs_[queue]->Read(from, max, &records); !st.ok()) return st;
  for (LogRecord& r : records) {
    v1::StoredMessage m;
    if (!m.ParseFromString(r.payload)) {
      return absl::DataLossError(
          absl::StrCat("queue ", queue, " offset ", r.offset, " is not a message"));
    }
    out->emplace_back(r.offset, std::move(m));
  }
  return absl::OkStatus();
}

}  // namespace formica::dms
