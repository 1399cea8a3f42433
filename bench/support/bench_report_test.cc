// The report every benchmark prints: "ok" only when nothing failed and no
// sample is missing, the exit code that goes with it, and the setup fields.
#include "bench_report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace formica::bench {
namespace {

// Runs Finish() and returns {exit code, the JSON line}.
std::pair<int, std::string> Finish(const BenchReport& report) {
  ::testing::internal::CaptureStdout();
  int code = report.Finish();
  std::string out = ::testing::internal::GetCapturedStdout();
  return {code, out};
}

TEST(BenchReport, CleanRunIsOkAndExitsZero) {
  BenchReport report;
  report.Set("qps", 1000);
  report.AddErrors("failed_calls", 0);  // zero counts nothing
  report.AddMissing("samples", 0);
  report.SetMachine("/dev/shm");
  auto [code, json] = Finish(report);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(json.rfind("{\"ok\":true,\"errors\":0,\"missing\":0,", 0), 0u) << json;
  EXPECT_NE(json.find("\"qps\":1000"), std::string::npos) << json;
  EXPECT_NE(json.find("\"filesystem\":\"tmpfs\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"cores\":" + std::to_string(Cores())), std::string::npos) << json;
  EXPECT_EQ(json.find("problems"), std::string::npos) << json;
  EXPECT_EQ(json.back(), '\n');
}

TEST(BenchReport, BooleansAreJsonBooleans) {
  BenchReport report;
  report.SetBool("money_conserved", true);
  report.SetBool("reconciled", false);
  auto [code, json] = Finish(report);
  EXPECT_NE(json.find("\"money_conserved\":true"), std::string::npos) << json;
  EXPECT_NE(json.find("\"reconciled\":false"), std::string::npos) << json;
}

TEST(BenchReport, ErrorsMakeTheRunNotOk) {
  BenchReport report;
  report.Set("qps", 1000);
  report.AddErrors("raw_failed_calls", 2);
  report.AddErrors("raw_failed_calls", 1);
  report.AddErrors("formica_failed_calls", 4);
  auto [code, json] = Finish(report);
  EXPECT_EQ(code, 1);
  EXPECT_EQ(json.rfind("{\"ok\":false,\"errors\":7,\"missing\":0,", 0), 0u) << json;
  EXPECT_NE(json.find("\"problems\":{\"formica_failed_calls\":4,\"raw_failed_calls\":3}"),
            std::string::npos)
      << json;
}

TEST(BenchReport, MissingSamplesMakeTheRunNotOk) {
  BenchReport report;
  report.AddMissing("fanout1000_samples", 250);
  auto [code, json] = Finish(report);
  EXPECT_EQ(code, 1);
  EXPECT_EQ(json.rfind("{\"ok\":false,\"errors\":0,\"missing\":250,", 0), 0u) << json;
  EXPECT_NE(json.find("\"missing_fanout1000_samples\":250"), std::string::npos) << json;
}

TEST(BenchReport, APartThatCouldNotRunMakesTheRunNotOkWithItsReason) {
  BenchReport report;
  ::testing::internal::CaptureStderr();
  report.Fail("etcd: \"Put\" failed\nConnection refused");
  ::testing::internal::GetCapturedStderr();
  auto [code, json] = Finish(report);
  EXPECT_EQ(code, 1);
  EXPECT_NE(json.find("\"reasons\":[\"etcd: \\\"Put\\\" failed\\nConnection refused\"]"),
            std::string::npos)
      << json;
}

TEST(BenchReport, ARatioWithoutAPeerFigureIsNullNotAWin) {
  EXPECT_TRUE(std::isnan(Ratio(5, 0)));
  EXPECT_DOUBLE_EQ(Ratio(3, 2), 1.5);
  BenchReport report;
  report.Set("formica_p99_ms", 12.5);
  report.Set("peer_p99_ms", 0.0);
  report.Set("p99_ratio", Ratio(12.5, 0));
  report.Headline("p99", "formica_p99_ms", "peer_p99_ms", "p99_ratio", "<= 1.0");
  report.Headline("alone", "formica_p99_ms", "", "", "");
  auto [code, json] = Finish(report);
  EXPECT_EQ(code, 0);
  EXPECT_NE(json.find("\"p99_ratio\":null"), std::string::npos) << json;
  EXPECT_NE(json.find("\"headline\":[{\"figure\":\"p99\",\"formica\":12.500,\"peer\":0,"
                      "\"ratio\":null,\"goal\":\"<= 1.0\"},{\"figure\":\"alone\",\"formica\":"
                      "12.500,\"peer\":null,\"ratio\":null,\"goal\":\"\"}]"),
            std::string::npos)
      << json;
}

TEST(BenchReport, FilesystemTypeNamesWhatStatfsSees) {
  EXPECT_EQ(FilesystemType("/dev/shm"), "tmpfs");
  EXPECT_EQ(FilesystemType("/proc"), "0x9fa0");  // proc: not a data directory, shown by magic
  EXPECT_EQ(FilesystemType("/no/such/dir").rfind("unknown (", 0), 0u);
}

TEST(BenchReport, ProcessCpuSecondsReadsThisProcess) {
  volatile double x = 0;
  for (int i = 0; i < 20000000; ++i) x = x + i;
  double cpu = ProcessCpuSeconds(getpid());
  EXPECT_GT(cpu, 0);
  EXPECT_LT(ProcessCpuSeconds(-1), 0);
}

}  // namespace
}  // namespace formica::bench
