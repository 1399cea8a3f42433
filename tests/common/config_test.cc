#include "formica/common/config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "formica/common/clock.h"

namespace formica {
namespace {

TEST(Config, ReadsTypedValuesWithDefaults) {
  auto config = Config::Parse(R"(
server:
  listen: "127.0.0.1:9000"
session:
  lease: 3s
  enabled: yes
limits:
  max_tags: 7
  max_bytes: 64KiB
  names: [a, b]
)",
                              "test.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ConfigReader r(*config);
  EXPECT_EQ(r.String("server.listen", "x"), "127.0.0.1:9000");
  EXPECT_EQ(r.Duration("session.lease", absl::Seconds(1), absl::ZeroDuration(), absl::Hours(1)),
            absl::Seconds(3));
  EXPECT_TRUE(r.Bool("session.enabled", false));
  EXPECT_EQ(r.Int("limits.max_tags", 0, 0, 100), 7);
  EXPECT_EQ(r.Bytes("limits.max_bytes", 0, 0, 1 << 30), 64 * 1024);
  EXPECT_EQ(r.StringList("limits.names", {}), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.Int("absent.key", 42, 0, 100), 42);
  EXPECT_TRUE(r.Finish().ok());
}

TEST(Config, ErrorNamesFileLineKeyAndReason) {
  auto config = Config::Parse("session:\n  lease: soon\n", "dsrd.yaml");
  ASSERT_TRUE(config.ok());
  ConfigReader r(*config);
  r.Duration("session.lease", absl::Seconds(1), absl::ZeroDuration(), absl::Hours(1));
  absl::Status st = r.Finish();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "dsrd.yaml:2: session.lease: expected a duration such as '500ms' or '10s', got 'soon'");
}

TEST(Config, OutOfRangeIsAnError) {
  auto config = Config::Parse("limits:\n  max_tags: 500\n", "x.yaml");
  ASSERT_TRUE(config.ok());
  ConfigReader r(*config);
  EXPECT_EQ(r.Int("limits.max_tags", 3, 0, 100), 3);
  absl::Status st = r.Finish();
  EXPECT_NE(st.message().find("limits.max_tags: must be between 0 and 100, got 500"),
            absl::string_view::npos)
      << st;
}

TEST(Config, UnknownKeyIsAnError) {
  auto config = Config::Parse("session:\n  leese: 3s\n", "x.yaml");
  ASSERT_TRUE(config.ok());
  ConfigReader r(*config);
  r.Duration("session.lease", absl::Seconds(1), absl::ZeroDuration(), absl::Hours(1));
  EXPECT_EQ(r.Finish().message(), "x.yaml:2: session.leese: unknown key");
}

TEST(Config, SyntaxErrorNamesTheLine) {
  auto config = Config::Parse("a: [1, 2\nb: 3\n", "bad.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("bad.yaml:"), absl::string_view::npos);
  EXPECT_NE(config.status().message().find("not valid YAML"), absl::string_view::npos);
}

TEST(Config, SetOverridesTheFile) {
  auto config = Config::Parse("server:\n  listen: a:1\n", "x.yaml");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(config->Set("server.listen", "b:2").ok());
  ASSERT_TRUE(config->Set("session.lease", "nope").ok());
  ConfigReader r(*config);
  EXPECT_EQ(r.String("server.listen", ""), "b:2");
  r.Duration("session.lease", absl::Seconds(1), absl::ZeroDuration(), absl::Hours(1));
  EXPECT_EQ(
      r.Finish().message(),
      "command line: session.lease: expected a duration such as '500ms' or '10s', got 'nope'");
}

TEST(Config, MissingFileIsNotFound) {
  auto config = Config::LoadFile("/nonexistent/formica.yaml");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(config.status().message().find("/nonexistent/formica.yaml"), absl::string_view::npos);
}

TEST(Config, ListWhereScalarExpectedIsAnError) {
  auto config = Config::Parse("server:\n  listen: [a, b]\n", "x.yaml");
  ASSERT_TRUE(config.ok());
  ConfigReader r(*config);
  r.String("server.listen", "");
  EXPECT_EQ(r.Finish().message(), "x.yaml:2: server.listen: expected a single value, got a list");
}

TEST(FakeClock, MovesOnlyWhenTold) {
  FakeClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now() - t0, absl::Seconds(5));
}

}  // namespace
}  // namespace formica
