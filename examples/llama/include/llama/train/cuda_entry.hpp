#pragma once
/// \file cuda_entry.hpp
/// The CUDA engine's entry points (llama/train/engine.hpp has the TrainEngine they return): defined
/// by src/engine_cuda.cu in a CUDA build, by src/engine_cuda_unavailable.cpp (clear errors)
/// otherwise. Kept apart from engine.hpp so that the stub compiles without the trainer's templates
/// (a few seconds instead of ~30 s of CI time): only forward declarations and two small structs.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "llama/common.hpp"
#include "llama/train/device_comm.hpp"
#include "llama/train/truncated_delta_type.hpp"

namespace hdpissa::llama {

struct TrainOptions;
struct ModelWeights;
struct TrainState;
class TrainEngine;

/// Where the GPU engine's groups sit among all K (mirrors the trainer's host communicator).
struct EngineGroups {
  int groups = 1;        ///< K
  int local_groups = 1;  ///< groups hosted by this process
  int first_group = 0;   ///< global index of local group 0
  int processes = 1;
  int rank = 0;
  /// Peers of a multi-process job (local rank, processes on this host, the NCCL factory).
  DeviceCommSetup device_comm;
  /// Adapter initialisation progress (MethodContext::progress), optional.
  std::function<void(std::size_t, std::size_t)> init_progress = {};
};

/// Builds the CUDA engine (src/engine_cuda.cu) on GPU (local rank mod visible GPUs): uploads `host`
/// (fp32), builds the method of `o.method` in `o.dtype` (fp32: exact fp32 throughout; bf16: bf16
/// compute copies of W and the factors, fp32 masters, fp32 gradient accumulation). `resume`
/// (non-null when resuming) supplies the saved factors so that no SVD runs. Device collectives:
/// `g.device_comm.make` (NCCL) when set, else CudaSingleProcess (one process only). Throws
/// LlamaError when this build has no CUDA, when no CUDA device is usable, when the host runs more
/// processes than it has GPUs, or when several processes lack a factory.
std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g,
                                              const TrainState* resume);
/// Number of usable CUDA devices (0 when none, when the driver reports an error, or without CUDA).
int cuda_device_count();
/// Why `--device cuda` cannot run here, or "" when it can: this build has no CUDA, or no device is
/// visible. The trainer asks before the checkpoint loads.
std::string cuda_unavailable_reason();
/// The CUDA engine's truncation (llama/train/truncated_delta_cuda.cuh) of ΔW = W − W0 (host fp32
/// matrices, uploaded) on the current CUDA device: the GPU path of the truncated LoRA export, for
/// tests against the host truncated_delta(W, W0, rank, energy). Throws LlamaError without CUDA.
TruncatedDelta cuda_truncated_delta(const Matrix& W, const Matrix& W0, int rank, double energy);

}  // namespace hdpissa::llama
