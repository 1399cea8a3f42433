#include "trade_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace fund {

uint32_t Crc32(const std::string& bytes, uint32_t crc) {
  static const auto* table = [] {
    auto* t = new uint32_t[256];
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", strerror(errno)));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes, bool sync) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  if ((sync && ::fsync(fd) != 0) || ::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

namespace {

// Splits a file into its header fields, record lines and trailer fields,
// checking the trailer's count and checksum. `kind` is FUNDTRADE or
// FUNDCLEAR; `fields` the number of fields of a record line.
struct Parsed {
  int64_t day = 0;
  std::vector<std::vector<absl::string_view>> records;  // fields of each D line
  std::vector<absl::string_view> trailer;
};

absl::Status Bad(const std::string& path, size_t line, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(path, " line ", line, ": ", why));
}

absl::StatusOr<Parsed> Parse(const std::string& path, const std::string& text, const char* kind,
                             size_t fields, size_t trailer_fields) {
  Parsed p;
  size_t line_no = 0;
  size_t pos = 0;
  bool header = false;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    ++line_no;
    if (end == std::string::npos) {
      return Bad(path, line_no, "truncated: the last line has no end of line");
    }
    absl::string_view line(text.data() + pos, end - pos);
    std::vector<absl::string_view> f = absl::StrSplit(line, ',');
    if (!header) {
      if (f.size() != 4 || f[0] != "H" || f[1] != kind || f[2] != "1" ||
          !absl::SimpleAtoi(f[3], &p.day) || p.day <= 0) {
        return Bad(
            path, line_no,
            absl::StrCat("expected header H,", kind, ",1,<day>, got '", line.substr(0, 80), "'"));
      }
      header = true;
    } else if (f[0] == "D") {
      if (f.size() != fields) {
        return Bad(path, line_no,
                   absl::StrCat("a record has ", fields, " fields, this one ", f.size()));
      }
      p.records.push_back(std::move(f));
    } else if (f[0] == "T") {
      if (f.size() != trailer_fields) {
        return Bad(
            path, line_no,
            absl::StrCat("the trailer has ", trailer_fields, " fields, this one ", f.size()));
      }
      int64_t count = 0;
      if (!absl::SimpleAtoi(f[1], &count) || count != static_cast<int64_t>(p.records.size())) {
        return Bad(
            path, line_no,
            absl::StrCat("the trailer counts ", f[1], " records, the file has ", p.records.size()));
      }
      std::string want = absl::StrFormat("%08x", Crc32(text.substr(0, pos)));
      if (f.back() != want) {
        return Bad(path, line_no,
                   absl::StrCat("checksum ", f.back(), " does not match the content (", want, ")"));
      }
      if (end + 1 != text.size()) return Bad(path, line_no + 1, "data after the trailer");
      p.trailer = std::move(f);
      return p;
    } else {
      return Bad(
          path, line_no,
          absl::StrCat("expected a D record or the T trailer, got '", line.substr(0, 80), "'"));
    }
    pos = end + 1;
  }
  return Bad(path, line_no + 1, header ? "truncated: no trailer" : "empty file: no header");
}

bool Amount(absl::string_view s, int64_t* out, bool positive) {
  return absl::SimpleAtoi(s, out) && (positive ? *out > 0 : *out >= 0) &&
         s.find_first_not_of("0123456789") == absl::string_view::npos;
}

}  // namespace

absl::StatusOr<TradeFile> ReadTradeFile(const std::string& path) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  auto p = Parse(path, *text, "FUNDTRADE", 5, 5);
  if (!p.ok()) return p.status();
  TradeFile out;
  out.day = p->day;
  out.trades.reserve(p->records.size());
  int64_t purchased = 0;
  int64_t redeemed = 0;
  std::set<absl::string_view> ids;
  for (size_t i = 0; i < p->records.size(); ++i) {
    const auto& f = p->records[i];
    const size_t line = i + 2;
    TradeRecord t;
    t.order_id = std::string(f[1]);
    if (t.order_id.empty() || !ids.insert(f[1]).second) {
      return Bad(path, line, absl::StrCat("order id '", f[1], "' is empty or repeated"));
    }
    if (!Amount(f[2], &t.user, true) || f[2][0] == '0') {
      return Bad(path, line, absl::StrCat("user id '", f[2], "' is not a positive integer"));
    }
    if (f[3] != "P" && f[3] != "R") {
      return Bad(path, line, absl::StrCat("kind '", f[3], "' is neither P nor R"));
    }
    t.purchase = f[3] == "P";
    if (!Amount(f[4], &t.amount, true)) {
      return Bad(path, line, absl::StrCat("amount '", f[4], "' is not a positive integer"));
    }
    (t.purchase ? purchased : redeemed) += t.amount;
    out.trades.push_back(std::move(t));
  }
  const size_t trailer_line = p->records.size() + 2;
  if (p->trailer[2] != std::to_string(purchased) || p->trailer[3] != std::to_string(redeemed)) {
    return Bad(path, trailer_line,
               absl::StrCat("the trailer's totals ", p->trailer[2], "/", p->trailer[3],
                            " differ from the records' ", purchased, "/", redeemed));
  }
  return out;
}

absl::Status WriteTradeFile(const std::string& path, const TradeFile& file) {
  std::string text = absl::StrCat("H,FUNDTRADE,1,", file.day, "\n");
  int64_t purchased = 0;
  int64_t redeemed = 0;
  for (const TradeRecord& t : file.trades) {
    absl::StrAppend(&text, "D,", t.order_id, ",", t.user, ",", t.purchase ? "P" : "R", ",",
                    t.amount, "\n");
    (t.purchase ? purchased : redeemed) += t.amount;
  }
  std::string crc = absl::StrFormat("%08x", Crc32(text));
  absl::StrAppend(&text, "T,", file.trades.size(), ",", purchased, ",", redeemed, ",", crc, "\n");
  return WriteFileAtomically(path, text);
}

std::string FormatClearedRecord(const ClearedRecord& r) {
  return absl::StrCat("D,", r.user, ",", r.opening, ",", r.purchased, ",", r.redeemed, ",",
                      r.income, ",", r.closing, "\n");
}

std::string ClearedFileText(int64_t day, const std::string& records, int64_t count, int64_t opening,
                            int64_t income, int64_t closing) {
  std::string text = absl::StrCat("H,FUNDCLEAR,1,", day, "\n", records);
  std::string crc = absl::StrFormat("%08x", Crc32(text));
  absl::StrAppend(&text, "T,", count, ",", opening, ",", income, ",", closing, ",", crc, "\n");
  return text;
}

absl::StatusOr<ClearedFile> ReadClearedFile(const std::string& path) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  auto p = Parse(path, *text, "FUNDCLEAR", 7, 6);
  if (!p.ok()) return p.status();
  ClearedFile out;
  out.day = p->day;
  out.users.reserve(p->records.size());
  for (size_t i = 0; i < p->records.size(); ++i) {
    const auto& f = p->records[i];
    ClearedRecord r;
    int64_t* cells[] = {&r.user, &r.opening, &r.purchased, &r.redeemed, &r.income, &r.closing};
    for (int c = 0; c < 6; ++c) {
      if (!Amount(f[c + 1], cells[c], c == 0)) {
        return Bad(
            path, i + 2,
            absl::StrCat("field ", c + 2, " '", f[c + 1], "' is not a non-negative integer"));
      }
    }
    if (!out.users.empty() && out.users.back().user >= r.user) {
      return Bad(path, i + 2, "records are not sorted by user id");
    }
    out.users.push_back(r);
  }
  return out;
}

}  // namespace fund
