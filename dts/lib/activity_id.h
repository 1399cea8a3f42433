// Activity ids an initiator makes itself, without a round trip to dtsd:
// "<deadline in unix ms, 11 hex digits>-<24 random hex digits>" (96 random
// bits from the kernel). Whoever holds such an id knows the activity's
// deadline: dtsd refuses its commit after it, and a participant holding an
// undecided try past it asks dtsd for the outcome (a check-back), which
// dtsd answers "rolled back" for an activity it never heard decided. Ids
// made by dtsd's Begin ("<epoch>-<sequence>") carry no deadline.
//
// A try of such an activity tells its initiator through the reply's
// x-formica-joined trailing metadata ("dts <id> <participant> <action>",
// and " <route>" when the participant needs one handed back in phase two,
// each escaped by EscapeJoinedField; see JoinedEntry), and the commit
// carries them to dtsd.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica::dts {

inline constexpr size_t kDeadlineDigits = 11;
inline constexpr size_t kRandomDigits = 24;

// The deadline an id made by an initiator carries; nullopt for any other
// string (an id made by dtsd's Begin among them).
inline std::optional<absl::Time> DeadlineOfId(absl::string_view id) {
  if (id.size() != kDeadlineDigits + 1 + kRandomDigits || id[kDeadlineDigits] != '-') {
    return std::nullopt;
  }
  int64_t ms = 0;
  for (size_t i = 0; i < id.size(); ++i) {
    if (i == kDeadlineDigits) continue;
    char c = id[i];
    int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (digit < 0) return std::nullopt;
    if (i < kDeadlineDigits) ms = ms * 16 + digit;
  }
  return absl::FromUnixMillis(ms);
}

// Escapes '%', space and anything outside printable ASCII as %XX, so that a
// field fits in one metadata value beside others separated by spaces.
inline std::string EscapeJoinedField(absl::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f || c == '%') {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += ch;
    }
  }
  return out;
}

inline std::optional<std::string> UnescapeJoinedField(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int v = 0;
    for (size_t j = i + 1; j <= i + 2; ++j) {
      char c = s[j];
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (d < 0) return std::nullopt;
      v = v * 16 + d;
    }
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

// The x-formica-joined entry of a try: what the initiator hands to dtsd.
inline std::string JoinedEntry(absl::string_view id, absl::string_view participant,
                               absl::string_view action, absl::string_view route = {}) {
  std::string entry = "dts ";
  for (absl::string_view field : {id, participant, action}) {
    entry += EscapeJoinedField(field);
    entry += ' ';
  }
  entry.pop_back();
  if (!route.empty()) {
    entry += ' ';
    entry += EscapeJoinedField(route);
  }
  return entry;
}

}  // namespace formica::dts
