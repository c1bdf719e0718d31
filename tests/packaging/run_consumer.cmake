# Builds and runs tests/packaging/consumer against hdpissa, either installed (find_package) or
# vendored (add_subdirectory). Invoked by CTest with -DMODE=... -DSOURCE_DIR=... -DWORK_DIR=...
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
# Release with -O1: these tests check configuring, installing, linking and running as a user would;
# -O1 keeps NDEBUG and real optimisation while taking much less compile time than -O3 (CI budget).
set(common -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG" -DHDPISSA_CUDA=OFF -DHDPISSA_MPI=OFF)
if(MODE STREQUAL "find_package")
  # Install only the library (no tests/examples) into a private prefix, then consume it.
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/lib" ${common} -DHDPISSA_BUILD_TESTS=OFF
      -DHDPISSA_BUILD_EXAMPLES=OFF -DHDPISSA_BUILD_BENCH=OFF -DHDPISSA_INSTALL=ON
      -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install "${WORK_DIR}/lib")
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/packaging/consumer" -B "${WORK_DIR}/consumer" ${common}
      -DHDPISSA_CONSUME=find_package -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/packaging/consumer" -B "${WORK_DIR}/consumer" ${common}
      -DHDPISSA_CONSUME=add_subdirectory -DHDPISSA_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build "${WORK_DIR}/consumer" -j 2)
run("${WORK_DIR}/consumer/consumer")
message(STATUS "packaging (${MODE}): consumer built and ran")
if(MODE STREQUAL "find_package")
  # Example 01 (the README's "Using the library") as a user builds it: against the installed package.
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/examples/01_user_trainer" -B "${WORK_DIR}/example01" ${common}
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --build "${WORK_DIR}/example01" -j 2)
  run("${WORK_DIR}/example01/hdpissa_example_user_trainer")
  message(STATUS "packaging (${MODE}): examples/01_user_trainer built against the installed package and passed")
endif()
