// formicactl: a release plan, from --plan FILE and the flags.
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "formica/common/config.h"
#include "release.h"

namespace formica::ctl {

namespace v1 = formica::rpc::v1;

namespace {

// "beta:1" (a count) or "canary:zone=gz01" (the old instances with a tag).
absl::Status ParseGroup(const std::string& text, v1::ReleaseGroup* group) {
  size_t colon = text.find(':');
  std::string name = text.substr(0, colon);
  std::string what = colon == std::string::npos ? "" : text.substr(colon + 1);
  int count = 0;
  if (name.empty() || what.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group '", text, "' is not NAME:COUNT or NAME:KEY=VALUE (e.g. beta:1)"));
  }
  group->set_name(name);
  group->set_state("waiting");
  if (absl::SimpleAtoi(what, &count)) {
    if (count < 1) {
      return absl::InvalidArgumentError(absl::StrCat("group '", text, "' replaces no instance"));
    }
    group->set_count(count);
    return absl::OkStatus();
  }
  size_t eq = what.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == what.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group '", text, "' is not NAME:COUNT or NAME:KEY=VALUE (e.g. beta:1)"));
  }
  group->set_selector(what);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::Release> LoadPlan(const Flags& flags, const std::string& service_arg,
                                     TrafficLink& link) {
  v1::Release r;
  std::vector<std::string> groups;
  Thresholds limits;
  int64_t bake_ms = 30000;
  int64_t ready_ms = 120000;
  bool auto_continue = false;
  std::string service = service_arg;
  r.set_version_key("version");
  if (!flags.plan.empty()) {
    absl::StatusOr<formica::Config> config = formica::Config::LoadFile(flags.plan);
    if (!config.ok()) return config.status();
    formica::ConfigReader c(*config);
    std::string planned = c.String("service", "");
    if (!service.empty() && !planned.empty() && planned != service) {
      c.Fail("service", absl::StrCat("the plan is for '", planned, "', not '", service, "'"));
    }
    if (service.empty()) service = planned;
    r.set_version_key(c.String("version_key", "version"));
    r.set_version(c.String("version", ""));
    r.set_previous(c.String("previous", ""));
    r.set_deploy(c.String("deploy", ""));
    groups = c.StringList("groups", {});
    bake_ms = absl::ToInt64Milliseconds(
        c.Duration("bake", absl::Seconds(30), absl::ZeroDuration(), absl::Hours(24)));
    ready_ms = absl::ToInt64Milliseconds(
        c.Duration("ready_timeout", absl::Minutes(2), absl::Seconds(1), absl::Hours(24)));
    auto_continue = c.Bool("auto", false);
    limits.min_calls = c.Int("analysis.min_calls", limits.min_calls, 1, 1000000000);
    limits.max_failure_rate_increase =
        c.Int("analysis.max_failure_increase_percent",
              static_cast<int64_t>(limits.max_failure_rate_increase), 0, 100);
    limits.max_p99_ratio = c.Int("analysis.max_p99_percent",
                                 static_cast<int64_t>(limits.max_p99_ratio * 100), 100, 100000) /
                           100.0;
    limits.p99_slack_ms = static_cast<double>(
        c.Int("analysis.p99_slack_ms", static_cast<int64_t>(limits.p99_slack_ms), 0, 3600000));
    if (absl::Status st = c.Finish(); !st.ok()) return st;
  }
  if (service.empty()) {
    return absl::InvalidArgumentError("which service? give SERVICE or a plan with 'service'");
  }
  r.set_service(service);
  if (!flags.version.empty()) r.set_version(flags.version);
  if (!flags.deploy.empty()) r.set_deploy(flags.deploy);
  if (!flags.groups.empty()) {
    groups = absl::StrSplit(flags.groups, ',', absl::SkipWhitespace());
  }
  if (flags.bake_ms >= 0) bake_ms = flags.bake_ms;
  if (flags.ready_timeout_ms >= 0) ready_ms = flags.ready_timeout_ms;
  if (flags.auto_continue) auto_continue = true;
  if (flags.thresholds_given) {
    limits = {flags.max_failure_increase, flags.max_p99_ratio, flags.p99_slack_ms, flags.min_calls};
  }
  if (r.version().empty()) {
    return absl::InvalidArgumentError("the new version is missing (--version or 'version')");
  }
  if (r.deploy().empty()) {
    return absl::InvalidArgumentError(
        "the deploy command is missing (--deploy or 'deploy', e.g. "
        "'systemctl restart fund@{instances}')");
  }
  if (groups.empty()) {
    return absl::InvalidArgumentError("no groups (--groups beta:1,1:2 or 'groups')");
  }
  std::set<std::string> names;
  for (const std::string& g : groups) {
    v1::ReleaseGroup* group = r.add_groups();
    if (absl::Status st = ParseGroup(g, group); !st.ok()) return st;
    if (!names.insert(group->name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("group '", group->name(), "' is given twice"));
    }
  }
  r.set_bake_ms(bake_ms);
  r.set_ready_timeout_ms(ready_ms);
  r.set_auto_continue(auto_continue);
  r.set_max_failure_rate_increase(limits.max_failure_rate_increase);
  r.set_max_p99_ratio(limits.max_p99_ratio);
  r.set_p99_slack_ms(limits.p99_slack_ms);
  r.set_min_calls(limits.min_calls);
  // The providers now: every one carries a version, and all but the new
  // one the same (the previous version), unless the plan names it.
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return providers.status();
  std::map<std::string, int> versions;
  std::vector<std::string> unversioned;
  for (const ProviderInfo& p : *providers) {
    auto it = p.tags.find(r.version_key());
    if (it == p.tags.end()) {
      unversioned.push_back(p.address);
    } else {
      ++versions[it->second];
    }
  }
  if (!unversioned.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("providers of ", service, " without a '",
                                                   r.version_key(),
                                                   "' tag: ", absl::StrJoin(unversioned, ", ")));
  }
  std::vector<std::string> old;
  for (const auto& [v, n] : versions) {
    if (v != r.version()) old.push_back(absl::StrCat(v, " (", n, ")"));
  }
  if (r.previous().empty()) {
    if (old.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the providers of ", service, " run ",
                       old.empty() ? "no version but the new one" : absl::StrJoin(old, ", "),
                       "; name the version to replace ('previous' in the plan)"));
    }
    for (const auto& [v, n] : versions) {
      if (v != r.version()) r.set_previous(v);
    }
  }
  if (r.previous() == r.version()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the new version ", r.version(), " is the one running"));
  }
  r.set_old_instances(versions[r.previous()]);
  if (r.old_instances() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("no provider of ", service, " runs ", r.version_key(), "=", r.previous()));
  }
  return r;
}

}  // namespace formica::ctl
