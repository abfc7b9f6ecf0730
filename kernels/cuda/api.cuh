// The GPU op set's host contract (DeepEP style): launchers take raw device pointers, sizes and a
// stream, never allocate (scratch comes from the caller, sized by the *_scratch_* functions), and
// check their launch. Semantics follow kernels/cpu/ops.h: row-major, activation grads overwritten
// unless a flag says accumulate, parameter grads (always fp32) accumulated. T is float or bf16.
// NOTE: plain C++ can include this header; the .cu files own every __global__ and <<<>>>.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dirmoe::cuda {

using bf16 = __nv_bfloat16;

// ---- embedding --------------------------------------------------------------------------------
// out[N,d] = table[tokens[n], :]. A token outside [0, V) gives a zero row and, when d_first_bad is
// not null, atomicMin(*d_first_bad, n) (the caller sets *d_first_bad = INT64_MAX beforehand).
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t d,
                       int64_t V, int64_t* d_first_bad, cudaStream_t stream);
// dtable[V,d] += scatter of dout[N,d] by tokens (fp32 atomics: summation order is not fixed);
// rows with a token outside [0, V) are skipped.
template <class T>
void embedding_backward(float* dtable, const int32_t* tokens, const T* dout, int64_t N, int64_t d,
                        int64_t V, cudaStream_t stream);

// ---- RMSNorm ----------------------------------------------------------------------------------
// out[N,d] = x * rstd * w, rstd[N] = 1/sqrt(mean(x^2) + eps); w is the fp32 master weight.
template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const float* w, int64_t N, int64_t d,
                     float eps, cudaStream_t stream);
// dx[N,d] (overwrite, or += when accumulate_dx; may alias dout), dw[d] += (deterministic: fixed
// row chunks write partial sums into scratch, reduced in a fixed order).
size_t rmsnorm_backward_scratch_floats(int64_t N, int64_t d);
template <class T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const float* w,
                      const float* rstd, int64_t N, int64_t d, bool accumulate_dx, float* scratch,
                      cudaStream_t stream);

// ---- RoPE (Hugging Face rotate_half layout: pairs (i, i + hd/2)) ------------------------------
// cos/sin[S, hd/2] with angle s * base^(-2i/hd), computed in double and rounded to float as the
// CPU path does. Built once at init.
void rope_table(float* cos_table, float* sin_table, int64_t S, int64_t hd, double base,
                cudaStream_t stream);
// x[B,S,H,hd] rotated in place; row_stride = elements between consecutive (b, s) rows (0: H*hd),
// so q and k can be rotated inside a fused qkv buffer.
template <class T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int64_t B, int64_t S,
                  int64_t H, int64_t hd, int64_t row_stride, cudaStream_t stream);
// dx in place: the inverse rotation.
template <class T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int64_t B, int64_t S,
                   int64_t H, int64_t hd, int64_t row_stride, cudaStream_t stream);

// ---- causal grouped-query attention (flash style: tiles in shared memory, online softmax) -----
// q[B,S,Hq,hd], k/v[B,S,Hkv,hd], out[B,S,Hq,hd], lse[B,Hq,S] (natural log, fp32).
// Supported head dims: 32, 64, 96, 128. Pointers 16-byte aligned.
template <class T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t Hq, int64_t Hkv, int64_t hd, cudaStream_t stream);
// dq, dk, dv overwritten; deterministic (no atomics: one pass per key tile for dk/dv, one per
// query tile for dq). scratch: attention_backward_scratch_floats(B, S, Hq) floats.
size_t attention_backward_scratch_floats(int64_t B, int64_t S, int64_t Hq);
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, int64_t B, int64_t S, int64_t Hq,
                        int64_t Hkv, int64_t hd, float* scratch, cudaStream_t stream);

// ---- linear (cuBLAS, fp32 accumulation; fp32 inputs use plain fp32 math, no TF32) --------------
// The caller owns the handle and binds it at init: cublasSetStream, then cublasSetWorkspace, so
// that cuBLAS never allocates in a step. A launcher given another stream rebinds the handle, which
// makes cuBLAS fall back to its own workspace pool (use one handle per stream).
// y[N,out] = x[N,in] @ W[out,in]^T (y += ... when accumulate).
template <class T>
void linear_forward(cublasHandle_t handle, T* y, const T* x, const T* W, int64_t N, int64_t in,
                    int64_t out, bool accumulate, cudaStream_t stream);
// dx[N,in] = dy @ W (+= when accumulate_dx; skipped when dx is null); dW[out,in] += dy^T @ x in
// fp32 (skipped when dW is null).
template <class T>
void linear_backward(cublasHandle_t handle, T* dx, float* dW, const T* dy, const T* x, const T* W,
                     int64_t N, int64_t in, int64_t out, bool accumulate_dx, cudaStream_t stream);

// ---- SwiGLU -----------------------------------------------------------------------------------
// out[n] = silu(gate[n]) * up[n].
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream);
// dgate, dup overwritten (may alias gate, up).
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream);

// ---- cross-entropy over a padded vocabulary ---------------------------------------------------
// logits[N,Vp], first V columns real; targets[N] in [0, V) or -1 (ignored: loss 0, zero grad row).
// A target outside both gives loss 0, a zero grad row and atomicMin(*d_first_bad, n) when
// d_first_bad is not null. losses[N], lse[N] in fp32.
template <class T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                           int64_t N, int64_t V, int64_t Vp, int64_t* d_first_bad,
                           cudaStream_t stream);
// dlogits[N,Vp] = scale * (softmax(logits[:, :V]) - onehot(target)); padding columns get 0.
// dlogits may alias logits.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                            float scale, int64_t N, int64_t V, int64_t Vp, cudaStream_t stream);
// Both in one pass over the logits (the LM-head path): dlogits may alias logits.
template <class T>
void cross_entropy_fused(float* losses, float* lse, T* dlogits, const T* logits,
                         const int32_t* targets, float scale, int64_t N, int64_t V, int64_t Vp,
                         int64_t* d_first_bad, cudaStream_t stream);

// ---- AdamW (PyTorch semantics, fp32 master weights and moments) --------------------------------
struct AdamWParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based step number used for bias correction
};
// g = grad * (*d_grad_scale) (1 when null, e.g. the clip coefficient); then as cpu::adamw_update.
// When param_bf16 is not null it receives the updated weights rounded to bf16 (the matmul copy).
void adamw_update(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                  const AdamWParams& p, const float* d_grad_scale, cudaStream_t stream);

// ---- multi-tensor AdamW and gradient norm -------------------------------------------------------
// Every tensor of a list in one launch. A tensor's device buffers must stay where they are while
// a chunk list built from it is used (the parameters' do: they are allocated once).
struct MultiTensor {
  float* param = nullptr;       // [n] fp32 master weights
  bf16* param_bf16 = nullptr;   // [n] matmul copy refreshed by the update, or null
  const float* grad = nullptr;  // [n]
  float* m = nullptr;           // [n] AdamW moments
  float* v = nullptr;           // [n]
  int64_t n = 0;
  bool decay = true;  // weight decay applies to this tensor
  int group = 0;      // gradient-norm group (e.g. 0: replicated, 1: experts)
};
struct MultiTensorChunk {
  int32_t tensor;  // index into the tensor list
  int32_t group;
  int64_t begin, end;  // element range [begin, end) of that tensor; begin % 4 == 0
};
// Host: each tensor cut into chunks of at most max_chunk elements (a multiple of 4), group-major
// (every chunk of group 0, then group 1, ...), tensor order within a group; *group_begin gets
// num_groups + 1 offsets into the result.
std::vector<MultiTensorChunk> multi_tensor_chunks(const std::vector<MultiTensor>& tensors,
                                                  int num_groups, int64_t max_chunk,
                                                  std::vector<int64_t>* group_begin);
constexpr int64_t kMultiTensorChunk = int64_t(1) << 16;
size_t multi_tensor_scratch_doubles(int64_t num_chunks);
// d_sumsq[g] = sum of grad^2 over the tensors of group g (double; deterministic: per-chunk
// partials in scratch, reduced in chunk order). Two launches whatever the number of tensors.
void multi_tensor_sum_squares(double* d_sumsq, const MultiTensor* d_tensors,
                              const MultiTensorChunk* d_chunks, int64_t num_chunks,
                              const int64_t* d_group_begin, int num_groups, double* scratch,
                              cudaStream_t stream);
// adamw_update on every tensor (weight decay p.weight_decay where decay is set, 0 elsewhere), the
// gradient scaled by *d_grad_scale (1 when null). One launch.
void multi_tensor_adamw(const MultiTensor* d_tensors, const MultiTensorChunk* d_chunks,
                        int64_t num_chunks, const AdamWParams& p, const float* d_grad_scale,
                        cudaStream_t stream);

// ---- reductions and elementwise helpers -------------------------------------------------------
// *d_out = (accumulate ? *d_out : 0) + sum x^2, accumulated in double, deterministic (fixed
// partials in scratch, reduced in a fixed order). Call once per tensor with accumulate = true to
// get the global gradient norm^2 without leaving the device.
size_t sum_squares_scratch_doubles(int64_t n);
template <class T>
void sum_squares(double* d_out, const T* x, int64_t n, bool accumulate, double* scratch,
                 cudaStream_t stream);
// *d_scale = (max_norm > 0 && sqrt(*d_sumsq) > max_norm) ? max_norm / (sqrt(*d_sumsq) + 1e-6) : 1.
void clip_coefficient(float* d_scale, const double* d_sumsq, double max_norm, cudaStream_t stream);
// x *= s (host scalar), or x *= *d_s (device scalar, e.g. the clip coefficient).
template <class T>
void scale_inplace(T* x, int64_t n, float s, cudaStream_t stream);
template <class T>
void scale_inplace_device(T* x, int64_t n, const float* d_s, cudaStream_t stream);
template <class T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream);  // y += x
// out[n] = in[n] converted (float <-> bf16, round to nearest even).
template <class Src, class Dst>
void convert(Dst* out, const Src* in, int64_t n, cudaStream_t stream);

// ---- MoE permutation (the GPU side of experts/dispatcher) --------------------------------------
// Groups g = dst_rank * max_local + local_index(expert) (the Dispatcher's count layout).
// owner[E], local_index[E]: the placement on device.
// moe_plan: experts[nnz] (the routing's CSR experts, token order) ->
//   counts[ep * max_local]  rows kept per (dst rank, local expert)
//   slot[nnz]               row of each assignment in the send buffer, -1 when dropped; the send
//                           buffer is grouped by (dst rank, local expert), token order within one
// capacity < 0 keeps everything, else the first `capacity` assignments of each expert. An expert id
// outside [0, E) is dropped and reported through d_first_bad (atomicMin of the assignment index).
size_t moe_plan_scratch_bytes(int64_t nnz, int ep, int max_local);
void moe_plan(int64_t* counts, int64_t* slot, const int32_t* experts, int64_t nnz,
              const int32_t* owner, const int32_t* local_index, int num_experts, int ep,
              int max_local, int64_t capacity, int64_t* d_first_bad, void* scratch,
              size_t scratch_bytes, cudaStream_t stream);
// send[slot[a], :] = x[token(a), :] for every kept assignment a (offsets[N+1] is the CSR).
template <class T>
void moe_permute(T* send, const T* x, const int64_t* offsets, const int64_t* slot, int64_t N,
                 int64_t width, cudaStream_t stream);
// dx[t] = (accumulate ? dx[t] : 0) + sum over kept assignments a of t of d_send[slot[a]].
template <class T>
void moe_permute_backward(T* dx, const T* d_send, const int64_t* offsets, const int64_t* slot,
                          int64_t N, int64_t width, bool accumulate, cudaStream_t stream);
// y[t] = (accumulate ? y[t] : 0) + sum_a weights[a] * back[slot[a]] (fp32, assignment order).
template <class T>
void moe_unpermute_combine(T* y, const T* back, const float* weights, const int64_t* offsets,
                           const int64_t* slot, int64_t N, int64_t width, bool accumulate,
                           cudaStream_t stream);
// d_back[slot[a]] = weights[a] * dy[t]; d_weights[a] = <dy[t], back[slot[a]]> (0 when dropped).
template <class T>
void moe_combine_backward(T* d_back, float* d_weights, const T* dy, const T* back,
                          const float* weights, const int64_t* offsets, const int64_t* slot,
                          int64_t N, int64_t width, cudaStream_t stream);
// Received rows between the wire layout (grouped by (src rank, local expert)) and the expert
// layout (grouped by (local expert, src rank)), as Dispatcher::regroup; recv_counts[ep * max_local]
// on device. wire_to_expert = false goes back.
template <class T>
void moe_regroup(T* out, const T* in, const int64_t* recv_counts, int ep, int max_local,
                 int num_local, int64_t width, bool wire_to_expert, cudaStream_t stream);

// ---- routers (the per-token math of kernels/routing, in double; one thread per token) ----------
// Logits and routing weights are fp32 whatever the model dtype. A token with a non-finite logit
// (or DirMoE concentration pre-activation) is reported through *d_bad = min over such tokens of
// (token << 16 | expert) (atomicMin; the caller sets every byte of *d_bad to 0x7F beforehand, i.e.
// kRouterNoBad, and reads it at the step's synchronisation) and routed to its first experts with
// weight 0, so the CSR stays valid.
constexpr int kRouterMaxExperts = 64;  // bound of the kernels' per-token scratch
constexpr int kRouterBadShift = 16;    // *d_bad = token << kRouterBadShift | expert
constexpr int64_t kRouterNoBad = 0x7F7F7F7F7F7F7F7FLL;
constexpr int kRouterBadConcentration = 0x8000;  // or-ed into the expert: a DirMoE concentration

// out[c] = sum over t of rows[t, c], rows [N, C]: one block per column, a fixed summation order
// (deterministic), in double.
void router_column_sums(double* out, const double* rows, int64_t N, int C, cudaStream_t stream);

// topk. Per-token statistic rows [N, topk_stat_columns(E)]: p (E), chosen (E, 0/1), lse^2,
// entropy, max p, undispatched mass.
constexpr int topk_stat_columns(int E) { return 2 * E + 4; }
// Statistics of topk_route_finalize: aux loss, z-loss (both weighted), mean undispatched mass,
// mean entropy, mean top-1 probability.
constexpr int kTopKStats = 5;
// logits[N,E] -> offsets[N+1] (t*k), experts/weights[N*k] (most probable first, ties to the lower
// index), probs[N,E], lse[N], stat_rows.
void topk_route_forward(int64_t* offsets, int32_t* experts, float* weights, float* probs,
                        double* lse, double* stat_rows, const float* logits, int64_t N, int E,
                        int k, bool renormalize, int64_t* d_bad, cudaStream_t stream);
// From the column sums of the stat rows: fraction[E] (share of the N*k assignments) and
// stats[kTopKStats] (coefficients as in TopKRouter), on the device.
void topk_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                         int k, double aux_coef, double z_coef, cudaStream_t stream);
// dlogits[N,E] (overwritten) from dweights[N*k]; aux_scale = loss_scale * aux_coef * E / N,
// z_scale = loss_scale * z_coef * 2 / N.
void topk_route_backward(float* dlogits, const float* probs, const double* lse,
                         const int64_t* offsets, const int32_t* experts, const float* dweights,
                         const double* fraction, int64_t N, int E, bool renormalize,
                         double aux_scale, double z_scale, cudaStream_t stream);

// Variable-length routing: counts[N] (assignments per token) -> offsets[N+1] (exclusive scan,
// one block, deterministic); then padded experts/weights [N, stride] -> the CSR arrays.
void router_offsets(int64_t* offsets, const int32_t* counts, int64_t N, cudaStream_t stream);
void router_compact(int32_t* experts, float* weights, const int32_t* padded_experts,
                    const float* padded_weights, const int64_t* offsets, int64_t N, int stride,
                    cudaStream_t stream);

// dirmoe. Saved per-token rows: kDirMoERows arrays [N,E] of doubles in the order of
// routing::DirMoERow (z, a_hi, a_lo, alpha, dlogg, g_s, r, dkl_q, dkl_p, soft), then sum_z[N] and
// kept[N]. Stat rows [N, dirmoe_stat_columns(E)]: softmax(l) (E), dispatched (E, 0/1),
// undispatched, kl, sparsity, sum_gates, entropy, near_binary, open, no_open, recon.
constexpr int kDirMoERows = 10;
constexpr int dirmoe_stat_columns(int E) { return 2 * E + 9; }
// Statistics of dirmoe_route_finalize: aux loss (weighted), router loss (kl + recon + sparsity +
// aux, weighted), mean active experts, undispatched, kl, recon, sparsity (weighted), sum_gates,
// open_gates, no_open_gate, gate_entropy, near_binary, dead_experts (as DirMoERouter's scalars).
constexpr int kDirMoEStats = 13;
// Per-token scalars of the configuration (routing::DirMoETokenParams<double> as raw values, so
// that this header stays free of kernels/routing).
struct DirMoEKernelParams {
  int E = 0, k = 1, max_active = 1;
  double r_min = 0, tau = 1, lambda_q = 1, alpha_floor = 0;
  double prior_a_hi = 1, prior_a_lo = 1, prior_lambda = 1;
  bool noisy = true, hard = false, inverse = false, expected_count = false, renormalize = false;
  // Philox keys (routing::NoiseKey): seed (salted), step, layer << 4 | purpose, global token 0.
  uint64_t gate_seed = 0, gamma_seed = 0;
  uint32_t step = 0, gate_layer_purpose = 0, gamma_layer_purpose = 0;
  int64_t token0 = 0;
};
// u[N,3E] head outputs -> saved rows, r_t[N,E] (r in fp32 for the decoder), padded
// experts/weights [N, max_active], counts[N], stat_rows (recon column left to
// dirmoe_recon_forward).
void dirmoe_route_forward(double* saved, float* r_t, int32_t* padded_experts, float* padded_weights,
                          int32_t* counts, double* stat_rows, const float* u, int64_t N,
                          const DirMoEKernelParams& p, int64_t* d_bad, cudaStream_t stream);
// err[N,d] (holding r_t V^T) += b - h; the recon column of stat_rows = |err_t|^2 / d.
void dirmoe_recon_forward(float* err, double* stat_rows, const float* bias, const float* h,
                          int64_t N, int64_t d, int E, cudaStream_t stream);
// From the column sums: fraction[E] (share of the dispatched pairs) and stats[kDirMoEStats].
void dirmoe_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                           double aux_coef, double beta, double recon_w, double lambda_s,
                           cudaStream_t stream);
// Backward of the reconstruction term: err *= scale (in place), dbias[d] += sum_t err.
void dirmoe_recon_backward(float* err, float* dbias, double scale, int64_t N, int64_t d,
                           cudaStream_t stream);
// du[N,3E] (overwritten) from dr_t[N,E] (dL/dr of the reconstruction) and the routing's
// dweights; scales as routing::DirMoEBackwardScales.
void dirmoe_route_backward(float* du, const float* dr_t, const double* saved, const float* u,
                           const int64_t* offsets, const int32_t* experts, const float* dweights,
                           const double* fraction, int64_t N, const DirMoEKernelParams& p,
                           double ks, double ss, double aux_scale, double dprior,
                           cudaStream_t stream);

// probmoe. Stat rows [N, probmoe_stat_columns(E)]: softmax (E), chosen (E, 0/1), lse^2, entropy of
// sigmoid(l), near_binary, expected k, undispatched mass.
constexpr int kProbMoEMaxK = 8;  // largest subset size the kernels' per-token tables hold
constexpr int probmoe_stat_columns(int E) { return 2 * E + 5; }
// Statistics of probmoe_route_finalize: aux loss, z-loss (weighted), mean active experts,
// expected_k, undispatched_mass, gate_entropy, near_binary, dead_experts.
constexpr int kProbMoEStats = 8;
struct ProbMoEKernelParams {
  int E = 0, k_lo = 1, k_hi = 1;  // subset sizes [k_lo, k_hi] (exact: k_lo = k_hi = k)
  bool dynamic = false, training = true;
  // Philox keys (routing::NoiseKey) of the subset and the size draws.
  uint64_t subset_seed = 0, size_seed = 0;
  uint32_t step = 0, subset_layer_purpose = 0, size_layer_purpose = 0;
  int64_t token0 = 0;
};
// logits[N,E] -> softmax s[N,E], marginals mu[N,E], lse[N], padded experts/weights [N, k_hi]
// (by decreasing weight, ties to the lower index), counts[N], stat_rows.
void probmoe_route_forward(double* s, double* mu, double* lse, int32_t* padded_experts,
                           float* padded_weights, int32_t* counts, double* stat_rows,
                           const float* logits, int64_t N, const ProbMoEKernelParams& p,
                           int64_t* d_bad, cudaStream_t stream);
void probmoe_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                            double aux_coef, double z_coef, cudaStream_t stream);
// dlogits[N,E] (overwritten); aux_scale = loss_scale * aux_coef * E / N, z_scale = loss_scale *
// z_coef * 2 / N.
void probmoe_route_backward(float* dlogits, const float* logits, const double* s, const double* lse,
                            const int64_t* offsets, const int32_t* experts, const float* dweights,
                            const double* fraction, int64_t N, const ProbMoEKernelParams& p,
                            double aux_scale, double z_scale, cudaStream_t stream);

// remoe (ReLU routing). Stat rows [N, remoe_stat_columns(E)]: gate R (E, 0 where closed), active
// (E, 0/1), no expert (0/1).
constexpr int remoe_stat_columns(int E) { return 2 * E + 1; }
// Statistics of remoe_route_finalize: L1 term (lambda-weighted), L1 load (lambda = 1), mean
// active experts, sparsity, no_expert, gate_mean (as ReMoERouter's scalars).
constexpr int kReMoEStats = 6;
// logits[N,E] -> padded experts/weights [N, E] (the open gates in increasing expert id, weight
// R_e), counts[N] (0..E), stat_rows. A token with a non-finite logit gets no expert.
void remoe_route_forward(int32_t* padded_experts, float* padded_weights, int32_t* counts,
                         double* stat_rows, const float* logits, int64_t N, int E, int64_t* d_bad,
                         cudaStream_t stream);
// From the column sums: coef[E] (dL1/dR_te, n_e held constant) and stats[kReMoEStats].
void remoe_route_finalize(double* coef, double* stats, const double* sums, int64_t N, int E, int k,
                          double lambda, cudaStream_t stream);
// dlogits[N,E] (overwritten) = [l > 0] (dweights scattered by the CSR + loss_scale * coef).
void remoe_route_backward(float* dlogits, const float* logits, const int64_t* offsets,
                          const int32_t* experts, const float* dweights, const double* coef,
                          int64_t N, int E, double loss_scale, cudaStream_t stream);

}  // namespace dirmoe::cuda
