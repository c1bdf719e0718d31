// The one main TU of the evaluator suite (tests/llama/eval).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
