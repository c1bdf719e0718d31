# cmake -DCMD=<mpirun;args…> -DEXPECT=<regex> -DMAX_SECONDS=<n> -P check_fault.cmake
# Passes iff the command fails (non-zero status), within MAX_SECONDS, printing EXPECT.
string(TIMESTAMP _t0 "%s")
execute_process(COMMAND ${CMD} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err
                TIMEOUT ${MAX_SECONDS})
string(TIMESTAMP _t1 "%s")
math(EXPR _dt "${_t1} - ${_t0}")
message("---- status ${_rc} after ${_dt} s; output:\n${_out}\n${_err}----")
if(_rc EQUAL 0)
  message(FATAL_ERROR "expected the job to fail, it succeeded")
endif()
if(_rc MATCHES "timeout|Process terminated")
  message(FATAL_ERROR "the job hung: still running after ${MAX_SECONDS} s (${_rc})")
endif()
if(NOT "${_out}${_err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "expected the output to match: ${EXPECT}")
endif()
message("ok: failed as expected in ${_dt} s")
