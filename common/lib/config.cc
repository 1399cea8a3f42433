#include "formica/common/config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace formica {

struct Config::Data {
  struct Leaf {
    std::vector<std::string> values;  // one for a scalar, any number for a list
    bool is_list = false;
    int line = 0;  // 1-based; 0 when set by Set()
  };
  std::string source;
  std::map<std::string, Leaf, std::less<>> leaves;
  std::set<std::string, std::less<>> empty;  // keys written with no value (`raft:`)
};

namespace {
absl::Status Flatten(const YAML::Node& node, const std::string& prefix, Config::Data* data) {
  const int line = node.Mark().line + 1;
  switch (node.Type()) {
    case YAML::NodeType::Null:
      if (!prefix.empty()) data->empty.insert(prefix);
      return absl::OkStatus();
    case YAML::NodeType::Undefined:
      return absl::OkStatus();
    case YAML::NodeType::Scalar:
      data->leaves[prefix] = {{node.Scalar()}, false, line};
      return absl::OkStatus();
    case YAML::NodeType::Sequence: {
      Config::Data::Leaf leaf{{}, true, line};
      for (const auto& item : node) {
        if (!item.IsScalar()) {
          return absl::InvalidArgumentError(absl::StrCat(data->source, ":", item.Mark().line + 1,
                                                         ": ", prefix,
                                                         ": expected a list of plain values"));
        }
        leaf.values.push_back(item.Scalar());
      }
      data->leaves[prefix] = std::move(leaf);
      return absl::OkStatus();
    }
    case YAML::NodeType::Map:
      for (const auto& kv : node) {
        std::string key = kv.first.Scalar();
        if (key.empty() || key.find('.') != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(data->source, ":", kv.first.Mark().line + 1, ": key '", key, "' under '",
                           prefix, "' must be a non-empty name without dots"));
        }
        std::string path = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
        absl::Status st = Flatten(kv.second, path, data);
        if (!st.ok()) {
          return st;
        }
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}
}  // namespace

Config::Config() : data_(std::make_shared<Data>()) { data_->source = "<defaults>"; }

absl::StatusOr<Config> Config::Parse(absl::string_view yaml, absl::string_view source) {
  Config config;
  config.data_->source = std::string(source);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
  }
  if (!root.IsNull() && !root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the top level must be a map of keys"));
  }
  absl::Status st = Flatten(root, "", config.data_.get());
  if (!st.ok()) {
    return st;
  }
  return config;
}

absl::StatusOr<Config> Config::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("config file '", path, "' cannot be read"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str(), path);
}

absl::Status Config::Set(absl::string_view path, absl::string_view value) {
  if (path.empty()) {
    return absl::InvalidArgumentError("config override needs a key path");
  }
  auto copy = std::make_shared<Data>(*data_);
  copy->leaves[std::string(path)] = {{std::string(value)}, false, 0};
  data_ = std::move(copy);
  return absl::OkStatus();
}

const std::string& Config::source() const { return data_->source; }

Config Config::Without(absl::string_view section) const {
  auto data = std::make_shared<Data>(*data_);
  const std::string prefix = absl::StrCat(section, ".");
  for (auto it = data->leaves.begin(); it != data->leaves.end();) {
    it = absl::StartsWith(it->first, prefix) ? data->leaves.erase(it) : std::next(it);
  }
  Config out;
  out.data_ = std::move(data);
  return out;
}

struct ConfigReader::State {
  std::shared_ptr<const Config::Data> data;
  std::set<std::string, std::less<>> read;
  std::string scope;  // "" or "section." : what Finish() checks
  absl::Status first_error;

  const Config::Data::Leaf* Find(absl::string_view path) {
    read.insert(std::string(path));
    auto it = data->leaves.find(path);
    return it == data->leaves.end() ? nullptr : &it->second;
  }

  void Error(absl::string_view path, absl::string_view reason) {
    if (!first_error.ok()) {
      return;
    }
    std::string where = data->source;
    auto it = data->leaves.find(path);
    if (it != data->leaves.end() && it->second.line > 0) {
      absl::StrAppend(&where, ":", it->second.line);
    } else if (it != data->leaves.end()) {
      where = "command line";
    }
    first_error = absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": ", reason));
  }

  // The scalar at `path`, or nullptr (and an error) when it is a list.
  const std::string* Scalar(absl::string_view path) {
    const Config::Data::Leaf* leaf = Find(path);
    if (leaf == nullptr) {
      return nullptr;
    }
    if (leaf->is_list) {
      Error(path, "expected a single value, got a list");
      return nullptr;
    }
    return &leaf->values.front();
  }
};

ConfigReader::ConfigReader(const Config& config) : state_(std::make_unique<State>()) {
  state_->data = config.data_;
}

ConfigReader::ConfigReader(const Config& config, absl::string_view scope) : ConfigReader(config) {
  state_->scope = absl::StrCat(scope, ".");
}

ConfigReader::~ConfigReader() = default;

bool ConfigReader::Has(absl::string_view path) const {
  return state_->data->leaves.count(path) > 0;
}

bool ConfigReader::Empty(absl::string_view path) const {
  return state_->data->empty.count(path) > 0;
}

std::string ConfigReader::String(absl::string_view path, std::string def) {
  const std::string* v = state_->Scalar(path);
  return v == nullptr ? def : *v;
}

int64_t ConfigReader::Int(absl::string_view path, int64_t def, int64_t min, int64_t max) {
  const std::string* v = state_->Scalar(path);
  if (v == nullptr) {
    return def;
  }
  int64_t out = 0;
  if (!absl::SimpleAtoi(*v, &out)) {
    state_->Error(path, absl::StrCat("expected an integer, got '", *v, "'"));
    return def;
  }
  if (out < min || out > max) {
    state_->Error(path, absl::StrCat("must be between ", min, " and ", max, ", got ", out));
    return def;
  }
  return out;
}

bool ConfigReader::Bool(absl::string_view path, bool def) {
  const std::string* v = state_->Scalar(path);
  if (v == nullptr) {
    return def;
  }
  std::string lower = absl::AsciiStrToLower(*v);
  if (lower == "true" || lower == "yes" || lower == "on") {
    return true;
  }
  if (lower == "false" || lower == "no" || lower == "off") {
    return false;
  }
  state_->Error(path, absl::StrCat("expected true or false, got '", *v, "'"));
  return def;
}

absl::Duration ConfigReader::Duration(absl::string_view path, absl::Duration def,
                                      absl::Duration min, absl::Duration max) {
  const std::string* v = state_->Scalar(path);
  if (v == nullptr) {
    return def;
  }
  absl::Duration out;
  if (!absl::ParseDuration(*v, &out) || *v == "0" || *v == "inf" || *v == "-inf") {
    state_->Error(path,
                  absl::StrCat("expected a duration such as '500ms' or '10s', got '", *v, "'"));
    return def;
  }
  if (out < min || out > max) {
    state_->Error(path, absl::StrCat("must be between ", absl::FormatDuration(min), " and ",
                                     absl::FormatDuration(max), ", got ", *v));
    return def;
  }
  return out;
}

int64_t ConfigReader::Bytes(absl::string_view path, int64_t def, int64_t min, int64_t max) {
  const std::string* v = state_->Scalar(path);
  if (v == nullptr) {
    return def;
  }
  absl::string_view text = absl::StripAsciiWhitespace(*v);
  int64_t unit = 1;
  for (auto [suffix, mult] : {std::pair<absl::string_view, int64_t>{"KiB", 1LL << 10},
                              {"MiB", 1LL << 20},
                              {"GiB", 1LL << 30},
                              {"B", 1}}) {
    if (absl::ConsumeSuffix(&text, suffix)) {
      unit = mult;
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &n) || n < 0 ||
      n > std::numeric_limits<int64_t>::max() / unit) {
    state_->Error(
        path, absl::StrCat("expected a size such as '4096', '64KiB' or '4MiB', got '", *v, "'"));
    return def;
  }
  int64_t out = n * unit;
  if (out < min || out > max) {
    state_->Error(path, absl::StrCat("must be between ", min, " and ", max, " bytes, got ", *v));
    return def;
  }
  return out;
}

std::vector<std::string> ConfigReader::StringList(absl::string_view path,
                                                  std::vector<std::string> def) {
  const Config::Data::Leaf* leaf = state_->Find(path);
  if (leaf == nullptr) {
    return def;
  }
  if (leaf->is_list) {
    return leaf->values;
  }
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(leaf->values.front(), ',', absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

std::map<std::string, std::string> ConfigReader::StringMap(absl::string_view path) {
  std::map<std::string, std::string> out;
  std::string prefix = absl::StrCat(path, ".");
  for (auto it = state_->data->leaves.lower_bound(prefix);
       it != state_->data->leaves.end() && absl::StartsWith(it->first, prefix); ++it) {
    std::string key = it->first.substr(prefix.size());
    if (key.find('.') != std::string::npos) {
      continue;  // deeper levels are not part of this map
    }
    const std::string* value = state_->Scalar(it->first);
    if (value != nullptr) {
      out[key] = *value;
    }
  }
  return out;
}

std::vector<std::string> ConfigReader::Children(absl::string_view path) const {
  std::vector<std::string> out;
  std::string prefix = absl::StrCat(path, ".");
  for (auto it = state_->data->leaves.lower_bound(prefix);
       it != state_->data->leaves.end() && absl::StartsWith(it->first, prefix); ++it) {
    std::string key = it->first.substr(prefix.size());
    key = key.substr(0, key.find('.'));
    if (out.empty() || out.back() != key) out.push_back(key);
  }
  return out;
}

void ConfigReader::Fail(absl::string_view path, absl::string_view reason) {
  state_->Error(path, reason);
}

absl::Status ConfigReader::Finish() {
  if (!state_->first_error.ok()) {
    return state_->first_error;
  }
  for (const auto& [path, leaf] : state_->data->leaves) {
    if (!absl::StartsWith(path, state_->scope)) {
      continue;
    }
    if (state_->read.count(path) == 0) {
      std::string where = leaf.line > 0 ? absl::StrCat(state_->data->source, ":", leaf.line)
                                        : std::string("command line");
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": unknown key"));
    }
  }
  return absl::OkStatus();
}

}  // namespace formica
