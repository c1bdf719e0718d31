# Fails unless README.md holds SNIPPET (examples/01_user_trainer/main.cpp) verbatim in a ```cpp block,
# so the README's "Using the library" code is the file CTest compiles and runs.
file(READ "${README}" readme)
file(READ "${SNIPPET}" snippet)
string(FIND "${readme}" "```cpp\n${snippet}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md: the \"Using the library\" block differs from ${SNIPPET}; paste the file into it verbatim")
endif()
message(STATUS "README.md holds ${SNIPPET} verbatim")
