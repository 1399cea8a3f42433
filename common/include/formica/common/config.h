// YAML configuration with typed access and validation.
//
// A Config is a parsed YAML file flattened to dotted key paths
// ("session.lease"). A ConfigReader reads typed values with defaults and
// bounds, collects the first error, and at Finish() also rejects keys that
// nobody read, so a typo in a file is an error, not a silent default:
//
//   FORMICA_ASSIGN_OR_RETURN(Config config, Config::LoadFile("dsrd.yaml"));
//   FORMICA_RETURN_IF_ERROR(config.Set("server.listen", flag_value));
//   ConfigReader r(config);
//   opts.lease = r.Duration("session.lease", absl::Seconds(10),
//                           absl::Milliseconds(100), absl::Hours(1));
//   FORMICA_RETURN_IF_ERROR(r.Finish());
//
// Every error is INVALID_ARGUMENT and names the file, line, key path and reason.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica {

// Immutable once loaded, apart from Set(). Cheap to copy (shared contents).
class Config {
 public:
  // An empty config: every read yields its default.
  Config();

  static absl::StatusOr<Config> LoadFile(const std::string& path);
  // `source` names the text in error messages.
  static absl::StatusOr<Config> Parse(absl::string_view yaml,
                                      absl::string_view source = "<inline>");

  // Overrides (or adds) one scalar, as a command-line flag does.
  absl::Status Set(absl::string_view path, absl::string_view value);

  const std::string& source() const;

  // A copy without the keys under `section` ("tls" drops "tls.ca_file"...),
  // for a section one part reads before handing the rest to another.
  Config Without(absl::string_view section) const;

  struct Data;  // opaque: the flattened keys

 private:
  friend class ConfigReader;
  std::shared_ptr<Data> data_;
};

// Reads typed values out of a Config. Not thread-safe; use one per load.
class ConfigReader {
 public:
  explicit ConfigReader(const Config& config);
  // Finish() then checks only keys under `scope` ("rpc.client"), so one file
  // can hold several components' sections, each read by its own reader.
  ConfigReader(const Config& config, absl::string_view scope);
  ~ConfigReader();

  bool Has(absl::string_view path) const;
  // True when `path` is written with no value ("raft:" and nothing under
  // it), which Has and Children do not see.
  bool Empty(absl::string_view path) const;
  std::string String(absl::string_view path, std::string def);
  int64_t Int(absl::string_view path, int64_t def, int64_t min, int64_t max);
  bool Bool(absl::string_view path, bool def);
  // Accepts "250ms", "10s", "1m30s".
  absl::Duration Duration(absl::string_view path, absl::Duration def, absl::Duration min,
                          absl::Duration max);
  // Accepts a plain number of bytes or "64KiB", "4MiB", "1GiB".
  int64_t Bytes(absl::string_view path, int64_t def, int64_t min, int64_t max);
  // A YAML sequence of scalars, or one comma-separated scalar.
  std::vector<std::string> StringList(absl::string_view path, std::vector<std::string> def);
  // Every scalar directly under `path` (a YAML map of plain values), by key.
  std::map<std::string, std::string> StringMap(absl::string_view path);
  // The names of the keys directly under `path` (a YAML map of maps or
  // values), sorted. Reading them marks nothing as read.
  std::vector<std::string> Children(absl::string_view path) const;

  // Records a validation error for `path` found by the caller.
  void Fail(absl::string_view path, absl::string_view reason);

  // The first error met, else an error for the first key never read, else OK.
  absl::Status Finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace formica
