// The one way a Formica benchmark reports: human-readable lines while it
// runs, then exactly one JSON object as the last line of output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace formica::bench {

// Percentile (0..100) of `samples` by nearest rank; 0 when empty.
inline double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) {
    return 0;
  }
  std::sort(samples.begin(), samples.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * samples.size()));
  return samples[std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1)];
}

class BenchReport {
 public:
  void Set(const std::string& key, double value) { values_[key] = value; }
  void Set(const std::string& key, const std::string& value) { values_[key] = value; }
  void SetSetup(const std::string& key, double value) { setup_[key] = value; }
  void SetSetup(const std::string& key, const std::string& value) { setup_[key] = value; }

  // Prints the JSON object on one line, keys in order, setup nested.
  void Print() const {
    std::string out = "{";
    Append(&out, values_);
    if (!setup_.empty()) {
      out += values_.empty() ? "" : ",";
      out += "\"setup\":{";
      Append(&out, setup_);
      out += "}";
    }
    out += "}";
    std::printf("%s\n", out.c_str());
    std::fflush(stdout);
  }

 private:
  using Value = std::variant<double, std::string>;
  static void Append(std::string* out, const std::map<std::string, Value>& m) {
    bool first = true;
    for (const auto& [k, v] : m) {
      if (!first) *out += ",";
      first = false;
      *out += "\"" + k + "\":";
      if (std::holds_alternative<double>(v)) {
        char buf[64];
        double d = std::get<double>(v);
        if (d == std::floor(d) && std::fabs(d) < 1e15) {
          std::snprintf(buf, sizeof(buf), "%.0f", d);
        } else {
          std::snprintf(buf, sizeof(buf), "%.3f", d);
        }
        *out += buf;
      } else {
        *out += "\"";
        for (char c : std::get<std::string>(v)) {
          if (c == '"' || c == '\\') *out += '\\';
          *out += c;
        }
        *out += "\"";
      }
    }
  }
  std::map<std::string, Value> values_;
  std::map<std::string, Value> setup_;
};

inline int Cores() { return static_cast<int>(std::thread::hardware_concurrency()); }

}  // namespace formica::bench
