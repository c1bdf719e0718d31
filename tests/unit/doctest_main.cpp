// The one doctest main of the unit suite. Every other TU here includes hdpissa/hdpissa.hpp, so the
// suite's link is also the two-translation-unit check that the library is truly header-only.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
