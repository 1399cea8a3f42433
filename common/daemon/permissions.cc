#include "formica/internal/permissions.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "formica/internal/credentials.h"

namespace formica {
namespace {

constexpr const char* kActions[] = {"publish", "subscribe", "config.write",
                                    "produce", "consume",   "operate"};

struct Grant {
  std::string action;
  std::string resource;  // a pattern
};
struct Rule {
  std::string identity;  // a pattern
  std::vector<Grant> grants;
  int line = 0;
};
struct RuleSet {
  std::string path;
  absl::Duration reload;
  std::vector<Rule> rules;
  timespec mtime = {};
  off_t size = 0;
};

// "*" matches anything, "abc*" what starts with "abc", else the text itself.
bool Matches(absl::string_view pattern, absl::string_view text) {
  if (pattern == "*") return true;
  if (absl::EndsWith(pattern, "*")) {
    return absl::StartsWith(text, pattern.substr(0, pattern.size() - 1));
  }
  return pattern == text;
}

absl::Status Bad(const std::string& path, const YAML::Node& node, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ":", node.Mark().line + 1, ": permissions: ", what));
}

absl::StatusOr<std::vector<Rule>> Parse(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": permissions file cannot be read"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ":", e.mark.line + 1, ": permissions: ", e.msg));
  }
  if (!root.IsMap()) return Bad(path, root, "expected a map with the key 'rules'");
  std::vector<Rule> rules;
  for (const auto& top : root) {
    std::string key = top.first.as<std::string>();
    if (key != "rules") return Bad(path, top.first, absl::StrCat("unknown key '", key, "'"));
    if (!top.second.IsSequence()) return Bad(path, top.second, "'rules' must be a list");
    for (const YAML::Node& r : top.second) {
      if (!r.IsMap()) return Bad(path, r, "a rule is a map of 'identity' and 'allow'");
      Rule rule;
      rule.line = r.Mark().line + 1;
      for (const auto& field : r) {
        std::string name = field.first.as<std::string>();
        if (name == "identity") {
          if (!field.second.IsScalar() || field.second.Scalar().empty()) {
            return Bad(path, field.second, "'identity' must be an identity or a pattern");
          }
          rule.identity = field.second.Scalar();
        } else if (name == "allow") {
          if (!field.second.IsSequence()) {
            return Bad(path, field.second, "'allow' must be a list of 'ACTION RESOURCE'");
          }
          for (const YAML::Node& g : field.second) {
            std::vector<std::string> parts =
                absl::StrSplit(g.IsScalar() ? g.Scalar() : "", ' ', absl::SkipEmpty());
            if (parts.size() != 2) {
              return Bad(path, g, "an allow entry is 'ACTION RESOURCE', e.g. 'publish fund.*'");
            }
            bool known = false;
            for (const char* a : kActions) known = known || parts[0] == a;
            if (!known) {
              return Bad(path, g,
                         absl::StrCat("unknown action '", parts[0],
                                      "' (publish, subscribe, config.write, produce, consume, "
                                      "operate)"));
            }
            rule.grants.push_back({parts[0], parts[1]});
          }
        } else {
          return Bad(path, field.first, absl::StrCat("unknown key '", name, "' in a rule"));
        }
      }
      if (rule.identity.empty()) return Bad(path, r, "a rule needs 'identity'");
      rules.push_back(std::move(rule));
    }
  }
  return rules;
}

absl::Mutex mu;
std::atomic<bool> in_force{false};  // a rule set is in force (Current() != nullptr)
std::shared_ptr<RuleSet>& Current() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
  static auto* set = new std::shared_ptr<RuleSet>();
  return *set;
}
absl::Time& LastLook() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
  static absl::Time t;
  return t;
}

// The rules in force, read again first when the file changed.
std::shared_ptr<const RuleSet> Rules() {
  absl::MutexLock lock(&mu);
  std::shared_ptr<RuleSet>& set = Current();
  if (set == nullptr) return nullptr;
  absl::Time now = absl::Now();
  if (now - LastLook() < set->reload) return set;
  LastLook() = now;
  struct stat st {};
  if (::stat(set->path.c_str(), &st) != 0) {
    spdlog::error("permissions: {} cannot be read now; the rules read before stay in force",
                  set->path);
    return set;
  }
  if (st.st_mtim.tv_sec == set->mtime.tv_sec && st.st_mtim.tv_nsec == set->mtime.tv_nsec &&
      st.st_size == set->size) {
    return set;
  }
  absl::StatusOr<std::vector<Rule>> rules = Parse(set->path);
  auto fresh = std::make_shared<RuleSet>(*set);
  fresh->mtime = st.st_mtim;
  fresh->size = st.st_size;
  if (!rules.ok()) {
    spdlog::error("{}; the rules read before stay in force", std::string(rules.status().message()));
  } else {
    fresh->rules = *std::move(rules);
    spdlog::info("permissions: read {} again: {} rules", set->path, fresh->rules.size());
  }
  set = std::move(fresh);
  return set;
}

}  // namespace

absl::Status UsePermissions(const std::string& path, absl::Duration reload) {
  if (path.empty()) {
    absl::MutexLock lock(&mu);
    Current().reset();
    in_force.store(false);
    return absl::OkStatus();
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": permissions file cannot be read"));
  }
  absl::StatusOr<std::vector<Rule>> rules = Parse(path);
  if (!rules.ok()) return rules.status();
  auto set = std::make_shared<RuleSet>();
  set->path = path;
  set->reload = reload;
  set->rules = *std::move(rules);
  set->mtime = st.st_mtim;
  set->size = st.st_size;
  absl::MutexLock lock(&mu);
  Current() = std::move(set);
  LastLook() = absl::Now();
  in_force.store(true);
  return absl::OkStatus();
}

namespace {

// Whether a rule of `set` for `identity` grants `action` on a resource
// `resource_matches` accepts. A caller without an identity (no
// certificate) matches no rule, "*"'s neither: with a permissions file, it
// may do nothing.
bool Granted(const RuleSet& set, absl::string_view identity, absl::string_view action,
             const std::function<bool(const std::string& pattern)>& resource_matches) {
  if (identity.empty()) return false;
  for (const Rule& rule : set.rules) {
    if (!Matches(rule.identity, identity)) continue;
    for (const Grant& g : rule.grants) {
      if (g.action == action && resource_matches(g.resource)) return true;
    }
  }
  return false;
}

std::string Who(absl::string_view identity) {
  return identity.empty() ? std::string("(no certificate)") : absl::StrCat("'", identity, "'");
}

}  // namespace

absl::Status CheckPermission(absl::string_view identity, absl::string_view action,
                             absl::string_view resource) {
  if (!in_force.load(std::memory_order_relaxed)) return absl::OkStatus();
  std::shared_ptr<const RuleSet> set = Rules();
  if (set == nullptr) return absl::OkStatus();
  if (Granted(*set, identity, action,
              [&](const std::string& pattern) { return Matches(pattern, resource); })) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("identity ", Who(identity), " may not ", action,
                                                  " '", resource, "': no rule in ", set->path,
                                                  " allows '", action, " ", resource, "'"));
}

absl::Status CheckPermissionOnAny(absl::string_view identity, absl::string_view action,
                                  absl::string_view what) {
  if (!in_force.load(std::memory_order_relaxed)) return absl::OkStatus();
  std::shared_ptr<const RuleSet> set = Rules();
  if (set == nullptr) return absl::OkStatus();
  if (Granted(*set, identity, action, [](const std::string&) { return true; })) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("identity ", Who(identity), " may not ", what,
                                                  ": no rule in ", set->path, " allows it to ",
                                                  action, " anything"));
}

absl::Status CheckCaller(grpc::ServerContextBase* context, absl::string_view action,
                         absl::string_view resource) {
  if (!in_force.load(std::memory_order_relaxed)) return absl::OkStatus();
  absl::Status st = CheckPermission(PeerIdentity(*context->auth_context()), action, resource);
  if (!st.ok()) spdlog::warn("{}", std::string(st.message()));
  return st;
}

}  // namespace formica
