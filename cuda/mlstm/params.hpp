// Internal to the CUDA mLSTM: the one parameter block every kernel of the chunkwise forward and
// backward reads, and the entry points api.cpp calls after checking the arguments. Plain C++ so
// that the checking code needs no CUDA compiler.
#pragma once

#include "cuda/common.hpp"
#include "cuda/mlstm/mlstm.hpp"

#include <cstdint>
#include <optional>
#include <vector>

namespace flashlstm::cuda::mlstm::detail {

struct Params {
  // Problem: BH rows (a row is one head of one sequence), each walked in chunks of L tokens. Where a
  // row lies in the inputs and the workspace: rows.cuh (row_of).
  //
  // One batch (cu_seqlens null): row bh is batch entry bh / NH, head bh mod NH; its token t is at
  // (bh * seq_stride + t) in q, k, v, h, the gates and their gradients (seq_stride >= S lets a
  // wrapper run on a prefix of a longer sequence); nc = ceil(S / L) chunks.
  //
  // Packed sequences (cu_seqlens set; N sequences in a (1, NH, seq_stride, D) batch): row
  // bh = i * NH + h is sequence i of head h, tokens [cu_seqlens[i], cu_seqlens[i + 1]) of head h;
  // S = cu_seqlens[N] − cu_seqlens[0] (a backward pass may take sequences that do not start at 0);
  // chunk_offsets[i] counts the chunks of the sequences before i; nc is the most chunks of any
  // sequence (grids have nc chunk slots per row; a row's slots beyond its own chunks return).
  // States (initial, final and their gradients) are (N, NH, ...): row bh's is entry bh either way.
  int BH = 0, S = 0, DQK = 0, DV = 0, L = 0, nc = 0;
  std::int64_t seq_stride = 0;
  const std::int64_t* cu_seqlens = nullptr;     // (N + 1) on the device
  const std::int64_t* chunk_offsets = nullptr;  // (N + 1) on the device
  const std::int64_t* row_order = nullptr;      // (BH): the rows by decreasing length, for the kernels
                                                // that walk a whole row (null: in order)
  int N = 0, NH = 0;
  std::int64_t total_chunks = 0;  // packed: the sequences' chunks
  // Workspace entries: per token, per chunk, per chunk state (each row's nc + 1).
  std::int64_t tokens = 0, chunks = 0, states = 0;
  // The grids of the chunk-parallel kernels: chunk slot s (the per-chunk workspace's entry s) is
  // plane s / chunk_stride, position s mod chunk_stride (chunkwise_common.cuh).
  int chunk_stride = 0, chunk_planes = 0;
  float scale = 1.f, eps = 0.f;
  bool stabilised = true, normalizes = true;
  bool gates_f32 = false;  // igate, fgate, digate, dfgate float32 (else of the input type)

  const void *q = nullptr, *k = nullptr, *v = nullptr, *igate = nullptr, *fgate = nullptr;
  const float *C0 = nullptr, *n0 = nullptr, *m0 = nullptr;  // initial state (nullable)
  void* h = nullptr;
  float *C_last = nullptr, *n_last = nullptr, *m_last = nullptr;

  // Per token (BH, S), in double so that differences of log gates inside a chunk do not cancel:
  // b = Σ log f from the chunk start (inclusive), u = log i - b, U = running max of u in the chunk,
  // argmax = the chunk-local token where U is attained.
  double *b = nullptr, *u = nullptr, *U = nullptr;
  int* argmax = nullptr;
  // States entering each chunk, the last entry the final state: (BH, nc + 1, DQK, DV), (BH, nc + 1,
  // DQK), (BH, nc + 1).
  float *Cs = nullptr, *ns = nullptr;
  double* ms = nullptr;

  // Backward.
  const void* dh = nullptr;
  const float *dC_last = nullptr, *dn_last = nullptr, *dm_last = nullptr;
  // Per token (BH, S): the readout's den, its state part den0, the row stabiliser m_r, dh·num and
  // dh·(state part of num); then dhat, the gradients reaching den (delta) and m_r (dmr), the
  // state-column entry of each row of dlogD (D0), the last row's token entries (lastrow).
  float *den = nullptr, *den0 = nullptr, *mrow = nullptr, *s = nullptr, *s0 = nullptr;
  float *dhat = nullptr, *delta = nullptr, *dmr = nullptr, *D0 = nullptr, *lastrow = nullptr;
  // Adjoint states at each chunk's exit: (BH, nc, DQK, DV), (BH, nc, DQK).
  float *dCs = nullptr, *dns = nullptr;
  // Per chunk (BH, nc): <dC, C_k> + <dn, n_k>; the last row's sum of dlogD before the stabiliser's
  // routing; what the routing adds to the last row; dm_k (the state column's sum).
  double *dot0 = nullptr, *last_rowsum = nullptr, *last_adj = nullptr, *dm_chunk = nullptr;
  // Intra-chunk matrices (BH, nc, L, L), lower triangle used: dA = W ∘ G, P = A ∘ W and the token
  // entries of dlogD, D = P ∘ G (the gradient of each log weight).
  float *dA = nullptr, *P = nullptr, *D = nullptr;
  void *dq = nullptr, *dk = nullptr, *dv = nullptr, *digate = nullptr, *dfgate = nullptr;
  float *dC0 = nullptr, *dn0 = nullptr, *dm0 = nullptr;
};

// Fill in the problem part of Params from checked arguments.
Params make_params(const Inputs& x, const ConstState* initial, int chunk_size, const Options& options);

// Packed sequences on the host: the offsets, and the tables the kernels read (chunk offsets at the
// launch's chunk size, the row order), staged in one buffer that a launcher copies into its scratch.
struct Packing {
  std::vector<std::int64_t> cu_seqlens;  // N + 1, checked

  std::int64_t N() const { return static_cast<std::int64_t>(cu_seqlens.size()) - 1; }
  std::int64_t length(std::int64_t i) const { return cu_seqlens[i + 1] - cu_seqlens[i]; }
};

// Sets L and everything that depends on it: nc, the packed tables' sizes (p.N, p.total_chunks) and
// the workspace sizes. Returns the host tables for packed sequences (cu_seqlens, chunk_offsets,
// row_order, 3N + 2 + BH entries; empty for one batch), which place_tables puts on the device.
std::vector<std::int64_t> set_chunk_size(Params& p, int L, const Packing* packing);
// Points p's table pointers into `device` (host tables already copied there).
void place_tables(Params& p, const std::int64_t* device);

// The scratch memory of the forward's and the backward's two-pass kernels (after set_chunk_size).
void add_forward_scratch(Scratch& s, Params& p);
void add_backward_scratch(Scratch& s, Params& p);

// The backward runs its rows in passes whose scratch stays within a budget (one row, or one packed
// sequence's heads, at least): each pass is the backward of its rows alone, with the pointers moved
// to them (one batch: rows r0..; packed: the pass's sequences, whose offsets `packing` keeps).
constexpr std::int64_t kBackwardScratch = std::int64_t{1} << 30;
// The budget: kBackwardScratch, or FLASHLSTM_BACKWARD_SCRATCH_MIB where set (read at each call).
std::int64_t backward_scratch_budget();
struct BackwardPass {
  Params params;
  std::optional<Packing> packing;
};
// `input_size`: the bytes of an element of q, k, v (the gates' from p.gates_f32). One batch: the rows
// a pass takes are rounded down to a multiple of `wave_rows` where the budget holds that many (the
// rows whose state-pass blocks fill the GPU once: a pass of fewer rows than that leaves it idle),
// and raised to one wave where it holds fewer: the state passes walk a row's chunks one after
// another, so passes of less than a wave would multiply that walk (there the scratch exceeds the
// budget: one wave of rows, at most).
std::vector<BackwardPass> plan_backward(const Params& p, const Packing* packing, std::size_t input_size,
                                        std::int64_t budget = kBackwardScratch, int wave_rows = 1);

// A launch's packed tables in its scratch memory: sets the chunk size when made, is added to the
// scratch before it is allocated and uploaded after (the copy from pageable memory returns once the
// tables are staged, so the host buffer may go).
class PackedTables {
 public:
  PackedTables(Params& p, int L, const Packing* packing) : host_(set_chunk_size(p, L, packing)) {}
  void add_to(Scratch& s) {
    if (!host_.empty()) s.add(device_, static_cast<std::int64_t>(host_.size()));
  }
  void upload(Params& p, cudaStream_t stream) const {
    if (host_.empty()) return;
    check_cuda(cudaMemcpyAsync(device_, host_.data(), host_.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice,
                               stream),
               "packed sequence tables");
    place_tables(p, device_);
  }

 private:
  std::vector<std::int64_t> host_;
  std::int64_t* device_ = nullptr;
};

// Where the fused forward (fused.cu, 64-token chunks) runs instead of the state and output passes:
// bf16 inputs, DQK <= 256, DQK and DV multiples of 8 (16-byte rows).
constexpr int kFusedChunk = 64;
inline bool fused_forward_applies(DType dtype, std::int64_t DQK, std::int64_t DV) {
  return dtype == DType::bfloat16 && DQK <= 256 && DQK % 8 == 0 && DV % 8 == 0;
}

// Arguments already checked; `packing` null: one batch. run_forward and run_backward (api.cpp) pick
// the kernels: the fused forward (fused.cu) where it applies, else the two-pass kernels of the input
// type (chunkwise_float32.cu, chunkwise_bf16.cu).
void run_forward(Params p, const Packing* packing, DType dtype, cudaStream_t stream);
void run_backward(Params p, const Packing* packing, DType dtype, cudaStream_t stream);
void run_fused_forward(Params p, const Packing* packing, cudaStream_t stream);
void forward_float32(Params p, const Packing* packing, cudaStream_t stream);
void forward_bf16(Params p, const Packing* packing, cudaStream_t stream);
void backward_float32(Params p, const Packing* packing, cudaStream_t stream);
void backward_bf16(Params p, const Packing* packing, cudaStream_t stream);
// step.cu
void run_step(const Inputs& x, const State& state, void* h, std::int64_t seq_stride, std::int64_t token,
              const Options& options, cudaStream_t stream);

}  // namespace flashlstm::cuda::mlstm::detail
