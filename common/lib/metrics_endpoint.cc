// MetricsEndpoint over cpp-httplib's server (one listening thread, a small
// pool for scrapes).
#include "formica/internal/metrics_endpoint.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace formica {
namespace {

void AppendValue(std::string* out, double v) {
  if (std::isinf(v)) {
    out->append(v > 0 ? "+Inf" : "-Inf");
  } else if (std::isnan(v)) {
    out->append("NaN");
  } else if (v == std::floor(v) && std::fabs(v) < 1e15) {
    absl::StrAppend(out, static_cast<int64_t>(v));
  } else {
    absl::StrAppend(out, absl::StrFormat("%.9g", v));
  }
}

void AppendEscaped(std::string* out, absl::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quote) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

}  // namespace

void PrometheusText::Family(absl::string_view name, absl::string_view type,
                            absl::string_view help) {
  absl::StrAppend(&text_, "# HELP ", name, " ");
  AppendEscaped(&text_, help, false);
  absl::StrAppend(&text_, "\n# TYPE ", name, " ", type, "\n");
}

void PrometheusText::Sample(absl::string_view name, const Labels& labels, double value) {
  text_.append(name.data(), name.size());
  if (!labels.empty()) {
    text_.push_back('{');
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) text_.push_back(',');
      absl::StrAppend(&text_, labels[i].first, "=\"");
      AppendEscaped(&text_, labels[i].second, true);
      text_.push_back('"');
    }
    text_.push_back('}');
  }
  text_.push_back(' ');
  AppendValue(&text_, value);
  text_.push_back('\n');
}

void PrometheusText::Counter(absl::string_view name, absl::string_view help, double value) {
  Family(name, "counter", help);
  Sample(name, {}, value);
}

void PrometheusText::Gauge(absl::string_view name, absl::string_view help, double value) {
  Family(name, "gauge", help);
  Sample(name, {}, value);
}

class MetricsEndpoint::Impl {
 public:
  std::vector<Source> sources;
  httplib::Server http;
  std::thread thread;
  int port = 0;
  bool stopped = false;

  std::string Render() const {
    PrometheusText out;
    for (const Source& s : sources) s(out);
    return out.text();
  }
};

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, std::vector<Source> sources) {
  size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(listen).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics.listen '", listen, "' is not host:port (e.g. 127.0.0.1:9464; port 0 picks one)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto impl = std::make_unique<Impl>();
  impl->sources = std::move(sources);
  Impl* raw = impl.get();
  impl->http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  impl->http.Get("/metrics", [raw](const httplib::Request&, httplib::Response& res) {
    res.set_content(raw->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    impl->port = impl->http.bind_to_any_port(host);
  } else if (impl->http.bind_to_port(host, port)) {
    impl->port = port;
  }
  if (impl->port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on '", listen, "': malformed host or in use"));
  }
  impl->thread = std::thread([raw] { raw->http.listen_after_bind(); });
  // stop() only ends a server that is already running.
  while (!impl->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(std::move(impl)));
}

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsEndpoint::~MetricsEndpoint() { Stop(); }
int MetricsEndpoint::port() const { return impl_->port; }
std::string MetricsEndpoint::Render() const { return impl_->Render(); }

void MetricsEndpoint::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace formica
