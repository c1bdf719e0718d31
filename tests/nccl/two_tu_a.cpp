// Header-only guard for the NCCL communicator: two host-compiled (g++, -Wall -Wextra -Wpedantic)
// translation units include it and link; main runs only a GPU-free check, so it runs in CI.
#include "hdpissa/comm/nccl_communicator.hpp"

int two_tu_b();

int main() {
  static_assert(hdpissa::Communicator<hdpissa::NcclCommunicator>);
  hdpissa::NcclOptions opt;
  return (opt.timeout.count() > 0 && two_tu_b() == 0) ? 0 : 1;
}
