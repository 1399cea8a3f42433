#include "store.h"

#include <signal.h>

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace fund {

namespace dds = formica::dds;

absl::StatusOr<std::unique_ptr<dds::ShardedDataSource>> OpenStore(
    const std::string& service, const std::string& data_dir, const std::string& dds_file,
    const std::map<std::string, std::string>& sharded, const std::vector<std::string>& schema,
    int databases, std::shared_ptr<dds::WriteGate> gate) {
  dds::DataSourceConfig config;
  if (!dds_file.empty()) {
    auto loaded = dds::LoadDataSourceConfig(dds_file);
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  } else {
    for (int i = 0; i < databases; ++i) {
      dds::DatabaseConfig db;
      db.name = absl::StrCat(service, i);
      db.target = absl::StrCat(data_dir, "/", service, "-", i, ".db");
      db.pool = 8;
      config.databases.push_back(db);
    }
  }
  for (const auto& [table, column] : sharded) config.sharded_tables[table] = column;
  config.sharded_tables["formica_dts_barrier"] = "shard_key";
  config.sharded_tables["formica_dts_pending"] = "shard_key";
  config.broadcast_tables.insert("business_day");
  config.write_gate = std::move(gate);
  auto ds = dds::ShardedDataSource::Open(config);
  if (!ds.ok()) return ds.status();
  for (const std::string& sql : schema) {
    auto r = (*ds)->Execute(sql);
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat(service, " schema: ", r.status().message(), " (", sql, ")"));
    }
  }
  return ds;
}

absl::StatusOr<int64_t> ParseUserId(const std::string& text) {
  bool digits = !text.empty() && text.size() <= 18 && text[0] != '0';
  for (char c : text) digits = digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  if (!digits) {
    return absl::InvalidArgumentError(
        absl::StrCat("user id '", text, "' is not 1 to 18 decimal digits without a leading 0"));
  }
  return std::stoll(text);
}

int64_t AsInt(const dds::Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* d = std::get_if<double>(&v)) return static_cast<int64_t>(*d);
  if (const auto* s = std::get_if<std::string>(&v)) return std::atoll(s->c_str());
  return 0;
}

std::string AsText(const dds::Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  if (std::holds_alternative<std::monostate>(v)) return "";
  return dds::ToString(v);
}

bool ParseFlags(int argc, char** argv, int first, const std::vector<std::string>& known,
                const std::vector<std::string>& switches, std::map<std::string, std::string>* out) {
  auto listed = [](const std::vector<std::string>& names, const std::string& flag) {
    for (const std::string& n : names) {
      if ("--" + n == flag) return true;
    }
    return false;
  };
  for (int i = first; i < argc; ++i) {
    std::string flag = argv[i];
    if (listed(switches, flag)) {
      (*out)[flag.substr(2)] = "1";
      continue;
    }
    if (!listed(known, flag)) {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return false;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", flag.c_str());
      return false;
    }
    (*out)[flag.substr(2)] = argv[++i];
  }
  return true;
}

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
}

}  // namespace fund
