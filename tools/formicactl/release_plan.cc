// formicactl: a release plan, from --plan FILE and the flags.
#include <optional>
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

// A group's own bake time and thresholds, where the plan sets them.
struct GroupSettings {
  std::optional<int64_t> bake_ms;
  Thresholds limits;
  bool limits_given = false;
  std::string where;  // where they were given, for errors
};

// The analysis thresholds under `prefix` ("analysis" or
// "group.beta.analysis"), defaulting to `limits`.
Thresholds ReadThresholds(formica::ConfigReader& c, const std::string& prefix, Thresholds limits) {
  limits.min_calls = c.Int(prefix + ".min_calls", limits.min_calls, 1, 1000000000);
  limits.max_failure_rate_increase =
      static_cast<double>(c.Int(prefix + ".max_failure_increase_percent",
                                static_cast<int64_t>(limits.max_failure_rate_increase), 0, 100));
  limits.max_p99_ratio = c.Int(prefix + ".max_p99_percent",
                               static_cast<int64_t>(limits.max_p99_ratio * 100), 100, 100000) /
                         100.0;
  limits.p99_slack_ms = static_cast<double>(
      c.Int(prefix + ".p99_slack_ms", static_cast<int64_t>(limits.p99_slack_ms), 0, 3600000));
  return limits;
}

// --group NAME:KEY=VALUE,... (KEY: bake, min-calls, max-failure-increase,
// max-p99-ratio, p99-slack-ms) over what the plan file set for NAME.
absl::Status ParseGroupFlag(const std::string& text, const Thresholds& defaults,
                            std::map<std::string, GroupSettings>* settings) {
  size_t colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--group '", text, "' is not NAME:KEY=VALUE,... (e.g. beta:bake=5m,min-calls=50)"));
  }
  std::string name = text.substr(0, colon);
  GroupSettings& g = (*settings)[name];
  if (!g.limits_given) g.limits = defaults;
  g.where = absl::StrCat("--group ", text);
  for (absl::string_view item : absl::StrSplit(text.substr(colon + 1), ',')) {
    size_t eq = item.find('=');
    std::string key(item.substr(0, eq));
    std::string value(eq == absl::string_view::npos ? "" : item.substr(eq + 1));
    auto bad = [&](const std::string& want) {
      return absl::InvalidArgumentError(
          absl::StrCat("--group ", name, ": ", key, " wants ", want, ", not '", value, "'"));
    };
    double x = 0;
    if (key == "bake") {
      absl::Duration d;
      if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration() || d > absl::Hours(24)) {
        return bad("a duration up to 24h (e.g. 5m)");
      }
      g.bake_ms = absl::ToInt64Milliseconds(d);
      continue;
    }
    if (key == "min-calls") {
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 1) return bad("a positive number");
      g.limits.min_calls = n;
    } else if (key == "max-failure-increase" || key == "max-p99-ratio" || key == "p99-slack-ms") {
      if (!absl::SimpleAtod(value, &x) || x < 0) return bad("a number of at least 0");
      (key == "max-failure-increase" ? g.limits.max_failure_rate_increase
       : key == "max-p99-ratio"      ? g.limits.max_p99_ratio
                                     : g.limits.p99_slack_ms) = x;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--group ", name, ": unknown setting '", key,
                       "' (bake, min-calls, max-failure-increase, max-p99-ratio, p99-slack-ms)"));
    }
    g.limits_given = true;
  }
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
  std::map<std::string, GroupSettings> settings;  // by group name
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
    r.set_analysis(c.String("analysis_source", ""));
    r.set_per_room(c.String("analysis.per_room", ""));
    groups = c.StringList("groups", {});
    bake_ms = absl::ToInt64Milliseconds(
        c.Duration("bake", absl::Seconds(30), absl::ZeroDuration(), absl::Hours(24)));
    ready_ms = absl::ToInt64Milliseconds(
        c.Duration("ready_timeout", absl::Minutes(2), absl::Seconds(1), absl::Hours(24)));
    auto_continue = c.Bool("auto", false);
    limits = ReadThresholds(c, "analysis", limits);
    // group.<name>.bake and group.<name>.analysis.*: one group's own.
    for (const std::string& name : c.Children("group")) {
      std::string prefix = absl::StrCat("group.", name);
      GroupSettings& g = settings[name];
      g.where = absl::StrCat(flags.plan, ": ", prefix);
      if (c.Has(prefix + ".bake")) {
        g.bake_ms = absl::ToInt64Milliseconds(
            c.Duration(prefix + ".bake", absl::Seconds(30), absl::ZeroDuration(), absl::Hours(24)));
      }
      g.limits_given = !c.Children(prefix + ".analysis").empty();
      g.limits = ReadThresholds(c, prefix + ".analysis", limits);
    }
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
  for (const std::string& text : flags.group_settings) {
    if (absl::Status st = ParseGroupFlag(text, limits, &settings); !st.ok()) return st;
  }
  if (!flags.analysis.empty()) r.set_analysis(flags.analysis);
  if (!flags.per_room.empty()) r.set_per_room(flags.per_room);
  if (absl::Status st = CheckAnalysisSource(r.analysis()); !st.ok()) return st;
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
  for (const auto& [name, g] : settings) {
    if (names.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(g.where, ": there is no group '", name,
                                                     "' (the groups: ", absl::StrJoin(names, ", "),
                                                     ")"));
    }
  }
  for (v1::ReleaseGroup& group : *r.mutable_groups()) {
    auto it = settings.find(group.name());
    const GroupSettings* own = it == settings.end() ? nullptr : &it->second;
    const Thresholds& l = own != nullptr && own->limits_given ? own->limits : limits;
    group.set_bake_ms(own != nullptr && own->bake_ms ? *own->bake_ms : bake_ms);
    group.set_max_failure_rate_increase(l.max_failure_rate_increase);
    group.set_max_p99_ratio(l.max_p99_ratio);
    group.set_p99_slack_ms(l.p99_slack_ms);
    group.set_min_calls(l.min_calls);
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
