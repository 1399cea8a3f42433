#include "session_table.h"

#include "absl/strings/str_cat.h"
#include "formica/common/clock.h"

namespace formica::registry {

std::string ServiceTopic(absl::string_view service) { return absl::StrCat("s", service); }
std::string ConfigTopic(absl::string_view key) { return absl::StrCat("c", key); }

Session* SessionTable::Find(uint64_t id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : &it->second;
}

Session& SessionTable::Add(uint64_t id) {
  Session& session = sessions_[id];
  session.id = id;
  return session;
}

uint64_t SessionTable::NewId() {
  uint64_t id = 0;
  while (id == 0 || sessions_.count(id) > 0) {
    id = ids_() >> 1;
  }
  return id;
}

void SessionTable::Touch(Session& session) { session.last_seen = clock_->Now(); }

std::vector<uint64_t> SessionTable::Expired() const {
  absl::Time now = clock_->Now();
  std::vector<uint64_t> expired;
  for (const auto& [id, session] : sessions_) {
    if (now - session.last_seen > session.lease) {
      expired.push_back(id);
    }
  }
  return expired;
}

}  // namespace formica::registry
