// The chunkwise mLSTM kernels for bf16 inputs (chunkwise_common.cuh describes them).
#include "cuda/mlstm/chunkwise_launch.cuh"

namespace flashlstm::cuda::mlstm::detail {

void forward_bf16(Params p, const Packing* packing, cudaStream_t stream) { forward<__nv_bfloat16>(p, packing, stream); }

void backward_bf16(Params p, const Packing* packing, cudaStream_t stream) { backward<__nv_bfloat16>(p, packing, stream); }

}  // namespace flashlstm::cuda::mlstm::detail
