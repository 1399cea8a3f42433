// dtsd: the Formica transaction coordinator. See docs/dts.md.
#include "coordinator.h"
#include "formica/internal/daemon.h"

int main(int argc, char** argv) {
  return formica::RunDaemon(argc, argv, "dtsd",
                            {{"listen", "server.listen"},
                             {"data-dir", "storage.data_dir"},
                             {"registry", "registry.addresses"}},
                            formica::dts::LoadCoordinatorOptions, formica::dts::Coordinator::Start);
}
