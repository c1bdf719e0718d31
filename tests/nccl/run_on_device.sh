#!/bin/bash
# Runs the NCCL tests on a GPU machine that may lack MPI, Boost.MPI, Eigen and doctest (this
# workplace's device machines): uses a binary prebuilt here (hdpissa_nccl_tests_single, linked with
# -static-libstdc++; NCCL, cuBLAS and cuSOLVER come from the machine), finds libnccl from the
# system or from the nvidia-nccl Python wheel, and reports what the machine has.
#   tests/nccl/run_on_device.sh <dir holding hdpissa_nccl_tests_single>
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
B=${1:-build-mpi/devcarry}
OUTDIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "mpirun: $(command -v mpirun || echo absent)"
ls -d /usr/include/boost/mpi.hpp 2>/dev/null || echo "Boost.MPI headers: absent"
[ -d /usr/include/eigen3 ] && echo "Eigen: present" || echo "Eigen: absent"
[ -d /usr/include/doctest ] && echo "doctest: present" || echo "doctest: absent"
if ! ldconfig -p | grep -q 'libnccl.so.2 '; then
  NL=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
  echo "libnccl from the Python wheel: $NL"
  export LD_LIBRARY_PATH=$NL:${LD_LIBRARY_PATH:-}
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d $d ] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH}:$d
done
ldd $B/hdpissa_nccl_tests_single | grep -E 'not found|nccl|cublas\.|cusolver'
echo "== NCCL tests (1 rank, no MPI)"
time $B/hdpissa_nccl_tests_single --no-intro -d 2>&1 | tee $OUTDIR/nccl_single.log
echo "rc=${PIPESTATUS[0]}"
echo "== dead peer: rank 0 of 2, rank 1 never joins, deadline 3 s"
timeout 90 $B/hdpissa_nccl_tests_single --no-intro --no-skip '--test-case=*never arrives*' 2>&1 | tee $OUTDIR/nccl_dead_peer.log
echo "rc=${PIPESTATUS[0]}"
