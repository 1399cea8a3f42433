// formicactl traffic shift and release judging on a real Prometheus
// (`--analysis prometheus=URL`): the providers export their calls on
// metrics.listen, Prometheus on loopback scrapes them, and the controllers
// read what it scraped instead of each provider's Stats service.
#include <gmock/gmock.h>

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>

#include "traffic_fixture.h"

namespace formica::rpc::testing {
namespace {

using ::testing::HasSubstr;

class PrometheusAnalysisTest : public TrafficTest {
 protected:
  // An echo provider with `flags` whose metrics endpoint Prometheus scrapes.
  std::unique_ptr<Subprocess> StartScrapedEcho(std::vector<std::string> flags) {
    int port = formica::testing::PickFreePort();
    std::string config = dir_.File(absl::StrCat("echo-metrics-", port, ".yaml"));
    std::ofstream(config) << "metrics:\n  listen: 127.0.0.1:" << port << "\n";
    flags.insert(flags.begin(), {"--config", config});  // first: it sets every option
    metrics_ports_.push_back(port);
    return StartEcho(flags);
  }

  // A real Prometheus scraping every provider started so far every 250 ms;
  // its URL.
  std::string StartPrometheus() {
    int port = formica::testing::PickFreePort();
    std::string config = dir_.File("prometheus.yml");
    std::ofstream out(config);
    out << "global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\n"
        << "scrape_configs:\n  - job_name: echo\n    static_configs:\n      - targets: [";
    for (size_t i = 0; i < metrics_ports_.size(); ++i) {
      out << (i ? ", " : "") << "'127.0.0.1:" << metrics_ports_[i] << "'";
    }
    out << "]\n";
    out.close();
    auto p = Subprocess::Start({"/usr/bin/prometheus", "--config.file=" + config,
                                "--storage.tsdb.path=" + dir_.File("prometheus-data"),
                                absl::StrCat("--web.listen-address=127.0.0.1:", port)},
                               dir_.File("prometheus.log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return "";
    EXPECT_TRUE((*p)->WaitForOutput("Server is ready to receive web requests", absl::Seconds(30)))
        << (*p)->Output();
    prometheus_ = std::move(*p);
    return absl::StrCat("http://127.0.0.1:", port);
  }

  std::vector<int> metrics_ports_;
  std::unique_ptr<Subprocess> prometheus_;
};

TEST_F(PrometheusAnalysisTest, AShiftJudgedOnPrometheusStopsAFailingTarget) {
  auto blue = StartScrapedEcho({"--tag", "color=blue"});
  auto green = StartScrapedEcho({"--tag", "color=green", "--fail-percent", "20"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string url = StartPrometheus();
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  StartLoad();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "20", "--every", "3s",
                 "--min-calls", "30", "--analysis", "prometheus=" + url},
                &out),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("analysis on prometheus=" + url));
  EXPECT_THAT(out, HasSubstr("failed: target failed"));
  EXPECT_THAT(out, HasSubstr("route restored to 'color=blue:100'"));
  EXPECT_EQ(Route(), "color=blue:100");
  ASSERT_EQ(Ctl({"traffic", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("analysis on prometheus=" + url));
}

TEST_F(PrometheusAnalysisTest, AShiftJudgedOnPrometheusReachesItsTarget) {
  auto blue = StartScrapedEcho({"--tag", "color=blue"});
  auto green = StartScrapedEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string url = StartPrometheus();
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  StartLoad();
  absl::SleepFor(absl::Seconds(1));
  ASSERT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "50", "--every", "2s",
                 "--min-calls", "30", "--analysis", "prometheus=" + url},
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("done: all calls on color=green"));
  EXPECT_EQ(Route(), "color=green:100");
  StopLoad();
  for (const LoadCall& c : Load()) EXPECT_EQ(c.code, absl::StatusCode::kOk);
}

// A Prometheus that does not answer gives no verdict, and says why: the
// shift never passes on no data.
TEST_F(PrometheusAnalysisTest, APrometheusThatDoesNotAnswerIsNoVerdictAndSaysWhy) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string url = absl::StrCat("http://127.0.0.1:", formica::testing::PickFreePort());
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  StartLoad();
  auto controller =
      StartCtl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "50", "--every", "1s",
                "--min-calls", "20", "--analysis", "prometheus=" + url});
  ASSERT_TRUE(controller->WaitForOutput("not judged", absl::Seconds(20))) << controller->Output();
  absl::SleepFor(absl::Seconds(2));
  EXPECT_THAT(controller->Output(), HasSubstr("(prometheus at " + url));
  EXPECT_EQ(Route(), "color=green:50,color=blue:50") << "it went on without a verdict";
  ASSERT_EQ(Ctl({"traffic", "abort", kEcho}, &out), 0) << out;
  EXPECT_EQ(Route(), "color=blue:100");
}

// deploy.sh GROUP VERSION INSTANCE...: stops each instance and starts a
// provider of VERSION whose metrics endpoint takes the next of the ports
// Prometheus scrapes ($DIR/ports, one a line).
// clang-format off
constexpr char kDeployScript[] = R"sh(#!/bin/sh
group=$1; version=$2; shift 2
for addr in "$@"; do
  port=${addr##*:}
  pid=$(cat "$DIR/pids/$port.pid") || exit 1
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do sleep 0.05; done
  rm -f "$DIR/pids/$port.pid"
  n=$(cat "$DIR/next"); echo $((n + 1)) > "$DIR/next"
  mport=$(sed -n "$((n + 1))p" "$DIR/ports")
  printf 'metrics:\n  listen: 127.0.0.1:%s\n' "$mport" > "$DIR/m$n.yaml"
  extra=""
  if [ "$version" = "$FAILING_VERSION" ]; then extra="--fail-percent 20"; fi
  "$ECHO" --config "$DIR/m$n.yaml" --registry "$REG" --tag version="$version" \
    --pid-dir "$DIR/pids" --warmup-ms 500 --grace-ms 2000 $extra > "$DIR/echo-new-$n.log" 2>&1 < /dev/null &
done
)sh";
// clang-format on

class PrometheusReleaseTest : public PrometheusAnalysisTest {
 protected:
  void TearDown() override {
    StopLoad();
    // The providers the deploy command started are not our children.
    for (const std::string& port : Lines(dir_.File("pids"))) {
      std::ifstream in(dir_.File("pids/" + port));
      int pid = 0;
      if ((in >> pid) && pid > 0) kill(pid, SIGKILL);
    }
    PrometheusAnalysisTest::TearDown();
  }
  static std::vector<std::string> Lines(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = opendir(dir.c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') out.push_back(e->d_name);
      }
      closedir(d);
    }
    return out;
  }
};

TEST_F(PrometheusReleaseTest, AReleaseJudgedOnPrometheusRollsBackAFailingVersion) {
  ASSERT_EQ(mkdir(dir_.File("pids").c_str(), 0755), 0);
  std::ofstream(dir_.File("deploy.sh")) << kDeployScript;
  ASSERT_EQ(chmod(dir_.File("deploy.sh").c_str(), 0755), 0);
  auto a = StartScrapedEcho(
      {"--tag", "version=1", "--grace-ms", "2000", "--pid-dir", dir_.File("pids")});
  auto b = StartScrapedEcho(
      {"--tag", "version=1", "--grace-ms", "2000", "--pid-dir", dir_.File("pids")});
  ASSERT_TRUE(AwaitProviders(2));
  // Ports for the instances the deploy command starts, scraped from now on.
  std::ofstream ports(dir_.File("ports"));
  for (int i = 0; i < 4; ++i) {
    int port = formica::testing::PickFreePort();
    metrics_ports_.push_back(port);
    ports << port << "\n";
  }
  ports.close();
  std::ofstream(dir_.File("next")) << "0\n";
  std::string url = StartPrometheus();
  StartLoad();
  absl::SleepFor(absl::Seconds(1));
  std::ofstream(dir_.File("plan.yaml"))
      << "service: " << kEcho << "\nversion: \"2\"\n"
      << "deploy: DIR=" << dir_.path() << " REG=" << dsrd_->address()
      << " ECHO=" << formica::testing::BinaryPath("tests/rpc/echo_server") << " FAILING_VERSION=2 "
      << dir_.File("deploy.sh") << " {group} {version} {instances}\n"
      << "groups: [beta:1, rest:1]\nbake: 3s\nauto: true\n"
      << "analysis_source: prometheus=" << url << "\n"
      << "analysis:\n  min_calls: 30\n";
  std::string out;
  EXPECT_EQ(Ctl({"release", "start", "--plan", dir_.File("plan.yaml")}, &out, absl::Seconds(120)),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("group beta failed: target failed"));
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  ASSERT_EQ(Ctl({"release", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("analysis on prometheus=" + url));
  EXPECT_THAT(out, HasSubstr("version=1 -> 2, rolled_back"));
}

}  // namespace
}  // namespace formica::rpc::testing
