// The `dds:` section of a YAML file -> DataSourceConfig.
#include "formica/common/config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "formica/dds/data_source.h"

namespace formica::dds {
namespace {

// "0-49" -> {0, 49}; "7" -> {7, 7}.
bool ParseRange(absl::string_view text, int64_t* from, int64_t* to) {
  text = absl::StripAsciiWhitespace(text);
  size_t dash = text.find('-', 1);  // a leading '-' is a sign
  if (dash == absl::string_view::npos) {
    if (!absl::SimpleAtoi(text, from)) return false;
    *to = *from;
    return true;
  }
  return absl::SimpleAtoi(absl::StripAsciiWhitespace(text.substr(0, dash)), from) &&
         absl::SimpleAtoi(absl::StripAsciiWhitespace(text.substr(dash + 1)), to) && *from <= *to;
}

absl::StatusOr<DataSourceConfig> Read(const Config& config) {
  ConfigReader r(config, "dds");
  DataSourceConfig c;
  c.shards = static_cast<int>(r.Int("dds.shards", 100, 1, 100000));
  std::string function = r.String("dds.shard_function", "last_two_digits");
  if (function == "last_two_digits") {
    c.function = ShardFunction::kLastTwoDigits;
  } else if (function == "modulo") {
    c.function = ShardFunction::kModulo;
  } else if (function == "range") {
    c.function = ShardFunction::kRange;
    for (const std::string& text : r.StringList("dds.ranges", {})) {
      int64_t from, to;
      if (!ParseRange(text, &from, &to)) {
        r.Fail("dds.ranges", absl::StrCat("'", text, "' is not a range like 0-999999"));
        break;
      }
      c.ranges.emplace_back(from, to);
    }
  } else {
    r.Fail("dds.shard_function",
           absl::StrCat("'", function, "' is not last_two_digits, modulo or range"));
  }
  c.table_suffix = r.String("dds.table_suffix", c.table_suffix);
  c.fanout = static_cast<int>(r.Int("dds.fanout", c.fanout, 1, 256));
  c.pool_wait = r.Duration("dds.pool_wait", c.pool_wait, absl::Milliseconds(1), absl::Minutes(10));
  c.writes_need_shard_key = r.Bool("dds.writes_need_shard_key", c.writes_need_shard_key);

  std::vector<std::string> names = r.Children("dds.databases");
  if (names.empty()) r.Fail("dds.databases", "name at least one database");
  for (const std::string& name : names) {
    std::string key = absl::StrCat("dds.databases.", name);
    DatabaseConfig d;
    d.name = name;
    std::string sqlite = r.String(key + ".sqlite", "");
    std::string postgres = r.String(key + ".postgres", "");
    if (sqlite.empty() == postgres.empty()) {
      r.Fail(key, "give exactly one of sqlite (a file) or postgres (a connection string)");
    }
    d.kind = sqlite.empty() ? DatabaseKind::kPostgres : DatabaseKind::kSqlite;
    d.target = sqlite.empty() ? postgres : sqlite;
    d.replicas = r.StringList(key + ".replicas", {});
    d.pool = static_cast<int>(r.Int(key + ".pool", d.pool, 1, 1024));
    for (const std::string& text : r.StringList(key + ".shards", {})) {
      int64_t from, to;
      if (!ParseRange(text, &from, &to) || from < 0 || to >= c.shards) {
        r.Fail(key + ".shards",
               absl::StrCat("'", text, "' is not a shard range within 0-", c.shards - 1));
        break;
      }
      for (int64_t s = from; s <= to; ++s) d.shards.push_back(static_cast<int>(s));
    }
    if (names.size() > 1 && d.shards.empty()) {
      r.Fail(key,
             "name the shards this database holds (shards: 0-49); with several databases "
             "the split is never guessed");
    }
    c.databases.push_back(std::move(d));
  }
  c.sharded_tables = r.StringMap("dds.sharded_tables");
  for (const std::string& group : r.Children("dds.binding_tables")) {
    std::vector<std::string> tables = r.StringList(absl::StrCat("dds.binding_tables.", group), {});
    c.binding_groups.emplace_back(tables.begin(), tables.end());
  }
  for (const std::string& t : r.StringList("dds.broadcast_tables", {})) {
    c.broadcast_tables.insert(t);
  }
  absl::Status st = r.Finish();
  if (!st.ok()) return st;
  return c;
}

}  // namespace

absl::StatusOr<DataSourceConfig> LoadDataSourceConfig(const std::string& path) {
  absl::StatusOr<Config> config = Config::LoadFile(path);
  if (!config.ok()) return config.status();
  return Read(*config);
}

absl::StatusOr<DataSourceConfig> ParseDataSourceConfig(const std::string& yaml,
                                                       const std::string& source) {
  absl::StatusOr<Config> config = Config::Parse(yaml, source);
  if (!config.ok()) return config.status();
  return Read(*config);
}

}  // namespace formica::dds
