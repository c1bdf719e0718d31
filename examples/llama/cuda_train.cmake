# hdpissa-train's GPU path (llama/train/engine.hpp, src/engine_cuda_impl.cuh
# instantiated by src/engine_cuda.cu (fp32) and src/engine_cuda_bf16.cu, train/methods.hpp on gpu::CudaDevice, llama/cuda/cuda_device.cuh):
# two CUDA translation units, linked into hdpissa-train (and tests/llama/cuda_train) when CUDA is
# available; otherwise hdpissa-train links hdpissa_train_no_cuda (the same entry points, reporting a
# build without CUDA). Included from CMakeLists.txt after hdpissa-train is defined.
if(NOT HDPISSA_HAVE_CUDA)
  target_link_libraries(hdpissa-train PRIVATE hdpissa_train_no_cuda)
  return()
endif()
# Two TUs (fp32 + entry points, bf16) so that the two engine instantiations compile in parallel.
add_library(hdpissa_train_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/src/engine_cuda.cu ${CMAKE_CURRENT_LIST_DIR}/src/engine_cuda_bf16.cu)
add_library(hdpissa::train_cuda ALIAS hdpissa_train_cuda)
target_link_libraries(hdpissa_train_cuda PUBLIC hdpissa_llama hdpissa::cuda)
if(TARGET hdpissa_llama_cuda)  # the CUDA model's own library, when it has one
  target_link_libraries(hdpissa_train_cuda PUBLIC hdpissa_llama_cuda)
endif()
target_compile_options(hdpissa_train_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra -diag-suppress=20012,20013,20014,20015,128>)
set_target_properties(hdpissa_train_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_RESOLVE_DEVICE_SYMBOLS ON)
target_link_libraries(hdpissa-train PRIVATE hdpissa_train_cuda)
# --device cuda under mpirun: one process per GPU over NCCL (hdpissa::nccl = CUDA + MPI + NCCL). The
# NcclCommunicator is made in hdpissa_train.cpp (host compiler); the engine (src/engine_cuda*.cu) needs no NCCL.
# Without it, several processes with --device cuda fail with a clear error at run time.
if(TARGET hdpissa::nccl AND TARGET hdpissa::mpi)
  target_link_libraries(hdpissa-train PRIVATE hdpissa::nccl)
  target_compile_definitions(hdpissa-train PRIVATE HDPISSA_TRAIN_HAVE_NCCL=1)
  set(HDPISSA_TRAIN_HAVE_NCCL ON)
else()
  set(HDPISSA_TRAIN_HAVE_NCCL OFF)
  message(STATUS "hdpissa-train: multi-process --device cuda disabled (needs NCCL and MPI)")
endif()
# --device cuda where no GPU is visible: a clear error (runs in CI, and on a GPU machine too).
if(EXISTS "${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf/model.safetensors")
  add_test(NAME example_llama_train_cuda_no_device
           COMMAND hdpissa-train --device cuda --model ${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf
                   --data ${HDPISSA_LLAMA_DEFAULT_DATA}/gsm8k/train.jsonl --max-examples 16 --max-len 256 --max-steps 1)
  set_tests_properties(example_llama_train_cuda_no_device PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES="
                       PASS_REGULAR_EXPRESSION "error: --device cuda: no CUDA device found"
                       FAIL_REGULAR_EXPRESSION "loaded [0-9]+ layers")  # before the checkpoint loads
endif()
