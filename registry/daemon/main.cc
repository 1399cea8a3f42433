// dsrd: the Formica service registry daemon. See docs/registry.md.
#include "formica/internal/daemon.h"
#include "registry_server.h"

int main(int argc, char** argv) {
  return formica::RunDaemon(
      argc, argv, "dsrd",
      {{"listen", "server.listen"}, {"data-dir", "storage.data_dir"}, {"lease", "session.lease"}},
      formica::registry::LoadRegistryServerOptions, formica::registry::RegistryServer::Start);
}
