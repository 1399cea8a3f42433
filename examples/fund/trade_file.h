// The clearing files (docs/fund.md, "File formats"): the day's trade file
// as a payment platform sends it, and the clearing result file. Both are
// CSV lines with a header, one record per line, and a trailer holding the
// record count, totals and a CRC-32 (IEEE) of every byte before the trailer:
//
//   H,FUNDTRADE,1,<day>
//   D,<order id>,<user id>,<P|R>,<amount in cents>
//   T,<records>,<purchased total>,<redeemed total>,<crc32 as 8 hex digits>
//
//   H,FUNDCLEAR,1,<day>
//   D,<user id>,<opening>,<purchased>,<redeemed>,<income>,<closing>
//   T,<records>,<opening total>,<income total>,<closing total>,<crc32>
//
// A file that is malformed, truncated (no trailer) or whose trailer does not
// match is refused whole with INVALID_ARGUMENT naming the file and line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fund {

struct TradeRecord {
  std::string order_id;
  int64_t user = 0;
  bool purchase = true;
  int64_t amount = 0;
};

struct TradeFile {
  int64_t day = 0;
  std::vector<TradeRecord> trades;
};

struct ClearedRecord {
  int64_t user = 0;
  int64_t opening = 0;
  int64_t purchased = 0;
  int64_t redeemed = 0;
  int64_t income = 0;
  int64_t closing = 0;
};

struct ClearedFile {
  int64_t day = 0;
  std::vector<ClearedRecord> users;  // sorted by user id
};

uint32_t Crc32(const std::string& bytes, uint32_t crc = 0);

absl::StatusOr<TradeFile> ReadTradeFile(const std::string& path);
// Writes atomically (a temporary file renamed into place).
absl::Status WriteTradeFile(const std::string& path, const TradeFile& file);

absl::StatusOr<ClearedFile> ReadClearedFile(const std::string& path);
std::string FormatClearedRecord(const ClearedRecord& r);  // one "D,..." line with '\n'
// The header, records and trailer of a cleared file from its record lines.
std::string ClearedFileText(int64_t day, const std::string& records, int64_t count, int64_t opening,
                            int64_t income, int64_t closing);

// Reads a whole file; NOT_FOUND naming it when missing.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);
// Writes `bytes` to path.tmp, syncs it (unless `sync` is false: a work
// file that can be made again) and renames it to `path`.
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes,
                                 bool sync = true);

}  // namespace fund
