// The rule every name a client chooses follows (topics, groups, services,
// config keys, activities, participants...), one for all modules: a name is
// 1 to `max_length` characters, each one the module allows, and neither it
// nor any of its '/'-separated parts is "." or "..". Names end up in
// directory names, store keys and paths, where those two mean "here" and
// "the parent": dmsd once wrote a topic named ".." outside its data
// directory. Each module keeps its own alphabet and limit.
//
//   constexpr NameRule kTopic{"topic name", 128, IsPlainNameChar, kPlainNameChars};
//   if (absl::Status st = CheckName(kTopic, name); !st.ok()) return st;
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace formica {

struct NameRule {
  absl::string_view what;      // in errors: "topic name", "service name"
  size_t max_length = 128;     // in bytes
  bool (*allowed)(char c);     // the module's alphabet
  absl::string_view alphabet;  // the same in words, for errors
  bool required = true;        // false: an empty name is fine (an optional field)
};

// Letters, digits, '.', '_' and '-': names that are safe file names once
// "." and ".." are refused.
bool IsPlainNameChar(char c);
inline constexpr absl::string_view kPlainNameChars = "letters, digits and . _ -";

// OK, or INVALID_ARGUMENT naming the field, the name and what is wrong:
//   "topic name is empty"
//   "topic name is 130 characters long; the limit is 128"
//   "topic name 'a b' has character ' '; allowed are letters, digits and . _ -"
//   "topic name '..' is not allowed: '.' and '..' mean the current and parent directory"
absl::Status CheckName(const NameRule& rule, absl::string_view name);

}  // namespace formica
