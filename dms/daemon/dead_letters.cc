#include "dead_letters.h"

#include <spdlog/spdlog.h>

#include "now_ms.h"

namespace formica::dms {

DeadLetters::DeadLetters(DeadLetterStore* store, Clock* clock) : store_(store), clock_(clock) {}

absl::Status DeadLetters::Park(const std::string& owner, const std::string& topic_name,
                               Topic& topic, int queue, uint64_t offset, int attempts,
                               absl::string_view reason) {
  v1::DeadLetter letter;
  letter.set_topic(topic_name);
  letter.mutable_ref()->set_queue(queue);
  letter.mutable_ref()->set_offset(offset);
  letter.set_attempts(attempts);
  letter.set_reason(std::string(reason));
  letter.set_dead_unix_ms(NowMs(*clock_));
  std::vector<std::pair<uint64_t, v1::StoredMessage>> got;
  if (topic.Read(queue, offset, 1, &got).ok() && !got.empty()) {
    *letter.mutable_message() = std::move(got[0].second);
  }
  return store_->Put(owner, letter);
}

void DeadLetters::ParkAgain(const std::string& owner, v1::DeadLetter letter, int attempts,
                            absl::string_view reason) {
  letter.set_replaying(false);
  letter.set_attempts(letter.attempts() + attempts);
  letter.set_reason(std::string(reason));
  letter.set_dead_unix_ms(NowMs(*clock_));
  if (absl::Status st = store_->Put(owner, letter); !st.ok()) {
    SPDLOG_ERROR("cannot update a dead letter: {}", st.ToString());
  }
}

absl::Status DeadLetters::Replaying(const std::string& owner, const std::string& topic,
                                    std::map<std::pair<int, uint64_t>, v1::DeadLetter>* out) {
  out->clear();
  std::vector<LetterEntry> letters;
  if (absl::Status st = store_->ListOwned(owner, topic, &letters); !st.ok()) return st;
  for (LetterEntry& e : letters) {
    if (!e.letter.replaying()) continue;
    std::pair<int, uint64_t> ref{e.letter.ref().queue(), e.letter.ref().offset()};
    (*out)[ref] = std::move(e.letter);
  }
  return absl::OkStatus();
}

absl::Status DeadLetters::Remove(const std::string& owner, const std::string& topic,
                                 const std::vector<std::pair<int, uint64_t>>& refs) {
  return store_->Remove(owner, topic, refs);
}

absl::Status DeadLetters::List(const std::string& group, const std::string& topic, size_t limit,
                               std::vector<v1::DeadLetter>* out) {
  std::vector<LetterEntry> letters;
  if (absl::Status st = store_->List(group, topic, limit, &letters); !st.ok()) return st;
  for (LetterEntry& e : letters) out->push_back(std::move(e.letter));
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> DeadLetters::MarkReplaying(const std::string& group,
                                                    const std::string& topic) {
  std::vector<LetterEntry> letters;
  if (absl::Status st = store_->List(group, topic, 1 << 30, &letters); !st.ok()) return st;
  std::vector<LetterEntry> marked;
  for (LetterEntry& e : letters) {
    if (e.letter.replaying()) continue;
    e.letter.set_replaying(true);
    marked.push_back(std::move(e));
  }
  if (absl::Status st = store_->PutMany(marked); !st.ok()) return st;
  return marked.size();
}

}  // namespace formica::dms
