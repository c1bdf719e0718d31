# hdpissa-train without MPI (issue 14; tools/train_launch.hpp). Included from CMakeLists.txt after
# cuda_train.cmake.
#  - --device cuda over several processes without MPI: NCCL bootstrapped over the socket
#    rendezvous needs CUDA + NCCL only (not hdpissa::nccl, which also needs Boost.MPI).
if(TARGET hdpissa_train_cuda AND NCCL_FOUND AND TARGET NCCL::NCCL)
  target_link_libraries(hdpissa-train PRIVATE NCCL::NCCL)
  target_compile_definitions(hdpissa-train PRIVATE HDPISSA_TRAIN_HAVE_NCCL_SOCKET=1)
endif()
#  - CPU tests, no MPI: `hdpissa-run --nproc-per-node 2` and `hdpissa-train --nproc-per-node 2`,
#    2 groups per process, must give the bit-identical merged model of 1 process x 4 groups, also
#    with the deltas exchanged in ~4 KiB buckets (--exchange-bucket-mb 0.004: several all-gathers per
#    step); an environment with WORLD_SIZE but no rendezvous address is a clear error.
if(TARGET hdpissa-run AND EXISTS "${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf/model.safetensors")
  set(_args --model ${HDPISSA_LLAMA_DEFAULT_DATA}/stories260K-hf --data ${HDPISSA_LLAMA_DEFAULT_DATA}/gsm8k/train.jsonl
            --max-examples 200 --method hdpissa --rank 4 --lr 2e-3 --max-len 256 --max-steps 3 --threads 1 --quiet)
  set(_argl ${_args})
  list(JOIN _args " " _args)
  set(_w "${CMAKE_CURRENT_BINARY_DIR}/train-launch-check")
  set(_t $<TARGET_FILE:hdpissa-train>)
  add_test(NAME example_llama_train_launch_matches_single
           COMMAND bash -c "rm -rf ${_w} && ${_t} ${_args} --groups-per-process 4 --output ${_w}/single && $<TARGET_FILE:hdpissa-run> --nproc-per-node 2 ${_t} ${_args} --groups-per-process 2 --output ${_w}/run && cmp ${_w}/single/model.safetensors ${_w}/run/model.safetensors && ${_t} --nproc-per-node 2 ${_args} --groups-per-process 2 --output ${_w}/self && cmp ${_w}/single/model.safetensors ${_w}/self/model.safetensors && ${_t} --nproc-per-node 2 ${_args} --groups-per-process 2 --exchange-bucket-mb 0.004 --output ${_w}/buckets && cmp ${_w}/single/model.safetensors ${_w}/buckets/model.safetensors && echo bit-identical")
  set_tests_properties(example_llama_train_launch_matches_single PROPERTIES PASS_REGULAR_EXPRESSION "bit-identical"
                       ENVIRONMENT "HDPISSA_COMM_TIMEOUT_S=120" TIMEOUT 300 LABELS launch)
  #  - SIGTERM to the launcher (sent by rank 0's test hook at step 3, forwarded to both ranks): exit
  #    143, both ranks stop after step 3 and save; the resumed run gives the bit-identical model of an
  #    uninterrupted 2-process run and the metrics log holds each of the 6 steps once.
  set(_s "${CMAKE_CURRENT_BINARY_DIR}/train-launch-sigterm")
  add_test(NAME example_llama_train_launch_sigterm
           COMMAND bash -c "rm -rf ${_s} && ${_t} --nproc-per-node 2 ${_args} --max-steps 6 --groups-per-process 2 --output ${_s}/ref && (HDPISSA_TEST_SIGNAL_PARENT_AT_STEP=3 ${_t} --nproc-per-node 2 ${_args} --max-steps 6 --groups-per-process 2 --save-state ${_s}/state --metrics ${_s}/m.jsonl; rc=$?; echo exit $rc; test $rc = 143) && grep -q '\"step\": 3$' ${_s}/state/manifest.json && grep -q rank-1.safetensors ${_s}/state/manifest.json && ${_t} --nproc-per-node 2 ${_args} --max-steps 6 --groups-per-process 2 --resume ${_s}/state --save-state ${_s}/state --metrics ${_s}/m.jsonl --output ${_s}/resumed && cmp ${_s}/ref/model.safetensors ${_s}/resumed/model.safetensors && test $(grep -c '\"type\":\"step\"' ${_s}/m.jsonl) = 6 && echo sigterm-resume-bit-identical")
  set_tests_properties(example_llama_train_launch_sigterm PROPERTIES PASS_REGULAR_EXPRESSION "sigterm-resume-bit-identical"
                       ENVIRONMENT "HDPISSA_COMM_TIMEOUT_S=120" TIMEOUT 300 LABELS launch)
  add_test(NAME example_llama_train_launch_env_error
           COMMAND ${CMAKE_COMMAND} -E env WORLD_SIZE=2 RANK=1 ${_t} ${_argl} --output ${_w}/never)
  set_tests_properties(example_llama_train_launch_env_error PROPERTIES LABELS launch
    PASS_REGULAR_EXPRESSION "hdpissa-train: error: environment: WORLD_SIZE=2 but no rendezvous address")
endif()
