// The mLSTM recurrent step for generation (spec/mlstm.md, recurrent form): one token for every
// (batch, head), the float32 state updated in place. It is bound by memory: C is read and written
// once (the floor), so one block owns one head's whole state — nothing is shared between blocks,
// which is what makes the in-place update safe — and its threads stream C row by row.
//
//   m' = max(log f + m, log i) (exp; 0 for sig),  f' = exp(log f + m - m'),  i' = exp(log i - m')
//   C' = f' C + i' k vᵀ,  n' = f' n + i' k,  h = C'ᵀ q̂ / (max(|n'ᵀ q̂|, exp(-m')) + eps)
#include "cuda/mlstm/params.hpp"
#include "cuda/mlstm/tiles.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace flashlstm::cuda::mlstm::detail {
namespace {

constexpr int kStepThreads = 512;
constexpr int kLanes = 64;                         // columns of C a row of threads covers
constexpr int kRowsAtOnce = kStepThreads / kLanes;  // rows of C in flight

struct StepArgs {
  const void *q, *k, *v, *igate, *fgate;
  void* h;
  float *C, *n, *m;
  int DQK, DV;
  std::int64_t seq_stride, token;  // token t of head bh is at bh * seq_stride + t
  float scale, eps;
  bool stabilised, normalizes;
};

// Preconditions: grid (B·NH), kStepThreads threads; dynamic shared memory 2·DQK + DV floats.
template <class T>
__global__ void __launch_bounds__(kStepThreads) step_kernel(StepArgs a) {
  extern __shared__ float smem[];
  float* sq = smem;            // (DQK) q̂
  float* sk = sq + a.DQK;      // (DQK)
  float* sh = sk + a.DQK;      // (DV) partial sums of Cᵀ q̂
  __shared__ float scratch[kStepThreads / 32];
  const int bh = blockIdx.x, tid = threadIdx.x;
  const std::int64_t token = bh * a.seq_stride + a.token;
  const T* q = static_cast<const T*>(a.q) + token * a.DQK;
  const T* k = static_cast<const T*>(a.k) + token * a.DQK;
  const T* v = static_cast<const T*>(a.v) + token * a.DV;
  for (int d = tid; d < a.DQK; d += kStepThreads) sq[d] = a.scale * to_float(q[d]), sk[d] = to_float(k[d]);
  for (int e = tid; e < a.DV; e += kStepThreads) sh[e] = 0.f;

  const float log_f = logsigmoid(to_float(static_cast<const T*>(a.fgate)[token]));
  const float it = to_float(static_cast<const T*>(a.igate)[token]);
  const float log_i = a.stabilised ? it : logsigmoid(it);
  const float m_old = a.m[bh];
  const float m_new = a.stabilised ? fmaxf(log_f + m_old, log_i) : 0.f;
  const float f = expf(log_f + m_old - m_new), i = expf(log_i - m_new);
  __syncthreads();

  // n' and n'ᵀ q̂
  float* n = a.n + static_cast<std::int64_t>(bh) * a.DQK;
  float qn = 0.f;
  for (int d = tid; d < a.DQK; d += kStepThreads) {
    const float nd = f * n[d] + i * sk[d];
    n[d] = nd;
    qn += nd * sq[d];
  }
  for (int o = 16; o > 0; o >>= 1) qn += __shfl_xor_sync(0xffffffffu, qn, o);
  if (tid % 32 == 0) scratch[tid / 32] = qn;

  // C' and the partial sums of C'ᵀ q̂ over this thread's rows
  float* C = a.C + static_cast<std::int64_t>(bh) * a.DQK * a.DV;
  const int lane = tid % kLanes, row = tid / kLanes;
  for (int e0 = 0; e0 < a.DV; e0 += kLanes) {
    const int e = e0 + lane;
    if (e >= a.DV) continue;
    const float ive = i * to_float(v[e]);
    float part = 0.f;
#pragma unroll 4
    for (int d = row; d < a.DQK; d += kRowsAtOnce) {
      float* c = C + static_cast<std::int64_t>(d) * a.DV + e;
      const float cd = f * *c + ive * sk[d];
      *c = cd;
      part += cd * sq[d];
    }
    atomicAdd(sh + e, part);
  }
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kStepThreads / 32; ++w) total += scratch[w];
  const float dhat = a.normalizes ? fmaxf(fabsf(total), a.stabilised ? expf(-m_new) : 1.f) + a.eps : 1.f;
  T* h = static_cast<T*>(a.h) + token * a.DV;
  for (int e = tid; e < a.DV; e += kStepThreads) h[e] = from_float<T>(sh[e] / dhat);
  if (tid == 0) a.m[bh] = m_new;
}

}  // namespace

void run_step(const Inputs& x, const State& state, void* h, std::int64_t seq_stride, std::int64_t token,
              const Options& options, cudaStream_t stream) {
  const auto& d = x.dims;
  StepArgs a{x.q, x.k, x.v, x.igate, x.fgate, h, state.C, state.n, state.m, static_cast<int>(d.DQK),
             static_cast<int>(d.DV), seq_stride, token, 1.f / sqrtf(static_cast<float>(d.DQK)),
             static_cast<float>(options.eps), flashlstm::mlstm::stabilised(options),
             flashlstm::mlstm::normalizes(options)};
  const std::size_t smem = (2 * d.DQK + d.DV) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>(d.B * d.NH);
  cudaError_t e;
  if (x.dtype == DType::float32) {
    cudaFuncSetAttribute(step_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    step_kernel<float><<<blocks, kStepThreads, smem, stream>>>(a);
  } else {
    cudaFuncSetAttribute(step_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
    step_kernel<__nv_bfloat16><<<blocks, kStepThreads, smem, stream>>>(a);
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("flashlstm CUDA: step: ") + cudaGetErrorString(e));
}

}  // namespace flashlstm::cuda::mlstm::detail
