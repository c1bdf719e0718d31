// Fault injection for the MPI fault tests (run by check_fault.cmake with 3 ranks). Rank 1 fails
// while ranks 0 and 2 wait in an all_gather for it:
//   throw  rank 1 throws; run_or_abort prints the error and MPI_Aborts, ending ranks 0 and 2
//   hang   rank 1 never arrives; ranks 0 and 2 time out after 2 s (CommError), then run_or_abort
//   crash  rank 1 dies on SIGABRT without MPI_Finalize; mpirun notices and kills ranks 0 and 2
// In no mode may the job hang or exit 0.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hdpissa/mpi.hpp"

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  return hdpissa::run_or_abort([&] {
    hdpissa::MpiOptions opt;
    if (mode == "hang") opt.timeout = std::chrono::milliseconds(2000);
    hdpissa::MpiCommunicator comm(boost::mpi::communicator(), opt);
    std::vector<float> send(4, float(comm.rank())), recv(4 * std::size_t(comm.size()));
    comm.all_gather(send.data(), recv.data(), send.size());  // a healthy collective first
    if (comm.rank() == 1) {
      if (mode == "throw") throw std::runtime_error("injected failure on rank 1");
      if (mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
      if (mode == "crash") std::abort();
    }
    comm.all_gather(send.data(), recv.data(), send.size());
    return 0;
  });
}
