// The chunkwise mLSTM kernels for float32 inputs (chunkwise_common.cuh describes them).
#include "cuda/mlstm/chunkwise_launch.cuh"

namespace flashlstm::cuda::mlstm::detail {

void forward_float32(Params p, const Packing* packing, cudaStream_t stream) { forward<float>(p, packing, stream); }

void backward_float32(Params p, const Packing* packing, cudaStream_t stream) { backward<float>(p, packing, stream); }

}  // namespace flashlstm::cuda::mlstm::detail
