// formicactl: the operator's tool. See docs/formicactl.md; its command groups
// are listed in formicactl.h.
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formicactl.h"

int main(int argc, char** argv) {
  using namespace formica::ctl;  // NOLINT: the command groups
  Flags flags;
  std::vector<std::string> args;
  if (std::optional<int> exit_code = ParseFlags(argc, argv, &flags, &args)) return *exit_code;
  if (args.empty() || (args.size() < 2 && args[0] != "health" && args[0] != "audit")) {
    return Usage("");
  }
  const std::string& group = args[0];
  if (group == "health" && args.size() <= 2) return Health(flags, args.size() == 2 ? args[1] : "");
  if (group == "audit") return Audit(flags, args);
  if (group == "dts") return Dts(flags, args);
  if (group == "dms") return Dms(flags, args);
  if (group == "ldc") return Ldc(flags, args);
  if (group == "registry") return Registry(flags, args);
  if (group == "cluster") return Cluster(flags, args);
  if (group == "config") return Config(flags, args);
  if (group == "traffic") return Traffic(flags, args);
  if (group == "release") return Release(flags, args);
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}
