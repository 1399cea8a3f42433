// formicactl: the ldc commands: zones, shard owners, client versions, switches.
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/ldc/admin.h"
#include "formicactl.h"
#include "google/protobuf/struct.pb.h"

namespace formica::ctl {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

int FailStatus(const absl::Status& status) {
  std::fprintf(stderr, "formicactl: %s\n", status.ToString().c_str());
  return 1;
}

Value Text(const std::string& s) {
  Value v;
  v.set_string_value(s);
  return v;
}

Value Number(double n) {
  Value v;
  v.set_number_value(n);
  return v;
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

int Status(const Flags& flags, ldc::RuleAdmin* admin) {
  absl::StatusOr<ldc::VersionedRules> current = admin->Get();
  if (!current.ok()) return FailStatus(current.status());
  absl::StatusOr<std::vector<ldc::ClientReport>> clients = admin->Clients();
  if (!clients.ok()) return FailStatus(clients.status());
  const ldc::RuleSet& rules = current->rules;
  std::vector<const ldc::ClientReport*> lagging;
  for (const ldc::ClientReport& c : *clients) {
    if (c.applied_version < current->version) lagging.push_back(&c);
  }
  if (flags.output == Output::kJson) {
    Struct out;
    (*out.mutable_fields())["version"] = Number(static_cast<double>(current->version));
    (*out.mutable_fields())["fenced"] = Text(ldc::FormatShards(rules.fenced));
    auto* global = (*out.mutable_fields())["global_services"].mutable_list_value();
    for (const std::string& s : rules.global_services) *global->add_values() = Text(s);
    auto* zones = (*out.mutable_fields())["zones"].mutable_list_value();
    for (const ldc::Zone& z : rules.zones) {
      Value zone;
      auto& f = *zone.mutable_struct_value()->mutable_fields();
      f["name"] = Text(z.name);
      f["kind"] = Text(std::string(ldc::ZoneKindName(z.kind)));
      f["data_center"] = Text(z.data_center);
      f["city"] = Text(z.city);
      f["shards"] = Text(ldc::FormatShards(rules.ShardsOf(z.name)));
      *zones->add_values() = zone;
    }
    auto* list = (*out.mutable_fields())["clients"].mutable_list_value();
    for (const ldc::ClientReport& c : *clients) {
      Value client;
      auto& f = *client.mutable_struct_value()->mutable_fields();
      f["id"] = Text(c.id);
      f["client"] = Text(c.client);
      f["zone"] = Text(c.zone);
      f["applied_version"] = Number(static_cast<double>(c.applied_version));
      f["lagging"].set_bool_value(c.applied_version < current->version);
      *list->add_values() = client;
    }
    return PrintJson(out);
  }
  std::printf("rules version %llu%s\n\n", static_cast<unsigned long long>(current->version),
              rules.fenced.empty()
                  ? ""
                  : absl::StrCat("  (fenced: ", ldc::FormatShards(rules.fenced), ")").c_str());
  std::printf("%-16s %-6s %-14s %-14s %s\n", "ZONE", "KIND", "DATA CENTER", "CITY", "SHARDS");
  for (const ldc::Zone& z : rules.zones) {
    std::string shards = ldc::FormatShards(rules.ShardsOf(z.name));
    std::printf("%-16s %-6s %-14s %-14s %s\n", z.name.c_str(),
                std::string(ldc::ZoneKindName(z.kind)).c_str(),
                z.data_center.empty() ? "-" : z.data_center.c_str(),
                z.city.empty() ? "-" : z.city.c_str(), shards.empty() ? "-" : shards.c_str());
  }
  if (!rules.global_services.empty()) {
    std::printf("\nglobal services (GZone; reads may go to a CZone): %s\n",
                absl::StrJoin(rules.global_services, ", ").c_str());
  }
  std::printf("\n%zu client(s), %zu on an older version\n", clients->size(), lagging.size());
  if (!clients->empty()) {
    std::printf("%-36s %-20s %-16s %s\n", "CLIENT", "NAME", "ZONE", "APPLIED");
    for (const ldc::ClientReport& c : *clients) {
      std::printf("%-36s %-20s %-16s %llu%s\n", c.id.c_str(), c.client.c_str(), c.zone.c_str(),
                  static_cast<unsigned long long>(c.applied_version),
                  c.applied_version < current->version ? "  LAGGING" : "");
    }
  }
  return 0;
}

int Apply(const Flags& flags, ldc::RuleAdmin* admin, const std::string& file) {
  absl::StatusOr<ldc::RuleSet> rules = ldc::LoadRulesFile(file);
  if (!rules.ok()) return FailStatus(rules.status());
  absl::StatusOr<uint64_t> version = admin->Put(*rules, flags.expect_version);
  if (!version.ok()) return FailStatus(version.status());
  if (flags.output == Output::kJson) {
    Struct out;
    (*out.mutable_fields())["version"] = Number(static_cast<double>(*version));
    return PrintJson(out);
  }
  std::printf("rules from %s published at version %llu\n", file.c_str(),
              static_cast<unsigned long long>(*version));
  return 0;
}

int Route(const Flags& flags, ldc::RuleAdmin* admin, const std::string& user) {
  absl::StatusOr<ldc::VersionedRules> current = admin->Get();
  if (!current.ok()) return FailStatus(current.status());
  absl::StatusOr<int> shard = UserShard(user);
  if (!shard.ok()) return FailStatus(shard.status());
  const ldc::Zone* owner = current->rules.Owner(*shard);
  bool fenced = current->rules.fenced.count(*shard) > 0;
  if (flags.output == Output::kJson) {
    Struct out;
    (*out.mutable_fields())["user"] = Text(user);
    (*out.mutable_fields())["shard"] = Number(*shard);
    (*out.mutable_fields())["owner"] = Text(owner->name);
    (*out.mutable_fields())["fenced"].set_bool_value(fenced);
    (*out.mutable_fields())["version"] = Number(static_cast<double>(current->version));
    return PrintJson(out);
  }
  std::printf("user %s: shard %02d, owner %s (%s, %s)%s, rules version %llu\n", user.c_str(),
              *shard, owner->name.c_str(), owner->data_center.c_str(), owner->city.c_str(),
              fenced ? ", FENCED" : "", static_cast<unsigned long long>(current->version));
  return 0;
}

int Switch(const Flags& flags, ldc::RuleAdmin* admin) {
  if (flags.to.empty() || flags.shards.empty() == flags.zone.empty()) {
    return Usage("ldc switch needs --to ZONE and one of --shards RANGES or --zone ZONE");
  }
  ldc::SwitchOptions options;
  options.to = flags.to;
  options.force = flags.force;
  options.fence_timeout = flags.fence_timeout;
  options.converge_timeout = flags.fence_timeout;
  if (!flags.shards.empty()) {
    absl::StatusOr<std::set<int>> shards = ldc::ParseShards(flags.shards);
    if (!shards.ok()) return FailStatus(shards.status());
    options.shards = *shards;
  } else {
    absl::StatusOr<ldc::VersionedRules> current = admin->Get();
    if (!current.ok()) return FailStatus(current.status());
    if (current->rules.FindZone(flags.zone) == nullptr) {
      return FailStatus(absl::InvalidArgumentError(absl::StrCat(
          "zone '", flags.zone, "' is not in the rules (version ", current->version, ")")));
    }
    options.shards = current->rules.ShardsOf(flags.zone);
    if (options.shards.empty()) {
      return FailStatus(
          absl::FailedPreconditionError(absl::StrCat("zone '", flags.zone, "' owns no shards")));
    }
  }
  FILE* out = PromptStream(flags);
  if (flags.force) {
    std::fprintf(out,
                 "--force: ownership moves even if clients have not applied the fence. A "
                 "lagging client that is still alive may keep writing shards %s in its old zone "
                 "while %s writes them too; use it only for a zone that is gone for good.\n",
                 ldc::FormatShards(options.shards).c_str(), flags.to.c_str());
  }
  if (!flags.yes && !Confirm(out, absl::StrCat("move shards ", ldc::FormatShards(options.shards),
                                               " to ", flags.to, "?"))) {
    std::fprintf(out, "nothing done\n");
    return 1;
  }
  absl::StatusOr<ldc::SwitchResult> r = admin->Switch(options);
  if (!r.ok()) return FailStatus(r.status());
  if (flags.output == Output::kJson) {
    Struct o;
    auto& f = *o.mutable_fields();
    f["moved"] = Text(ldc::FormatShards(r->moved));
    f["from"] = Text(absl::StrJoin(r->from, ","));
    f["to"] = Text(flags.to);
    f["previous_version"] = Number(static_cast<double>(r->previous_version));
    f["fenced_version"] = Number(static_cast<double>(r->fenced_version));
    f["final_version"] = Number(static_cast<double>(r->final_version));
    f["fence_wait_ms"] = Number(Ms(r->fence_wait));
    f["fenced_ms"] = Number(Ms(r->fenced_for));
    f["converge_ms"] = Number(Ms(r->converge));
    f["converged"].set_bool_value(r->converged);
    f["clients"] = Number(r->clients);
    f["lagging"] = Number(static_cast<double>(r->lagging.size()));
    return PrintJson(o);
  }
  std::printf("fenced shards %s at version %llu; %d client(s) applied it in %.1f ms\n",
              ldc::FormatShards(r->moved).c_str(),
              static_cast<unsigned long long>(r->fenced_version), r->clients, Ms(r->fence_wait));
  for (const ldc::ClientReport& c : r->lagging) {
    std::printf("  forced past %s %s (zone %s, version %llu)\n", c.client.c_str(), c.id.c_str(),
                c.zone.c_str(), static_cast<unsigned long long>(c.applied_version));
  }
  std::printf("moved shards %s from %s to %s at version %llu; writes were fenced %.1f ms\n",
              ldc::FormatShards(r->moved).c_str(), absl::StrJoin(r->from, ",").c_str(),
              flags.to.c_str(), static_cast<unsigned long long>(r->final_version),
              Ms(r->fenced_for));
  std::printf(r->converged
                  ? "every client on version %llu after %.1f ms\n"
                  : "some clients not yet on version %llu after %.1f ms (see ldc status)\n",
              static_cast<unsigned long long>(r->final_version), Ms(r->converge));
  return 0;
}

}  // namespace

int Ldc(const Flags& flags, const std::vector<std::string>& args) {
  std::unique_ptr<ldc::RuleAdmin> admin =
      ldc::RuleAdmin::Connect(flags.registry, absl::Seconds(flags.timeout_s));
  const std::string& cmd = args[1];
  if (cmd == "status" && args.size() == 2) return Status(flags, admin.get());
  if (cmd == "apply" && args.size() == 3) return Apply(flags, admin.get(), args[2]);
  if (cmd == "route" && args.size() == 3) return Route(flags, admin.get(), args[2]);
  if (cmd == "switch" && args.size() == 2) return Switch(flags, admin.get());
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

}  // namespace formica::ctl
