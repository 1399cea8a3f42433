// A log entry is a run of operations, each a one-byte kind and its fields
// (a field: 4-byte little-endian length, then its bytes):
//   'P' first_new activity   PutWithActions (payloads before first_new left out)
//   'A' id index action      PutAction
//   'D' id                   Delete
//   'E' raft_id api_address second
//                            an epoch: Apply answers max(last epoch + 1,
//                            second), the proposer's wall-clock second
// A snapshot is "S2", a field of the members' API addresses ("ID@ADDRESS"
// lines), a field of the last epoch, then every activity, whole, as one
// field each ("S1", without the epoch, is still read).
#include "replicated_activity_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace formica::dts {
namespace {

constexpr char kSnapshotMagic[] = "S2";
constexpr char kSnapshotMagicV1[] = "S1";

void AppendField(std::string* out, absl::string_view field) {
  uint32_t n = static_cast<uint32_t>(field.size());
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out->append(field.data(), field.size());
}

// Reads fields off the front of an entry or snapshot.
class FieldReader {
 public:
  explicit FieldReader(absl::string_view in) : in_(in) {}
  bool done() const { return in_.empty(); }
  bool Kind(char* kind) {
    if (in_.empty()) return false;
    *kind = in_[0];
    in_.remove_prefix(1);
    return true;
  }
  bool Field(absl::string_view* out) {
    if (in_.size() < 4) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    if (in_.size() - 4 < n) return false;
    *out = in_.substr(4, n);
    in_.remove_prefix(4 + n);
    return true;
  }
  bool Number(uint64_t* out) {
    absl::string_view f;
    return Field(&f) && absl::SimpleAtoi(f, out);
  }

 private:
  absl::string_view in_;
};

[[noreturn]] void CannotApply(uint64_t index, absl::string_view why) {
  // Every member must end in the same state: one that cannot apply stops.
  SPDLOG_CRITICAL("cannot apply raft entry {} to the activity store: {}; stopping", index,
                  std::string(why));
  std::abort();
}

}  // namespace

ReplicatedActivityStore::ReplicatedActivityStore(std::unique_ptr<ActivityStore> local,
                                                 uint64_t self_id)
    : local_(std::move(local)), self_id_(self_id) {}

void ReplicatedActivityStore::Attach(RaftNode* node) { node_ = node; }

void ReplicatedActivityStore::SetApiAddress(const std::string& address) {
  absl::MutexLock lock(&mu_);
  api_address_ = address;
}

void ReplicatedActivityStore::OpenForWrites(uint64_t term) {
  absl::MutexLock lock(&mu_);
  writable_ = true;
  term_ = term;
  ++generation_;
  open_from_ = proposed_ + 1;
}

void ReplicatedActivityStore::CloseForWrites(const std::string& refusal) {
  absl::MutexLock lock(&mu_);
  writable_ = false;
  ++generation_;
  refusal_ = refusal;
  buffer_.clear();
  for (const std::string& id : buffer_ids_) {
    if (--unapplied_[id] == 0) unapplied_.erase(id);
  }
  buffer_ids_.clear();
}

bool ReplicatedActivityStore::writable() const {
  absl::MutexLock lock(&mu_);
  return writable_;
}

std::string ReplicatedActivityStore::refusal() const {
  absl::MutexLock lock(&mu_);
  return refusal_;
}

bool ReplicatedActivityStore::HasBuffered() const {
  absl::MutexLock lock(&mu_);
  return !buffer_.empty();
}

uint64_t ReplicatedActivityStore::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

std::string ReplicatedActivityStore::ApiAddressOf(uint64_t raft_id) const {
  absl::MutexLock lock(&mu_);
  auto it = api_addresses_.find(raft_id);
  return it == api_addresses_.end() ? "" : it->second;
}

absl::Status ReplicatedActivityStore::Buffer(const std::string& id, std::string op, bool sync) {
  {
    absl::MutexLock lock(&mu_);
    if (!writable_) return absl::UnavailableError(refusal_);
    buffer_.append(op);
    buffer_ids_.push_back(id);
    ++unapplied_[id];
  }
  return sync ? Sync() : absl::OkStatus();
}

absl::Status ReplicatedActivityStore::Put(const v1::Activity& activity, bool sync) {
  return PutWithActions(activity, activity.actions_size(), sync);
}

absl::Status ReplicatedActivityStore::PutWithActions(const v1::Activity& activity, int first_new,
                                                     bool sync) {
  // Actions before first_new are stored already: only their outcome goes.
  v1::Activity sent = activity;
  for (int i = 0; i < first_new && i < sent.actions_size(); ++i) {
    sent.mutable_actions(i)->clear_payload();
  }
  std::string op(1, 'P');
  AppendField(&op, absl::StrCat(first_new));
  AppendField(&op, sent.SerializeAsString());
  return Buffer(activity.id(), std::move(op), sync);
}

absl::Status ReplicatedActivityStore::PutAction(const std::string& id, int index,
                                                const v1::Action& action, bool sync) {
  std::string op(1, 'A');
  AppendField(&op, id);
  AppendField(&op, absl::StrCat(index));
  AppendField(&op, action.SerializeAsString());
  return Buffer(id, std::move(op), sync);
}

absl::Status ReplicatedActivityStore::Delete(const std::string& id) {
  std::string op(1, 'D');
  AppendField(&op, id);
  return Buffer(id, std::move(op), false);
}

absl::Status ReplicatedActivityStore::Sync() {
  uint64_t target = 0;
  uint64_t from = 0;  // the first batch of the leadership this call is made in
  uint64_t term = 0;  // the term that leadership holds: a batch commits in it or not at all
  {
    absl::MutexLock order(&propose_mu_);
    std::string entry;
    std::vector<std::string> ids;
    {
      absl::MutexLock lock(&mu_);
      if (!writable_) return absl::UnavailableError(refusal_);
      from = open_from_;
      term = term_;
      target = proposed_;
      if (!buffer_.empty()) {
        entry.swap(buffer_);
        ids.swap(buffer_ids_);
        target = ++proposed_;
        written_bytes_ += entry.size();
      }
    }
    if (!entry.empty()) {
      node_->Propose(std::move(entry), term, [this, target, ids = std::move(ids)](ProposeResult r) {
        Completed(target, ids, r);
      });
    }
  }
  absl::MutexLock lock(&mu_);
  auto answered = [this, target]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_upto_ >= target; };
  mu_.Await(absl::Condition(&answered));
  auto failed = failed_.lower_bound(from);
  if (failed != failed_.end() && failed->first <= target) return failed->second;
  return absl::OkStatus();
}

void ReplicatedActivityStore::Completed(uint64_t seq, const std::vector<std::string>& ids,
                                        const ProposeResult& r) {
  absl::MutexLock lock(&mu_);
  for (const std::string& id : ids) {
    if (--unapplied_[id] == 0) unapplied_.erase(id);
  }
  if (!r.status.ok()) {
    // Leadership lost (or never held): what is in flight may or may not
    // commit under the next leader. Nothing more is taken until reopened.
    absl::Status failure = absl::UnavailableError(absl::StrCat(
        "the activity log did not commit (", r.status.message(),
        "); this dtsd no longer leads its group: the outcome is known to the next leader"));
    failed_.emplace(seq, failure);
    if (seq >= open_from_ && writable_) {
      writable_ = false;
      refusal_ = std::string(failure.message());
    }
  }
  done_.insert(seq);
  while (!done_.empty() && *done_.begin() == done_upto_ + 1) {
    done_.erase(done_.begin());
    ++done_upto_;
  }
}

absl::StatusOr<uint64_t> ReplicatedActivityStore::NextBootEpoch() {
  if (absl::Status st = Sync(); !st.ok()) return st;
  std::string entry(1, 'E');
  AppendField(&entry, absl::StrCat(self_id_));
  uint64_t term = 0;
  {
    absl::MutexLock lock(&mu_);
    AppendField(&entry, api_address_);
    term = term_;
  }
  // At least the wall-clock second, as a single dtsd's: a group created
  // afresh (its log gone) does not issue the ids an earlier one did, which
  // participants' barrier rows may still hold.
  AppendField(&entry, absl::StrCat(absl::ToUnixSeconds(absl::Now())));
  ProposeResult r = node_->Propose(std::move(entry), term).get();
  if (!r.status.ok()) return absl::UnavailableError(r.status.message());
  uint64_t epoch = 0;
  if (!absl::SimpleAtoi(r.output, &epoch)) {
    return absl::InternalError(absl::StrCat("the epoch entry answered '", r.output, "'"));
  }
  return epoch;
}

absl::StatusOr<std::optional<v1::Activity>> ReplicatedActivityStore::Get(const std::string& id) {
  bool unapplied = false;
  {
    absl::MutexLock lock(&mu_);
    unapplied = unapplied_.contains(id);
  }
  if (unapplied) {
    if (absl::Status st = Sync(); !st.ok()) return st;
  }
  return local_->Get(id);
}

absl::Status ReplicatedActivityStore::Scan(const std::function<bool(const v1::Activity&)>& visit) {
  return local_->Scan(visit);
}

absl::Status ReplicatedActivityStore::ScanFrom(
    const std::string& first_id, const std::function<bool(const v1::Activity&)>& visit) {
  return local_->ScanFrom(first_id, visit);
}

absl::Status ReplicatedActivityStore::ScanNewestFirst(
    const std::function<bool(const v1::Activity&)>& visit) {
  return local_->ScanNewestFirst(visit);
}

uint64_t ReplicatedActivityStore::syncs() const {
  absl::MutexLock lock(&mu_);
  return proposed_;
}

uint64_t ReplicatedActivityStore::written_bytes() const {
  absl::MutexLock lock(&mu_);
  return written_bytes_;
}

std::string ReplicatedActivityStore::Apply(uint64_t index, absl::string_view entry) {
  FieldReader in(entry);
  std::string output;
  char kind = 0;
  while (in.Kind(&kind)) {
    absl::string_view a, b, c;
    uint64_t n = 0;
    absl::Status st;
    switch (kind) {
      case 'P': {
        v1::Activity activity;
        if (!in.Number(&n) || !in.Field(&a) || !activity.ParseFromArray(a.data(), a.size())) {
          CannotApply(index, "a malformed activity write");
        }
        st = local_->PutWithActions(activity, static_cast<int>(n), false);
        break;
      }
      case 'A': {
        v1::Action action;
        if (!in.Field(&a) || !in.Number(&n) || !in.Field(&c) ||
            !action.ParseFromArray(c.data(), c.size())) {
          CannotApply(index, "a malformed action write");
        }
        st = local_->PutAction(std::string(a), static_cast<int>(n), action, false);
        break;
      }
      case 'D':
        if (!in.Field(&a)) CannotApply(index, "a malformed delete");
        st = local_->Delete(std::string(a));
        break;
      case 'E': {
        if (!in.Number(&n) || !in.Field(&b)) CannotApply(index, "a malformed epoch");
        uint64_t proposed = index;  // an entry written before epochs carried a second
        if (!in.done() && !in.Number(&proposed)) CannotApply(index, "a malformed epoch second");
        absl::MutexLock lock(&mu_);
        api_addresses_[n] = std::string(b);
        last_epoch_ = std::max(last_epoch_ + 1, proposed);  // the same on every member
        output = absl::StrCat(last_epoch_);
        break;
      }
      default:
        CannotApply(index, absl::StrCat("an unknown operation '", std::string(1, kind), "'"));
    }
    if (!st.ok()) CannotApply(index, st.ToString());
  }
  return output;
}

absl::StatusOr<std::string> ReplicatedActivityStore::Snapshot() {
  std::vector<std::string> ids;
  absl::Status st = local_->Scan([&](const v1::Activity& a) {
    ids.push_back(a.id());
    return true;
  });
  if (!st.ok()) return st;
  std::string out = kSnapshotMagic;
  std::string addresses;
  uint64_t last_epoch = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, address] : api_addresses_) {
      absl::StrAppend(&addresses, id, "@", address, "\n");
    }
    last_epoch = last_epoch_;
  }
  AppendField(&out, addresses);
  AppendField(&out, absl::StrCat(last_epoch));
  for (const std::string& id : ids) {
    absl::StatusOr<std::optional<v1::Activity>> a = local_->Get(id);
    if (!a.ok()) return a.status();
    if (a->has_value()) AppendField(&out, (*a)->SerializeAsString());
  }
  return out;
}

absl::Status ReplicatedActivityStore::Restore(absl::string_view snapshot) {
  const bool v1 = snapshot.substr(0, 2) == kSnapshotMagicV1;
  if (snapshot.substr(0, 2) != kSnapshotMagic && !v1) {
    return absl::DataLossError("not a snapshot of the activity store");
  }
  std::vector<v1::Activity> activities;
  FieldReader in(snapshot.substr(2));
  absl::string_view addresses;
  if (!in.Field(&addresses))
    return absl::DataLossError("a snapshot of the activity store is cut short");
  std::map<uint64_t, std::string> api_addresses;
  for (absl::string_view line : absl::StrSplit(addresses, '\n', absl::SkipEmpty())) {
    size_t at = line.find('@');
    uint64_t id = 0;
    if (at == absl::string_view::npos || !absl::SimpleAtoi(line.substr(0, at), &id)) {
      return absl::DataLossError("a snapshot of the activity store names a member badly");
    }
    api_addresses[id] = std::string(line.substr(at + 1));
  }
  uint64_t last_epoch = 0;
  if (!v1 && !in.Number(&last_epoch)) {
    return absl::DataLossError("a snapshot of the activity store has no valid epoch");
  }
  while (!in.done()) {
    absl::string_view f;
    v1::Activity a;
    if (!in.Field(&f) || !a.ParseFromArray(f.data(), f.size())) {
      return absl::DataLossError("a snapshot of the activity store is cut short");
    }
    activities.push_back(std::move(a));
  }
  std::vector<std::string> present;
  absl::Status st = local_->Scan([&](const v1::Activity& a) {
    present.push_back(a.id());
    return true;
  });
  for (const std::string& id : present) {
    if (st.ok()) st = local_->Delete(id);
  }
  for (const v1::Activity& a : activities) {
    if (st.ok()) st = local_->PutWithActions(a, 0, false);
  }
  if (st.ok()) st = local_->Sync();
  if (st.ok()) {
    absl::MutexLock lock(&mu_);
    api_addresses_ = std::move(api_addresses);
    last_epoch_ = last_epoch;
  }
  return st;
}

}  // namespace formica::dts
