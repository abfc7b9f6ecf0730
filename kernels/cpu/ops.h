// The CPU op set: reference kernels templated on float/double (double for gradient checks).
// Contract (shared with kernels/cuda later): raw pointers, sizes, row-major; forward and backward
// side by side. Activation gradients are OVERWRITTEN unless a flag says accumulate; parameter
// gradients are always ACCUMULATED (+=). Explicitly instantiated for float and double.
#pragma once

#include <cstdint>

namespace dirmoe::cpu {

// ---- embedding --------------------------------------------------------------------------------
// out[N,d] = table[tokens[n], :]; tokens must lie in [0, V) (checked, names the bad id).
template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t d,
                       int64_t V);
// dtable[V,d] += scatter of dout[N,d] by tokens.
template <class T>
void embedding_backward(T* dtable, const int32_t* tokens, const T* dout, int64_t N, int64_t d);

// ---- RMSNorm ----------------------------------------------------------------------------------
// out[N,d] = x * rstd * w, rstd[N] = 1/sqrt(mean(x^2) + eps).
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t d, double eps);
// dx[N,d] (overwrite, or += when accumulate_dx), dw[d] +=.
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd,
                      int64_t N, int64_t d, bool accumulate_dx = false);

// ---- RoPE (Hugging Face "rotate_half" layout: pairs (i, i + hd/2)) ------------------------------
// x[B,S,H,hd] rotated in place; the position of (b, s) is s; theta_i = base^(-2i/hd).
template <class T>
void rope_forward(T* x, int64_t B, int64_t S, int64_t H, int64_t hd, double base);
// dx[B,S,H,hd] in place: turns dL/d(rotated) into dL/d(unrotated) (the inverse rotation).
template <class T>
void rope_backward(T* dx, int64_t B, int64_t S, int64_t H, int64_t hd, double base);

// ---- causal grouped-query attention -----------------------------------------------------------
// q[B,S,Hq,hd], k/v[B,S,Hkv,hd] (Hq % Hkv == 0, query head h uses kv head h / (Hq/Hkv)),
// out[B,S,Hq,hd], lse[B,Hq,S] = logsumexp of the scaled scores (saved for backward).
// scale = 1/sqrt(hd); token s attends to 0..s.
template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t Hq, int64_t Hkv, int64_t hd);
// dq, dk, dv overwritten.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, int64_t B, int64_t S, int64_t Hq, int64_t Hkv,
                        int64_t hd);

// ---- linear (cblas) ---------------------------------------------------------------------------
// y[N,out] = x[N,in] @ W[out,in]^T (y += ... when accumulate).
template <class T>
void linear_forward(T* y, const T* x, const T* W, int64_t N, int64_t in, int64_t out,
                    bool accumulate = false);
// dx[N,in] = dy @ W (or += when accumulate_dx; skipped when dx is null); dW[out,in] += dy^T @ x
// (skipped when dW is null).
template <class T>
void linear_backward(T* dx, T* dW, const T* dy, const T* x, const T* W, int64_t N, int64_t in,
                     int64_t out, bool accumulate_dx = false);

// ---- SwiGLU -----------------------------------------------------------------------------------
// out[n] = silu(gate[n]) * up[n], silu(a) = a * sigmoid(a); n elements.
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
// dgate, dup overwritten.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

// ---- cross-entropy over a padded vocabulary ---------------------------------------------------
// logits[N,Vp]; only the first V columns are real tokens (padding columns are ignored).
// targets[N] in [0, V), or -1 to ignore the row (loss 0). losses[N], lse[N] written.
template <class T>
void cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V, int64_t Vp);
// dlogits[N,Vp] = scale * (softmax(logits[:, :V]) - onehot(target)); padding columns and ignored
// rows get 0. dlogits may alias logits.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                            double scale, int64_t N, int64_t V, int64_t Vp);

// ---- AdamW (PyTorch semantics: decoupled weight decay, bias correction) -----------------------
struct AdamWParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based step number used for bias correction
};
// p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& p);

// ---- elementwise helpers ----------------------------------------------------------------------
template <class T> double sum_squares(const T* x, int64_t n);  // accumulated in double
template <class T> void scale_inplace(T* x, int64_t n, double s);
template <class T> void add_inplace(T* y, const T* x, int64_t n);  // y += x

// Number of BLAS threads for this process (call once per rank: cores / ranks on the node).
void set_blas_threads(int n);

}  // namespace dirmoe::cpu
