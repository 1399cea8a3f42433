// The registry's sessions: who is connected, what each publishes, subscribes
// to and watches, what waits to be pushed to it, and when its lease lapses.
// Knows nothing of the transport: a stream is a SessionStream.
//
// Not thread-safe: RegistryCore holds its lock around every call, and the
// SessionStream fields below are guarded by that same lock.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica {
class Clock;
}  // namespace formica

namespace formica::registry {

namespace v1 {
class ServerMessage;
}  // namespace v1

using Msg = std::shared_ptr<const v1::ServerMessage>;

// Topic keys in a session's outbox: one pending message per service or key.
std::string ServiceTopic(absl::string_view service);
std::string ConfigTopic(absl::string_view key);

// One session stream as the core sees it. The transport adapter implements
// the three calls (each may be made under the core's lock, so none may call
// back into the core); the fields are the core's.
class SessionStream {
 public:
  SessionStream(std::string peer, std::string identity, uint64_t serial)
      : peer(std::move(peer)), identity(std::move(identity)), serial(serial) {}
  virtual ~SessionStream() = default;

  // Starts sending `in_flight`; the transport then calls RegistryCore::WriteDone.
  virtual void StartSend() = 0;
  // Ends the stream with `status`.
  virtual void End(const absl::Status& status) = 0;
  // Reads the next client message; it reaches RegistryCore::Handle.
  virtual void ReadNext() = 0;

  const std::string peer;
  const std::string identity;  // the client's certificate's (formica/internal/credentials.h)
  const uint64_t serial;       // unique for the process's life
  uint64_t session_id = 0;
  std::deque<Msg> control;  // replies, in order, ahead of pushes
  Msg in_flight;
  bool finishing = false;
  bool finished = false;
  absl::Status finish_status;
};

struct Subscription {
  uint64_t acked = 0;
  uint64_t sent = 0;
  absl::Time sent_at = absl::InfinitePast();
  // The first push the subscriber has not acked yet was sent then
  // (InfinitePast: none outstanding); for the push-latency metric.
  absl::Time unacked_since = absl::InfinitePast();
};

struct Session {
  uint64_t id = 0;
  std::string client_name;
  std::string peer;
  std::string identity;
  absl::Duration lease;
  absl::Time last_seen;
  absl::Time last_keepalive = absl::InfinitePast();  // last lease renewal in the backend
  uint64_t record_revision = 0;     // guards this node's backend writes (see ClusterLink)
  SessionStream* stream = nullptr;  // null while detached
  std::set<std::pair<std::string, std::string>> publications;  // (service, address)
  std::map<std::string, Subscription> services;
  std::map<std::string, Subscription> configs;
  std::map<std::string, Msg> pending;  // newest snapshot per topic
};

class SessionTable {
 public:
  explicit SessionTable(Clock* clock) : clock_(clock) {}

  // Null if no session has this id.
  Session* Find(uint64_t id);
  // The session `id`, created empty if new.
  Session& Add(uint64_t id);
  void Erase(uint64_t id) { sessions_.erase(id); }
  // A random id no session here has, so ids from other nodes or boots never match.
  uint64_t NewId();

  // The client showed itself alive: its lease starts over now.
  void Touch(Session& session);
  // The sessions whose lease passed since they were last seen, by id.
  std::vector<uint64_t> Expired() const;

  std::map<uint64_t, Session>& all() { return sessions_; }
  const std::map<uint64_t, Session>& all() const { return sessions_; }

 private:
  Clock* const clock_;
  std::mt19937_64 ids_{std::random_device{}()};
  std::map<uint64_t, Session> sessions_;
};

}  // namespace formica::registry
