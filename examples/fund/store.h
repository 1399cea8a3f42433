// Where each fund service keeps its data: a DDS data source sharded by user
// id (the last two digits, 100 logical shards). By default two SQLite files
// under the service's data directory; a `dds:` YAML file (docs/dds.md) puts
// it anywhere else, PostgreSQL included. Also the few helpers every fund
// program shares: user ids, flags, waiting for Ctrl-C.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formica/dds/data_source.h"
#include "formica/dds/write_gate.h"

namespace fund {

// The data source of `service` ("account", "fund", "gateway", "ledger"):
// `dds_file` when given, else `databases` SQLite files
// <data_dir>/<service>-0.db, -1.db, ... (the shards split evenly). Shards
// the tables named in `sharded` (table -> user id column) and
// formica_dts_barrier (business_day is a broadcast table), then runs `schema` (CREATE TABLE IF NOT
// EXISTS ...).
absl::StatusOr<std::unique_ptr<formica::dds::ShardedDataSource>> OpenStore(
    const std::string& service, const std::string& data_dir, const std::string& dds_file,
    const std::map<std::string, std::string>& sharded, const std::vector<std::string>& schema,
    int databases = 2, std::shared_ptr<formica::dds::WriteGate> gate = nullptr);

// A user id: 1 to 18 decimal digits, not starting with 0. INVALID_ARGUMENT
// naming the value otherwise.
absl::StatusOr<int64_t> ParseUserId(const std::string& text);

// The integer in a result cell (0 for NULL).
int64_t AsInt(const formica::dds::Value& v);
std::string AsText(const formica::dds::Value& v);

// "--name value" flags into a map; false (after printing why) for a flag
// not in `known` or one without its value. Flags listed in `switches`
// take no value and map to "1".
bool ParseFlags(int argc, char** argv, int first, const std::vector<std::string>& known,
                const std::vector<std::string>& switches, std::map<std::string, std::string>* out);

// Blocks SIGINT and SIGTERM in this thread (call before starting threads so
// they inherit it), and waits for one of them.
void BlockTerminationSignals();
void WaitForTerminationSignal();

}  // namespace fund
