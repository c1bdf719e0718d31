#pragma once
/// \file kernels_llama.cuh
/// CUDA kernels of CudaLlama<T> (model_cuda.cuh): embedding gather, fused residual-add + RMSNorm
/// forward / backward, RoPE + head-major permutes, causal softmax with row log-sum-exp, attention
/// backward elementwise step, SwiGLU forward / backward, cross-entropy with d(logits).
