// hdpissa-run: starts one process per GPU (or CPU worker) of this host with the torchrun
// environment and supervises them (include/hdpissa/comm/local_launcher.hpp). No MPI needed.
//   hdpissa-run --nproc-per-node 8 hdpissa-train --device cuda --groups-per-process 1 ...
// See `hdpissa-run --help` and docs/distributed.md.

#include <iostream>
#include <string>
#include <vector>

#include "hdpissa/comm/local_launcher.hpp"

int main(int argc, char** argv) {
  try {
    if (argc == 2 && std::string(argv[1]) == "--version") {
      std::cout << "hdpissa-run (hdpissa) " << HDPISSA_VERSION_STRING << "\n";
      return 0;
    }
    bool help = false;
    hdpissa::LaunchOptions o = hdpissa::parse_launch_args(std::vector<std::string>(argv + 1, argv + argc), &help);
    if (help) {
      std::cout << hdpissa::launch_usage();
      return 0;
    }
    return hdpissa::LocalLauncher(std::move(o)).run();
  } catch (const std::exception& e) {
    // the launcher's own messages start with its name (LaunchOptions::name): not twice
    const std::string m = e.what(), self = "hdpissa-run: ";
    std::cerr << "hdpissa-run: error: " << (m.rfind(self, 0) == 0 ? m.substr(self.size()) : m) << "\n";
    return 2;
  }
}
