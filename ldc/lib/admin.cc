// ldc::RuleAdmin over the registry's unary API: rules with compare-and-set,
// client reports, the fenced switch.
#include "formica/ldc/admin.h"

#include <grpcpp/grpcpp.h>

#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formica/ldc/router.h"
#include "formica/registry/v1/registry.grpc.pb.h"

namespace formica::ldc {
namespace {

namespace v1 = formica::registry::v1;

std::string Describe(const std::vector<ClientReport>& clients) {
  std::vector<std::string> parts;
  for (const ClientReport& c : clients) {
    parts.push_back(
        absl::StrCat(c.client, " ", c.id, " (zone ", c.zone, ", version ", c.applied_version, ")"));
  }
  return absl::StrJoin(parts, ", ");
}

class GrpcRuleAdmin : public RuleAdmin {
 public:
  GrpcRuleAdmin(const std::string& registry, absl::Duration call_timeout)
      : stub_(v1::Registry::NewStub(grpc::CreateChannel(registry, formica::ChannelCredentials()))),
        call_timeout_(call_timeout) {}

  absl::StatusOr<VersionedRules> Get() override {
    v1::GetConfigRequest req;
    req.set_key(kRulesKey);
    v1::ConfigEntry entry;
    auto ctx = Context();
    if (grpc::Status s = stub_->GetConfig(ctx.get(), req, &entry); !s.ok()) {
      return FromGrpcStatus(s);
    }
    if (!entry.exists()) {
      return absl::NotFoundError(absl::StrCat("no LDC rules at the registry (config key ",
                                              kRulesKey,
                                              "); publish some with `formicactl ldc "
                                              "apply FILE`"));
    }
    absl::StatusOr<RuleSet> rules = ParseRules(entry.value(), kRulesKey);
    if (!rules.ok()) return rules.status();
    return VersionedRules{std::move(*rules), entry.version()};
  }

  absl::StatusOr<uint64_t> Put(const RuleSet& rules,
                               std::optional<uint64_t> expected_version) override {
    if (absl::Status st = Validate(rules); !st.ok()) return st;
    v1::PutConfigRequest req;
    req.set_key(kRulesKey);
    req.set_value(RulesToYaml(rules));
    if (expected_version) req.set_expected_version(*expected_version);
    v1::PutConfigResponse resp;
    auto ctx = Context();
    if (grpc::Status s = stub_->PutConfig(ctx.get(), req, &resp); !s.ok()) {
      return FromGrpcStatus(s);
    }
    return resp.entry().version();
  }

  absl::StatusOr<std::vector<ClientReport>> Clients() override {
    v1::GetServiceRequest req;
    req.set_service(kClientsService);
    v1::ServiceSnapshot snapshot;
    auto ctx = Context();
    grpc::Status s = stub_->GetService(ctx.get(), req, &snapshot);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) return std::vector<ClientReport>{};
    if (!s.ok()) return FromGrpcStatus(s);
    std::vector<ClientReport> out;
    for (const v1::Instance& i : snapshot.instances()) {
      ClientReport c;
      c.id = i.address().substr(0, i.address().rfind(':'));
      c.zone = i.zone();
      auto client = i.metadata().find("client");
      if (client != i.metadata().end()) c.client = client->second;
      auto applied = i.metadata().find("applied_version");
      if (applied != i.metadata().end())
        (void)absl::SimpleAtoi(applied->second, &c.applied_version);
      out.push_back(std::move(c));
    }
    return out;
  }

  // Waits until every client reports at least `version`; the laggards otherwise.
  absl::StatusOr<std::vector<ClientReport>> AwaitClients(uint64_t version, absl::Time deadline,
                                                         absl::Duration poll, int* clients) {
    while (true) {
      absl::StatusOr<std::vector<ClientReport>> all = Clients();
      if (!all.ok()) return all.status();
      std::vector<ClientReport> lagging;
      for (ClientReport& c : *all) {
        if (c.applied_version < version) lagging.push_back(std::move(c));
      }
      *clients = static_cast<int>(all->size());
      if (lagging.empty() || absl::Now() >= deadline) return lagging;
      absl::SleepFor(poll);
    }
  }

  absl::StatusOr<SwitchResult> Switch(const SwitchOptions& options) override {
    const absl::Time start = absl::Now();
    absl::StatusOr<VersionedRules> current = Get();
    if (!current.ok()) return current.status();
    const RuleSet& before = current->rules;
    const Zone* to = before.FindZone(options.to);
    if (to == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zone '", options.to, "' is not in the rules (version ", current->version, ")"));
    }
    if (to->kind != ZoneKind::kRZone) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zone '", options.to, "' is a ", ZoneKindName(to->kind), "; only an rzone owns shards"));
    }
    if (!before.fenced.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "a switch is under way: shards ", FormatShards(before.fenced), " are fenced at version ",
          current->version, "; wait for it, or put the rules back with `formicactl ldc apply`"));
    }
    SwitchResult result;
    result.previous_version = current->version;
    for (int s : options.shards) {
      if (before.owner[s] != options.to) {
        result.moved.insert(s);
        result.from.insert(before.owner[s]);
      }
    }
    if (result.moved.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("nothing to move: zone ", options.to,
                                                        " already owns shards ",
                                                        FormatShards(options.shards)));
    }

    // 1. The fence.
    RuleSet fenced = before;
    fenced.fenced = result.moved;
    absl::StatusOr<uint64_t> fenced_version = Put(fenced, current->version);
    if (!fenced_version.ok()) return fenced_version.status();
    result.fenced_version = *fenced_version;
    const absl::Time fenced_at = absl::Now();

    // 2. The proof: every client applied it.
    absl::StatusOr<std::vector<ClientReport>> lagging = AwaitClients(
        result.fenced_version, fenced_at + options.fence_timeout, options.poll, &result.clients);
    if (!lagging.ok() || (!lagging->empty() && !options.force)) {
      absl::StatusOr<uint64_t> back = Put(before, result.fenced_version);
      std::string why =
          lagging.ok()
              ? absl::StrCat(lagging->size(),
                             " client(s) did not apply the fence "
                             "within ",
                             absl::FormatDuration(options.fence_timeout), ": ", Describe(*lagging))
              : absl::StrCat("the client reports could not be read: ", lagging.status().message());
      std::string undo = back.ok() ? absl::StrCat("the previous rules are back at version ", *back)
                                   : absl::StrCat("putting the previous rules back failed (",
                                                  back.status().message(),
                                                  "); shards stay fenced: run the switch again or "
                                                  "`formicactl ldc apply` the previous rules");
      return absl::DeadlineExceededError(
          absl::StrCat("switch of shards ", FormatShards(result.moved), " to ", options.to,
                       " rolled back: ", why, "; ", undo, "; nothing moved"));
    }
    result.fence_wait = absl::Now() - fenced_at;
    result.lagging = *lagging;

    // 3. The move.
    RuleSet moved = before;
    for (int s : result.moved) moved.owner[s] = options.to;
    absl::StatusOr<uint64_t> final_version = Put(moved, result.fenced_version);
    if (!final_version.ok()) {
      return absl::Status(final_version.status().code(),
                          absl::StrCat("the fence is in place (version ", result.fenced_version,
                                       ") but publishing the new owner failed: ",
                                       final_version.status().message(), "; run the switch again"));
    }
    result.final_version = *final_version;
    result.fenced_for = absl::Now() - fenced_at;

    absl::StatusOr<std::vector<ClientReport>> behind =
        AwaitClients(result.final_version, absl::Now() + options.converge_timeout, options.poll,
                     &result.clients);
    result.converged = behind.ok() && behind->empty();
    result.converge = absl::Now() - start;
    return result;
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + call_timeout_));
    return ctx;
  }

  std::unique_ptr<v1::Registry::Stub> stub_;
  const absl::Duration call_timeout_;
};

}  // namespace

std::unique_ptr<RuleAdmin> RuleAdmin::Connect(const std::string& registry,
                                              absl::Duration call_timeout) {
  return std::make_unique<GrpcRuleAdmin>(registry, call_timeout);
}

}  // namespace formica::ldc
