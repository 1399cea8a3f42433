#include "formica/rpc/call_context.h"

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <random>

#include "serving.h"

namespace formica::rpc {
namespace {

thread_local ServingCall* current_call = nullptr;

std::string Metadata(const grpc::ServerContextBase& ctx, const char* key) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(key);
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// Writes `digits` (even) random lower-case hex digits at `out`, two per
// random byte.
void FillRandomHex(char* out, int digits) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  static const std::array<std::array<char, 2>, 256> kPairs = [] {
    std::array<std::array<char, 2>, 256> pairs{};
    for (int b = 0; b < 256; ++b) pairs[b] = {kHex[b >> 4], kHex[b & 0xf]};
    return pairs;
  }();
  for (int i = 0; i < digits; i += 16) {
    uint64_t r = rng();
    for (int j = i; j < std::min(digits, i + 16); j += 2, r >>= 8) {
      std::memcpy(out + j, kPairs[r & 0xff].data(), 2);
    }
  }
}

bool IsHex(const std::string& s, size_t from, size_t n) {
  if (from + n > s.size()) return false;
  for (size_t i = from; i < from + n; ++i) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

const ServingCall* CurrentServingCall() { return current_call; }

struct CallContextScope::State {
  ServingCall call;
  ServingCall* previous;
};

CallContextScope::CallContextScope(CallContext c, absl::Time deadline)
    : state_(new State{ServingCall{std::move(c), deadline, {}}, current_call}) {
  if (const ServingCall* outer = state_->previous; outer != nullptr) {
    CallContext& mine = state_->call.context;
    const CallContext& theirs = outer->context;
    for (auto [field, from] : {std::pair{&mine.traceparent, &theirs.traceparent},
                               {&mine.caller_app, &theirs.caller_app},
                               {&mine.user_id, &theirs.user_id},
                               {&mine.zone, &theirs.zone},
                               {&mine.txn_id, &theirs.txn_id}}) {
      if (field->empty()) *field = *from;
    }
    state_->call.deadline = std::min(state_->call.deadline, outer->deadline);
  }
  current_call = &state_->call;
}

CallContextScope::~CallContextScope() {
  current_call = state_->previous;
  // Entries nobody took in this scope go on to the one it is nested in.
  if (current_call != nullptr) {
    for (std::string& e : state_->call.joined) current_call->joined.push_back(std::move(e));
  }
  delete state_;
}

bool ReportJoined(std::string entry) {
  if (current_call == nullptr || entry.empty()) return false;
  for (char c : entry) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  current_call->joined.push_back(std::move(entry));
  return true;
}

std::vector<std::string> TakeJoined() {
  std::vector<std::string> out;
  if (current_call != nullptr) out.swap(current_call->joined);
  return out;
}

void AddJoined(const std::multimap<grpc::string_ref, grpc::string_ref>& trailers) {
  if (current_call == nullptr) return;
  auto [from, to] = trailers.equal_range(kJoinedKey);
  for (auto it = from; it != to; ++it) {
    current_call->joined.emplace_back(it->second.data(), it->second.size());
  }
}

const CallContext* CurrentCallContext() {
  return current_call == nullptr ? nullptr : &current_call->context;
}

CallContext ReadCallContext(const grpc::ServerContextBase& ctx) {
  CallContext c;
  c.traceparent = Metadata(ctx, kTraceparentKey);
  c.caller_app = Metadata(ctx, kCallerAppKey);
  c.user_id = Metadata(ctx, kUserIdKey);
  c.zone = Metadata(ctx, kZoneKey);
  c.txn_id = Metadata(ctx, kTxnIdKey);
  return c;
}

void WriteCallContext(const CallContext& c, grpc::ClientContext* ctx) {
  // gRPC takes keys as std::string: made once, not on every call.
  static const auto* const keys = new std::array<std::string, 5>{kTraceparentKey, kCallerAppKey,
                                                                 kUserIdKey, kZoneKey, kTxnIdKey};
  const std::string* values[] = {&c.traceparent, &c.caller_app, &c.user_id, &c.zone, &c.txn_id};
  for (size_t i = 0; i < keys->size(); ++i) {
    if (!values[i]->empty()) ctx->AddMetadata((*keys)[i], *values[i]);
  }
}

std::string ChildTraceparent(const std::string& parent) {
  // version(2)-trace id(32)-parent id(16)-flags(2)
  if (parent.size() == 55 && parent[2] == '-' && parent[35] == '-' && parent[52] == '-' &&
      IsHex(parent, 0, 2) && IsHex(parent, 3, 32) && IsHex(parent, 36, 16) &&
      IsHex(parent, 53, 2)) {
    std::string child = parent;
    FillRandomHex(&child[36], 16);  // a new span id
    return child;
  }
  std::string trace = "00-00000000000000000000000000000000-0000000000000000-01";
  FillRandomHex(&trace[3], 32);
  FillRandomHex(&trace[36], 16);
  return trace;
}

}  // namespace formica::rpc
