// Header-only guard (house rule 1): two translation units include the MPI component; a
// non-inline function or a namespace-scope variable defined in a header would fail to link.
#include "hdpissa/mpi.hpp"

int two_tu_b();

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  return hdpissa::run_or_abort([&] {
    hdpissa::MpiCommunicator comm;
    float x = 1.f;
    comm.all_reduce_sum(&x, 1);
    return (x == float(comm.size()) && two_tu_b() == 0) ? 0 : 1;
  });
}
