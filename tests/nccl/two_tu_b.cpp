#include "hdpissa/comm/nccl_communicator.hpp"

int two_tu_b() { return hdpissa::nccl_detail::host_name().empty() ? 1 : 0; }
