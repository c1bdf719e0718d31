# GPU decoding for hdpissa-eval / hdpissa-generate (--device cuda): llama/eval/cuda_generator.hpp,
# defined by src/cuda_generator.cu (the batched KV-cached decoder, llama/cuda/decode_cuda.cuh) where
# CUDA is available, else by src/cuda_generator_unavailable.cpp (same entry points, reporting a build
# without CUDA; no #ifdef in the tools). Included from CMakeLists.txt after both tools are defined.
if(HDPISSA_HAVE_CUDA)
  add_library(hdpissa_generate_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/src/cuda_generator.cu)
  target_link_libraries(hdpissa_generate_cuda PUBLIC hdpissa_llama hdpissa::cuda)
  target_compile_options(hdpissa_generate_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra -diag-suppress=20012,20013,20014,20015,128>)
  set_target_properties(hdpissa_generate_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_RESOLVE_DEVICE_SYMBOLS ON)
  set(_hdpissa_gen_lib hdpissa_generate_cuda)
else()
  add_library(hdpissa_generate_no_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/src/cuda_generator_unavailable.cpp)
  target_link_libraries(hdpissa_generate_no_cuda PUBLIC hdpissa_llama)
  set(_hdpissa_gen_lib hdpissa_generate_no_cuda)
endif()
target_link_libraries(hdpissa-eval PRIVATE ${_hdpissa_gen_lib})
target_link_libraries(hdpissa-generate PRIVATE ${_hdpissa_gen_lib})
# --device cuda where no GPU is visible: a clear error (runs in CI, and on a GPU machine too).
if(EXISTS "${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf/model.safetensors")
  add_test(NAME example_llama_generate_cuda_no_device
           COMMAND hdpissa-generate --device cuda --model ${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf
                   --tokenizer ${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K/tok512.model --max-new-tokens 8)
  set_tests_properties(example_llama_generate_cuda_no_device PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES="
                       PASS_REGULAR_EXPRESSION "error: --device cuda: (no CUDA device found|this build has no CUDA)")
endif()
