// One main for the MPI test binaries: every rank runs the doctest suite (the tests are SPMD: each
// collective is called by every rank), its report is captured and printed rank by rank, and the
// exit code is the worst over ranks, so mpirun (and CTest) fail if any rank fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <mpi.h>

#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <iostream>
#include <sstream>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  std::ostringstream report;
  doctest::Context ctx(argc, argv);
  ctx.setOption("no-intro", true);
  ctx.setOption("no-colors", true);  // the report is captured and prefixed
  ctx.setCout(&report);
  const int rc = ctx.run();
  if (ctx.shouldExit()) return rc;
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, world);
  for (int p = 0; p < world.size(); ++p) {
    if (p == world.rank() && (p == 0 || rc != 0)) {
      std::istringstream lines(report.str());
      for (std::string line; std::getline(lines, line);)
        std::cout << "[rank " << p << "/" << world.size() << "] " << line << '\n';
      std::cout << std::flush;
    }
    world.barrier();
  }
  return worst;
}
