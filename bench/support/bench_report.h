// The one way a Formica benchmark reports: human-readable lines while it
// runs, then exactly one JSON object as the last line of output, and the
// process's exit code.
//
// Every report carries:
//   "ok"        true only when no error and no missing sample was counted;
//   "errors"    the number of failed operations (calls, publishes, sends...);
//   "missing"   the number of samples expected but never seen;
//   "problems"  (when not ok) each count by what it counts, and the reasons;
//   "headline"  the rows `./formica bench all` prints: figure, Formica's
//               value, the peer's value, their ratio and the goal;
//   "setup"     how the run was made: at least "cores" and "filesystem".
// Finish() prints the object and returns the exit code: 0 when ok, 1 not.
#pragma once

#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

namespace formica::bench {

// Percentile (0..100) of `samples` by nearest rank; 0 when empty (a report
// with no samples must also count them as missing, see BenchReport).
inline double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) {
    return 0;
  }
  std::sort(samples.begin(), samples.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * samples.size()));
  return samples[std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// num / den, or NaN (printed as null) when den is not above zero: a peer
// that produced no figure must not make a ratio look good.
inline double Ratio(double num, double den) { return den > 0 ? num / den : std::nan(""); }

inline int Cores() { return static_cast<int>(std::thread::hardware_concurrency()); }

// The type of the filesystem holding `path` (statfs), e.g. "ext4", "xfs",
// "btrfs", "tmpfs", "overlay"; "0x<magic>" for one not named here, and
// "unknown (<errno text>)" when statfs fails. A durable figure measured on
// tmpfs means nothing; the report says which it was.
inline std::string FilesystemType(const std::string& path) {
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) != 0) {
    return std::string("unknown (") + std::strerror(errno) + ")";
  }
  static const std::pair<unsigned long, const char*> kNames[] = {
      {0xEF53, "ext4"},      {0x58465342, "xfs"},     {0x9123683E, "btrfs"},
      {0x01021994, "tmpfs"}, {0x794C7630, "overlay"}, {0x2FC12FC1, "zfs"},
      {0x6969, "nfs"},       {0x65735546, "fuse"},    {0x858458F6, "ramfs"},
      {0xF2F52010, "f2fs"},  {0x5346544E, "ntfs"},    {0x4D44, "vfat"},
      {0x01021997, "9p"},    {0xCA451A4E, "bcachefs"}};
  const auto magic = static_cast<unsigned long>(fs.f_type) & 0xFFFFFFFFul;
  for (const auto& [m, name] : kNames) {
    if (m == magic) return name;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%lx", magic);
  return buf;
}

// CPU seconds (user + system) `pid` has used so far, from /proc/<pid>/stat;
// -1 when it cannot be read.
inline double ProcessCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!in || !std::getline(in, text)) return -1;
  size_t close_paren = text.rfind(')');
  if (close_paren == std::string::npos) return -1;
  // After "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt
  // majflt cmajflt utime stime ...
  const char* p = text.c_str() + close_paren + 1;
  unsigned long long utime = 0, stime = 0;
  if (std::sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) !=
      2) {
    return -1;
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

class BenchReport {
 public:
  void Set(const std::string& key, double value) { values_[key] = value; }
  void Set(const std::string& key, const std::string& value) { values_[key] = value; }
  // A number set before, or 0.
  double Number(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) return 0;
    const double* d = std::get_if<double>(&it->second);
    return d != nullptr ? *d : 0;
  }
  // A JSON true or false (not a string).
  void SetBool(const std::string& key, bool value) { values_[key] = Flag{value}; }
  void SetSetup(const std::string& key, double value) { setup_[key] = value; }
  void SetSetup(const std::string& key, const std::string& value) { setup_[key] = value; }

  // Records "filesystem" (of `data_dir`) and "cores" in the setup.
  void SetMachine(const std::string& data_dir) {
    SetSetup("filesystem", FilesystemType(data_dir));
    SetSetup("cores", Cores());
  }

  // Counts `count` failed operations of kind `what` (e.g. "raw_calls_failed");
  // any count above zero makes the run not ok. Adding zero records nothing.
  void AddErrors(const std::string& what, int64_t count) { Add(&errors_, what, count); }
  // Counts `count` samples of kind `what` that were expected and not seen.
  void AddMissing(const std::string& what, int64_t count) { Add(&missing_, what, count); }
  // A part of the run that could not be made at all; the run is not ok.
  void Fail(const std::string& why) {
    std::fprintf(stderr, "error: %s\n", why.c_str());
    reasons_.push_back(why);
  }

  bool ok() const { return errors_.empty() && missing_.empty() && reasons_.empty(); }

  // A row of the summary table: `formica` and `peer` name keys already Set
  // (peer "" when there is none), `ratio` a key or "" to leave it out, and
  // `goal` says in words what the ratio should be.
  void Headline(const std::string& figure, const std::string& formica, const std::string& peer,
                const std::string& ratio, const std::string& goal) {
    headline_.push_back({figure, formica, peer, ratio, goal});
  }

  // Prints the JSON object on one line and returns the exit code.
  int Finish() const {
    std::string out = "{";
    out += "\"ok\":";
    out += ok() ? "true" : "false";
    out += ",\"errors\":" + std::to_string(Total(errors_));
    out += ",\"missing\":" + std::to_string(Total(missing_));
    if (!ok()) {
      out += ",\"problems\":{";
      std::map<std::string, Value> counts;
      for (const auto& [k, v] : errors_) counts[k] = static_cast<double>(v);
      for (const auto& [k, v] : missing_) counts["missing_" + k] = static_cast<double>(v);
      Append(&out, counts);
      if (!reasons_.empty()) {
        out += counts.empty() ? "" : ",";
        out += "\"reasons\":[";
        for (size_t i = 0; i < reasons_.size(); ++i) {
          out += (i == 0 ? "" : ",") + Quote(reasons_[i]);
        }
        out += "]";
      }
      out += "}";
    }
    if (!values_.empty()) {
      out += ",";
      Append(&out, values_);
    }
    if (!headline_.empty()) {
      out += ",\"headline\":[";
      for (size_t i = 0; i < headline_.size(); ++i) {
        const Row& row = headline_[i];
        out += i == 0 ? "{" : ",{";
        out += "\"figure\":" + Quote(row.figure);
        out += ",\"formica\":" + Lookup(row.formica);
        out += ",\"peer\":" + Lookup(row.peer);
        out += ",\"ratio\":" + Lookup(row.ratio);
        out += ",\"goal\":" + Quote(row.goal) + "}";
      }
      out += "]";
    }
    if (!setup_.empty()) {
      out += ",\"setup\":{";
      Append(&out, setup_);
      out += "}";
    }
    out += "}";
    if (!ok()) {
      std::fprintf(stderr, "the run is not ok: %lld errors, %lld missing samples%s\n",
                   static_cast<long long>(Total(errors_)), static_cast<long long>(Total(missing_)),
                   reasons_.empty() ? "" : ", and parts that could not run");
    }
    std::printf("%s\n", out.c_str());
    std::fflush(stdout);
    return ok() ? 0 : 1;
  }

 private:
  struct Flag {
    bool value;
  };
  using Value = std::variant<double, std::string, Flag>;
  struct Row {
    std::string figure, formica, peer, ratio, goal;
  };

  static void Add(std::map<std::string, int64_t>* m, const std::string& what, int64_t count) {
    if (count != 0) (*m)[what] += count;
  }
  static int64_t Total(const std::map<std::string, int64_t>& m) {
    int64_t sum = 0;
    for (const auto& [k, v] : m) sum += v;
    return sum;
  }
  static std::string Quote(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (c == '\n') {
        out += "\\n";
      } else if (static_cast<unsigned char>(c) < 0x20) {
        out += ' ';
      } else {
        out += c;
      }
    }
    return out + "\"";
  }
  static std::string Number(double d) {
    if (!std::isfinite(d)) return "null";
    char buf[64];
    if (d == std::floor(d) && std::fabs(d) < 1e15) {
      std::snprintf(buf, sizeof(buf), "%.0f", d);
    } else {
      std::snprintf(buf, sizeof(buf), "%.3f", d);
    }
    return buf;
  }
  static std::string Render(const Value& v) {
    if (const Flag* f = std::get_if<Flag>(&v)) return f->value ? "true" : "false";
    return std::holds_alternative<double>(v) ? Number(std::get<double>(v))
                                             : Quote(std::get<std::string>(v));
  }
  // The value Set under `key`, or null when there is none.
  std::string Lookup(const std::string& key) const {
    auto it = values_.find(key);
    return it == values_.end() ? "null" : Render(it->second);
  }
  static void Append(std::string* out, const std::map<std::string, Value>& m) {
    bool first = true;
    for (const auto& [k, v] : m) {
      if (!first) *out += ",";
      first = false;
      *out += Quote(k) + ":" + Render(v);
    }
  }

  std::map<std::string, Value> values_;
  std::map<std::string, Value> setup_;
  std::map<std::string, int64_t> errors_;
  std::map<std::string, int64_t> missing_;
  std::vector<std::string> reasons_;
  std::vector<Row> headline_;
};

}  // namespace formica::bench
