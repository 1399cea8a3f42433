// formica-console: the web console's daemon (docs/operations.md).
//   formica-console --config console.yaml [--listen H:P] [--registry H:P]
//                   [--dts H:P] [--dms H:P] [--set console.key=value]
#include "console.h"
#include "formica/internal/daemon.h"

int main(int argc, char** argv) {
  return formica::RunDaemon(argc, argv, "formica-console",
                            {{"listen", "console.listen"},
                             {"registry", "console.registry"},
                             {"dts", "console.dts"},
                             {"dms", "console.dms"}},
                            formica::console::LoadConsoleOptions, formica::console::Console::Start);
}
