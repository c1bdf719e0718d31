#pragma once
/// \file eigen_svd_instantiation.hpp
/// Explicit instantiation definitions of the Eigen SVD that EigenBackend<float|double>::thin_svd
/// uses. Include in exactly ONE translation unit of a program whose other translation units define
/// HDPISSA_EIGEN_SVD_EXTERN (see eigen_backend.hpp): they then skip compiling BDCSVD, about 40 s
/// per scalar type each at -O3. Purely a build-time aid; the code run is the same.

#include <Eigen/Dense>
#include <Eigen/SVD>

template class Eigen::BDCSVD<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>>;
template class Eigen::BDCSVD<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>>;
