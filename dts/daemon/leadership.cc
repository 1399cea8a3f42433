#include "leadership.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace formica::dts {

void LeaderDiscovery::SetLeading(bool leading) {
  absl::MutexLock lock(&mu_);
  if (leading_ == leading) return;
  leading_ = leading;
  for (const auto& [service, provider] : announced_) {
    absl::Status st =
        leading ? inner_->Publish(service, provider) : inner_->Unpublish(service, provider.address);
    if (!st.ok()) {
      SPDLOG_WARN("{} {}: {}", leading ? "publishing" : "unpublishing", service, st.ToString());
    }
  }
}

absl::Status LeaderDiscovery::Publish(absl::string_view service, const rpc::Provider& provider) {
  absl::MutexLock lock(&mu_);
  announced_[std::string(service)] = provider;
  return leading_ ? inner_->Publish(service, provider) : absl::OkStatus();
}

absl::Status LeaderDiscovery::Unpublish(absl::string_view service, absl::string_view address) {
  absl::MutexLock lock(&mu_);
  announced_.erase(std::string(service));
  return leading_ ? inner_->Unpublish(service, address) : absl::OkStatus();
}

CoordinatorLeadership::CoordinatorLeadership(uint64_t self_id, LeadershipParts parts)
    : self_id_(self_id), parts_(std::move(parts)) {}

void CoordinatorLeadership::OnRole(const RaftNodeStatus& status) {
  absl::MutexLock lock(&mu_);
  latest_ = status;
  changed_ = true;
}

void CoordinatorLeadership::Start(RaftNode* node) {
  node_ = node;
  {
    absl::MutexLock lock(&mu_);
    latest_ = node_->status();  // what happened before Start
    changed_ = true;
  }
  thread_ = std::thread([this] { Loop(); });
}

void CoordinatorLeadership::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::string CoordinatorLeadership::Refusal(const RaftNodeStatus& s) const {
  std::string self = absl::StrCat("this dtsd (raft member ", self_id_, ") does not lead its group");
  if (s.role == RaftRole::kLeader) {
    return absl::StrCat("this dtsd (raft member ", self_id_,
                        ") is taking over as leader; retry shortly");
  }
  if (s.leader.id == 0 || s.leader.id == self_id_) {
    return absl::StrCat(self,
                        "; no leader is known now (an election is under way): retry "
                        "shortly, the leader is published in the registry");
  }
  std::string api = parts_.store->ApiAddressOf(s.leader.id);
  return absl::StrCat(self, "; the leader is raft member ", s.leader.id, " (", s.leader.address,
                      ")", api.empty() ? "" : absl::StrCat(", serving at ", api));
}

void CoordinatorLeadership::Loop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return changed_ || stopping_; };
    // A leader that could not take over yet tries again at the next round.
    mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(200));
    if (stopping_) break;
    RaftNodeStatus s = latest_;
    changed_ = false;
    mu_.Unlock();
    if (leading_) {
      // The node's own view, not only what the callback said: a term lost
      // and won again while this thread was busy leaves the role unchanged.
      RaftNodeStatus now = node_->status();
      if (now.role != RaftRole::kLeader || now.term != led_term_) s = now;
    }
    bool lead = s.role == RaftRole::kLeader && s.leader_ready;
    if (leading_ && s.role == RaftRole::kLeader && s.term != led_term_) {
      // Another term of this member's: what was loaded in led_term_ misses
      // what the leaders between did; take over afresh.
      StepDown(absl::StrCat("this dtsd (raft member ", self_id_, ") led term ", led_term_,
                            " and now leads term ", s.term, "; taking over afresh"));
    }
    if (leading_ && !parts_.store->writable()) {
      // A proposal failed without a change of role seen here (an apply
      // error, or a term change not reported yet): what was in flight is
      // unknown, so take over afresh as a new leader would.
      StepDown(parts_.store->refusal());
    }
    if (lead && !leading_) {
      // Take over for the term the node is in now, not an older report's.
      if (RaftNodeStatus now = node_->status(); now.role == RaftRole::kLeader && now.leader_ready) {
        s = now;
      }
      leading_ = Lead(s);
    } else if (!lead && leading_) {
      StepDown(Refusal(s));
    }
    if (leading_ && parts_.store->HasBuffered()) {
      // Writes made without sync (a Begin, an activity's end) reach the
      // log within a round even when no answer waits for them.
      if (absl::Status st = parts_.store->Sync(); !st.ok()) {
        SPDLOG_WARN("syncing the buffered activity writes: {}", st.ToString());
      }
    }
    if (!leading_) {
      // Poll too: the role callback does not report every leader a follower learns.
      s = node_->status();
      parts_.engine->SetRefusal(Refusal(s));
    }
    mu_.Lock();
  }
  mu_.Unlock();
  if (leading_) StepDown(absl::StrCat("this dtsd (raft member ", self_id_, ") is stopping"));
  mu_.Lock();
}

bool CoordinatorLeadership::Lead(const RaftNodeStatus& s) {
  absl::Time started = absl::Now();
  parts_.store->OpenForWrites(s.term);
  absl::StatusOr<uint64_t> epoch = parts_.store->NextBootEpoch();
  if (!epoch.ok()) {
    SPDLOG_WARN("leader of term {} cannot take an epoch: {}", s.term, epoch.status().ToString());
    parts_.store->CloseForWrites(Refusal(s));
    return false;
  }
  parts_.scheduler->Clear();
  parts_.engine->Reset(*epoch);
  if (absl::Status st = RecoverActivities(*parts_.store, *parts_.engine); !st.ok()) {
    SPDLOG_ERROR("leader of term {} cannot reload its activities: {}", s.term, st.ToString());
    parts_.store->CloseForWrites(Refusal(s));
    parts_.scheduler->Clear();
    parts_.engine->Reset(0);
    return false;
  }
  if (RaftNodeStatus now = node_->status(); now.role != RaftRole::kLeader || now.term != s.term) {
    // Lost the term while reloading (and maybe won a later one): what was
    // loaded may miss that term's activities; the next round starts afresh.
    SPDLOG_WARN("leader of term {} lost it while taking over (now {} in term {})", s.term,
                RaftRoleName(now.role), now.term);
    parts_.store->CloseForWrites(Refusal(now));
    parts_.scheduler->Clear();
    parts_.engine->Reset(0);
    return false;
  }
  led_term_ = s.term;
  parts_.scheduler->Start();
  sweeper_ = parts_.make_sweeper();
  sweeper_->Start();
  parts_.engine->StartServing();
  parts_.discovery->SetLeading(true);
  SPDLOG_INFO("dtsd leads its group: raft member {}, term {}, epoch {:x}; serving after {}",
              self_id_, s.term, *epoch, absl::FormatDuration(absl::Now() - started));
  return true;
}

void CoordinatorLeadership::StepDown(const std::string& refusal) {
  SPDLOG_WARN("dtsd steps down: {}", refusal);
  parts_.discovery->SetLeading(false);
  parts_.store->CloseForWrites(refusal);
  parts_.engine->StopServing(refusal);
  parts_.scheduler->Stop();
  parts_.scheduler->WaitIdle();  // phase-two calls out end by their deadline
  parts_.scheduler->Clear();
  if (sweeper_ != nullptr) sweeper_->Stop();
  sweeper_.reset();
  parts_.engine->Reset(0);
  leading_ = false;
}

}  // namespace formica::dts
