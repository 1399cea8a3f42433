// The name rule every module shares: its own alphabet and limit, never "."
// or ".." (whole, or as a '/'-separated part), errors naming what is wrong.
#include "formica/internal/names.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace formica {
namespace {

bool SlashedChar(char c) { return IsPlainNameChar(c) || c == '/'; }

TEST(NameRule, EachModuleKeepsItsAlphabetAndNoNameIsDotOrDotDot) {
  NameRule topic{"topic name", 8, IsPlainNameChar, kPlainNameChars};
  for (const char* good : {"a", "...", ".a", "a.", "-", "_", "A-b_c.9", "12345678"}) {
    EXPECT_TRUE(CheckName(topic, good).ok()) << good;
  }
  EXPECT_EQ(CheckName(topic, "").message(), "topic name is empty");
  EXPECT_EQ(CheckName(topic, "123456789").message(),
            "topic name is 9 characters long; the limit is 8");
  EXPECT_EQ(CheckName(topic, "a b").message(),
            "topic name 'a b' has character ' '; allowed are letters, digits and . _ -");
  EXPECT_EQ(CheckName(topic, std::string("a\0z", 3)).message(),
            "topic name 'a\\x00z' has character '\\x00'; allowed are letters, digits and . _ -");
  for (const char* dots : {".", ".."}) {
    absl::Status st = CheckName(topic, dots);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(st.message(), absl::StrCat("topic name '", dots, "' is not allowed: '", dots,
                                         "' means the current or parent directory in the "
                                         "paths names become"));
  }
  NameRule path{"service name", 64, SlashedChar, "letters, digits and . _ - /"};
  EXPECT_TRUE(CheckName(path, "fund/trade").ok());
  EXPECT_TRUE(CheckName(path, "fund/.x/...").ok());
  for (const char* bad : {"a/../b", "./a", "a/.", "..", "../x"}) {
    EXPECT_EQ(CheckName(path, bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  NameRule optional{"initiator", 8, IsPlainNameChar, kPlainNameChars, /*required=*/false};
  EXPECT_TRUE(CheckName(optional, "").ok());
  EXPECT_FALSE(CheckName(optional, "..").ok());
}

}  // namespace
}  // namespace formica
