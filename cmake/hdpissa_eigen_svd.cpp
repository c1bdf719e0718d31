// The one translation unit of this repository's own tests, examples and benchmarks that compiles
// Eigen's BDCSVD (EigenBackend::thin_svd); every other one sees HDPISSA_EIGEN_SVD_EXTERN
// (CMakeLists.txt, option HDPISSA_SHARED_EIGEN_SVD). Saves ~80 s of compile time per translation
// unit that uses the Eigen backend's SVD in float and double.
#include "hdpissa/backend/eigen/eigen_svd_instantiation.hpp"
