// The mLSTM recurrent step for generation (docs/mlstm.md, recurrent form): one token for every
// (batch, head), the float32 state updated in place. It is bound by memory: C is read and written
// once (the floor). Each head's C is split by columns over several blocks, so that enough loads are
// in flight; every block computes n'ᵀq̂ from the old n itself, and the last block of a head to get
// there (an atomic counter per head) writes n' and m' — after every other block has read n and m.
//
//   m' = max(log f + m, log i) (exp; 0 for sig),  f' = exp(log f + m - m'),  i' = exp(log i - m')
//   C' = f' C + i' k vᵀ,  n' = f' n + i' k,  h = C'ᵀ q̂ / (max(|n'ᵀ q̂|, exp(-m')) + eps)
#include "cuda/mlstm/params.hpp"
#include "cuda/mlstm/tiles.cuh"

#include <cuda_runtime.h>

namespace flashlstm::cuda::mlstm::detail {
namespace {

constexpr int kStepThreads = 256;
constexpr int kLanes = 64;                                // columns of C a block owns
constexpr int kRowsAtOnce = kStepThreads / (kLanes / 4);  // rows of C in flight per block (4 columns a thread)

struct StepArgs {
  const void *q, *k, *v, *igate, *fgate;
  void* h;
  float *C, *n, *m;
  unsigned* arrived;  // (B·NH) counters, zero on entry, zero again on exit
  int DQK, DV;
  std::int64_t seq_stride, token;  // token t of head bh is at bh * seq_stride + t
  float scale, eps;
  bool stabilised, normalizes, gates_f32;
};

// Preconditions: grid (ceil(DV / 64), B·NH), kStepThreads threads; dynamic shared memory 2·DQK floats.
template <class T>
__global__ void __launch_bounds__(kStepThreads) step_kernel(StepArgs a) {
  extern __shared__ float smem[];
  float* sq = smem;        // (DQK) q̂
  float* sk = sq + a.DQK;  // (DQK)
  __shared__ float scratch[kStepThreads / 32], partial[kRowsAtOnce][kLanes + 1];
  __shared__ bool last;
  const int bh = blockIdx.y, tid = threadIdx.x;
  const std::int64_t token = bh * a.seq_stride + a.token;
  const T* q = static_cast<const T*>(a.q) + token * a.DQK;
  const T* k = static_cast<const T*>(a.k) + token * a.DQK;
  const T* v = static_cast<const T*>(a.v) + token * a.DV;
  for (int d = tid; d < a.DQK; d += kStepThreads) sq[d] = a.scale * to_float(q[d]), sk[d] = to_float(k[d]);

  const float log_f = logsigmoid(load_gate<T>(a.fgate, token, a.gates_f32));
  const float it = load_gate<T>(a.igate, token, a.gates_f32);
  const float log_i = a.stabilised ? it : logsigmoid(it);
  const float m_old = a.m[bh];
  const float m_new = a.stabilised ? fmaxf(log_f + m_old, log_i) : 0.f;
  const float f = expf(log_f + m_old - m_new), i = expf(log_i - m_new);
  __syncthreads();

  // n'ᵀ q̂ from the old n (every block), then the arrival count.
  float* n = a.n + static_cast<std::int64_t>(bh) * a.DQK;
  float qn = 0.f;
  for (int d = tid; d < a.DQK; d += kStepThreads) qn += (f * n[d] + i * sk[d]) * sq[d];
  for (int o = 16; o > 0; o >>= 1) qn += __shfl_xor_sync(0xffffffffu, qn, o);
  if (tid % 32 == 0) scratch[tid / 32] = qn;
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    last = atomicAdd(a.arrived + bh, 1u) == gridDim.x - 1;
  }
  float total = 0.f;
  for (int w = 0; w < kStepThreads / 32; ++w) total += scratch[w];
  const float dhat = a.normalizes ? readout_dhat(total, a.stabilised ? expf(-m_new) : 1.f, a.eps) : 1.f;

  // This block's columns of C' and of C'ᵀ q̂: each thread 4 adjacent columns (one 16-byte access
  // when DV is a multiple of 4) of every 16th row.
  float* C = a.C + static_cast<std::int64_t>(bh) * a.DQK * a.DV;
  const int col = 4 * (tid % (kLanes / 4)), e = blockIdx.x * kLanes + col, row = tid / (kLanes / 4);
  const bool vector = a.DV % 4 == 0 && reinterpret_cast<std::uintptr_t>(a.C) % 16 == 0;
  float part[4] = {0.f, 0.f, 0.f, 0.f}, iv[4];
  for (int j = 0; j < 4; ++j) iv[j] = e + j < a.DV ? i * to_float(v[e + j]) : 0.f;
  if (e < a.DV) {
#pragma unroll 4
    for (int d = row; d < a.DQK; d += kRowsAtOnce) {
      float* c = C + static_cast<std::int64_t>(d) * a.DV + e;
      float x[4];
      if (vector) {
        const float4 c4 = *reinterpret_cast<const float4*>(c);
        x[0] = c4.x, x[1] = c4.y, x[2] = c4.z, x[3] = c4.w;
      } else {
        for (int j = 0; j < 4; ++j) x[j] = e + j < a.DV ? c[j] : 0.f;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        x[j] = f * x[j] + iv[j] * sk[d];
        part[j] += x[j] * sq[d];
      }
      if (vector) {
        *reinterpret_cast<float4*>(c) = make_float4(x[0], x[1], x[2], x[3]);
      } else {
        for (int j = 0; j < 4; ++j)
          if (e + j < a.DV) c[j] = x[j];
      }
    }
  }
  for (int j = 0; j < 4; ++j) partial[row][col + j] = part[j];
  __syncthreads();
  if (tid < kLanes && blockIdx.x * kLanes + tid < a.DV) {
    float sum = 0.f;
    for (int r = 0; r < kRowsAtOnce; ++r) sum += partial[r][tid];
    static_cast<T*>(a.h)[token * a.DV + blockIdx.x * kLanes + tid] = from_float<T>(sum / dhat);
  }
  if (last) {  // every other block of this head has read n and m
    for (int d = tid; d < a.DQK; d += kStepThreads) n[d] = f * n[d] + i * sk[d];
    if (tid == 0) a.m[bh] = m_new, a.arrived[bh] = 0;
  }
}

}  // namespace

void run_step(const Inputs& x, const State& state, void* h, std::int64_t seq_stride, std::int64_t token,
              const Options& options, cudaStream_t stream) {
  const auto& d = x.dims;
  const std::int64_t heads = d.B * d.NH;
  unsigned* arrived = nullptr;
  Scratch scratch(stream);
  scratch.add(arrived, heads);
  scratch.allocate();
  check_cuda(cudaMemsetAsync(arrived, 0, heads * sizeof(unsigned), stream), "step: memset");
  StepArgs a{x.q, x.k, x.v, x.igate, x.fgate, h, state.C, state.n, state.m, arrived, static_cast<int>(d.DQK),
             static_cast<int>(d.DV), seq_stride, token, 1.f / sqrtf(static_cast<float>(d.DQK)),
             static_cast<float>(options.eps), flashlstm::mlstm::stabilised(options),
             flashlstm::mlstm::normalizes(options), x.float32_gates};
  const std::size_t smem = 2 * d.DQK * sizeof(float);
  const dim3 grid(static_cast<unsigned>((d.DV + kLanes - 1) / kLanes), static_cast<unsigned>(heads));
  if (x.dtype == DType::float32) {
    cudaFuncSetAttribute(step_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    step_kernel<float><<<grid, kStepThreads, smem, stream>>>(a);
  } else {
    cudaFuncSetAttribute(step_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
    step_kernel<__nv_bfloat16><<<grid, kStepThreads, smem, stream>>>(a);
  }
  check_cuda(cudaGetLastError(), "step: launch");
}

}  // namespace flashlstm::cuda::mlstm::detail
