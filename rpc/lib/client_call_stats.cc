#include "client_call_stats.h"

#include <dlfcn.h>

#include <cstring>

#include "absl/strings/string_view.h"

namespace formica::rpc {
namespace {

// grpc::ClientContext keeps the call's ClientRpcInfo (the method called) in
// a private member; an explicit instantiation may name private members,
// which gives us its pointer (checked by the compiler against the gRPC in
// use; server_metrics.cc does the same for handlers).
struct RpcInfoTag {
  using Member = grpc::experimental::ClientRpcInfo grpc::ClientContext::*;
  friend Member MemberOf(RpcInfoTag);
};
template <typename Tag, typename Tag::Member M>
struct ExposeMember {
  friend typename Tag::Member MemberOf(Tag) { return M; }
};
template struct ExposeMember<RpcInfoTag, &grpc::ClientContext::rpc_info_>;

}  // namespace

const char* CalledMethod(const grpc::ClientContext& ctx) {
  return (ctx.*MemberOf(RpcInfoTag{})).method();
}

MethodCallStats::~MethodCallStats() {
  for (Node* n = head_.load(); n != nullptr;) {
    Node* next = n->next;
    delete n;
    n = next;
  }
}

CallStats* MethodCallStats::For(const char* full_method) {
  for (Node* n = head_.load(std::memory_order_acquire); n != nullptr; n = n->next) {
    if (n->key == full_method) return n->stats.get();
  }
  // A generated stub names its methods by string literals, which live as
  // long as the program (or library) that holds them. A generic stub's name
  // is the caller's string, often gone by the time the call ends: never
  // read it; such calls are counted under the method "". dladdr looks only
  // at the address (which loaded object maps it), never at what is there.
  Dl_info where;
  if (full_method != nullptr && dladdr(full_method, &where) == 0) full_method = nullptr;
  absl::MutexLock lock(&mu_);
  Node* first = head_.load(std::memory_order_relaxed);
  absl::string_view name = full_method == nullptr ? "" : full_method;
  int nodes = 0;
  for (Node* n = first; n != nullptr; n = n->next, ++nodes) {
    if (n->key == full_method) return n->stats.get();
  }
  name = name.substr(name.rfind('/') == absl::string_view::npos ? 0 : name.rfind('/') + 1);
  auto stats =
      CallStatsRegistry::Global().Get(CallSeries::Side::kClient, service_, name, provider_);
  // Generated stubs name a method by one static string, so the list stays
  // as short as the service's methods; it is bounded all the same.
  if (nodes >= kMaxNodes) {
    overflow_ = std::move(stats);
    return overflow_.get();
  }
  auto* node = new Node{full_method, std::move(stats), first};
  head_.store(node, std::memory_order_release);
  return node->stats.get();
}

}  // namespace formica::rpc
