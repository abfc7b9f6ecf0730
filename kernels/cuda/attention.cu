// Causal grouped-query attention, flash style: 64x64 tiles in shared memory (fp32), online softmax,
// logsumexp saved. Backward recomputes P from it in two deterministic passes without atomics
// (dK/dV per key tile over the query heads of its group, dQ per query tile).
// Dispatch: bf16 with head dim 64 or 128 (16-byte aligned pointers, any S) runs the tensor-core
// kernels of attention_tc.cu; everything else (fp32, head dims 32/96) runs the fp32 SIMT kernels
// here (4x4 register micro-tiles, 256 threads), the general path.
#include <cmath>
#include <type_traits>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

using detail::load_float;

constexpr int kTile = 64;  // query rows and key columns per tile
constexpr int kThreads = 256;
constexpr int kPLd = kTile + 1;  // row stride of the (64, 64) score tiles in shared memory
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory row stride of a (64, HD) tile: odd, so column walks across rows hit distinct banks.
template <int HD>
__host__ __device__ constexpr int tile_ld() {
  return HD + 1;
}

// tile[64][HD+1] = rows [row0, row0 + 64) of a (S, HD) matrix with row stride ld (elements), as
// float; rows at or past S are zero.
template <class T, int HD>
__device__ __forceinline__ void load_tile(float* tile, const T* base, int64_t ld, int row0, int S) {
  constexpr int kVec = detail::vec_of<T>();
  constexpr int kPerRow = HD / kVec;
  constexpr int LD = tile_ld<HD>();
  for (int idx = threadIdx.x; idx < kTile * kPerRow; idx += kThreads) {
    const int r = idx / kPerRow, c = (idx % kPerRow) * kVec;
    const int row = row0 + r;
    float v[kVec];
    if (row < S) {
      load_float<T, kVec>(v, base + int64_t(row) * ld + c);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) tile[r * LD + c + e] = v[e];
  }
}

// Max / sum over the 16 lanes that share a row (lanes 0-15 or 16-31 of a warp).
__device__ __forceinline__ float row16_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row16_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[i][j] += sum_d A[ty*4+i][d] * B[tx+16j][d] over two (64, HD) tiles.
template <int HD>
__device__ __forceinline__ void tile_abt(float (&acc)[4][4], const float* A, const float* B, int ty,
                                         int tx) {
  constexpr int LD = tile_ld<HD>();
#pragma unroll 8
  for (int d = 0; d < HD; ++d) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = A[(ty * 4 + i) * LD + d];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = B[(tx + 16 * j) * LD + d];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// Thread (ty, tx) of 256: rows ty*4 + i of a 64-row tile, columns tx + 16*j.
template <class T, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, int S, int Hq,
                             int Hkv, float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  constexpr int kCols = HD / 16;
  extern __shared__ float smem[];
  float* sQ = smem;             // (64, HD+1)
  float* sK = sQ + kTile * LD;  // (64, HD+1)
  float* sV = sK + kTile * LD;  // (64, HD+1)
  float* sP = sV + kTile * LD;  // (64, 65) probabilities of the current tile

  const int bh = blockIdx.x, qt = blockIdx.y;
  const int b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
  const int q0 = qt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const T* qb = q + int64_t(b) * S * ldq + int64_t(h) * HD;
  const T* kb = k + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const T* vb = v + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  load_tile<T, HD>(sQ, qb, ldq, q0, S);
  float m[4], l[4], o[4][kCols];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[i][c] = 0.f;
  }

  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();
    load_tile<T, HD>(sK, kb, ldk, k0, S);
    load_tile<T, HD>(sV, vb, ldk, k0, S);
    __syncthreads();
    float s[4][4] = {};
    tile_abt<HD>(s, sQ, sK, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = q0 + ty * 4 + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int col = k0 + tx + 16 * j;
        s[i][j] = (col <= row && col < S) ? s[i][j] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = row16_max(mx);
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[i] - m_use);
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = exp2f(s[i][j] - m_use);
        rs += s[i][j];
      }
      rs = row16_sum(rs);
      l[i] = l[i] * alpha + rs;
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[i][c] *= alpha;
#pragma unroll
      for (int j = 0; j < 4; ++j) sP[(ty * 4 + i) * kPLd + tx + 16 * j] = s[i][j];
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kTile; ++c) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = sP[(ty * 4 + i) * kPLd + c];
#pragma unroll
      for (int cc = 0; cc < kCols; ++cc) {
        const float vv = sV[c * LD + tx + 16 * cc];
#pragma unroll
        for (int i = 0; i < 4; ++i) o[i][cc] = fmaf(p[i], vv, o[i][cc]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = q0 + ty * 4 + i;
    if (row >= S) continue;
    const float inv = 1.0f / l[i];
    T* orow = out + (int64_t(b) * S + row) * ldq + int64_t(h) * HD;
#pragma unroll
    for (int cc = 0; cc < kCols; ++cc) orow[tx + 16 * cc] = detail::from_float<T>(o[i][cc] * inv);
    if (tx == 0) lse[int64_t(bh) * S + row] = (m[i] + log2f(l[i])) * kLn2;
  }
}

// D[b, h, s] = <dout[b, s, h, :], out[b, s, h, :]>; one warp per (b, s, h) row.
template <class T>
__global__ void attention_dot_kernel(float* D, const T* dout, const T* out, int64_t rows, int S,
                                     int Hq, int hd) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += stride) {
    const T* g = dout + r * hd;
    const T* o = out + r * hd;
    float acc = 0.f;
    for (int j = lane; j < hd; j += 32) acc += detail::to_float(g[j]) * detail::to_float(o[j]);
    acc = detail::warp_sum(acc);
    if (lane == 0) {
      const int64_t h = r % Hq, bs = r / Hq, s = bs % S, b = bs / S;
      D[(b * Hq + h) * S + s] = acc;
    }
  }
}

// Scores and dP of one (query tile, key tile) pair -> P and dS (scaled), masked.
template <int HD>
__device__ __forceinline__ void probs_and_dscores(float (&p)[4][4], float (&ds)[4][4],
                                                  const float* sQ, const float* sK,
                                                  const float* sdO, const float* sV,
                                                  const float* sL, const float* sD, int q0, int k0,
                                                  int S, float scale, float scale_log2, int ty,
                                                  int tx) {
  float s[4][4] = {}, dp[4][4] = {};
  tile_abt<HD>(s, sQ, sK, ty, tx);
  tile_abt<HD>(dp, sdO, sV, ty, tx);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i, row = q0 + r;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = k0 + tx + 16 * j;
      const bool valid = row < S && col <= row && col < S;
      p[i][j] = valid ? exp2f(s[i][j] * scale_log2 - sL[r]) : 0.f;
      ds[i][j] = p[i][j] * (dp[i][j] - sD[r]) * scale;
    }
  }
}

// Rows [row0, row0 + 64) of the per-row vectors lse (as log2) and D into shared memory.
__device__ __forceinline__ void load_row_stats(float* sL, float* sD, const float* lse_h,
                                               const float* D_h, int row0, int S) {
  if (threadIdx.x < kTile) {
    const int row = row0 + threadIdx.x;
    sL[threadIdx.x] = row < S ? lse_h[row] * kLog2e : 0.f;
    sD[threadIdx.x] = row < S ? D_h[row] : 0.f;
  }
}

// One block per (key tile, b, kv head): dK, dV accumulated over every query head of the group.
template <class T, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,
                          const float* lse, const float* D, int S, int Hq, int Hkv, float scale,
                          float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  constexpr int kCols = HD / 16;
  extern __shared__ float smem[];
  float* sK = smem;                // (64, HD+1)
  float* sV = sK + kTile * LD;     // (64, HD+1)
  float* sQ = sV + kTile * LD;     // (64, HD+1)
  float* sdO = sQ + kTile * LD;    // (64, HD+1)
  float* sP = sdO + kTile * LD;    // (64, 65) [query][key]
  float* sdS = sP + kTile * kPLd;  // (64, 65) [query][key]
  float* sL = sdS + kTile * kPLd;  // (64) lse * log2(e)
  float* sD = sL + kTile;          // (64)

  const int bk = blockIdx.x, kt = blockIdx.y;
  const int b = bk / Hkv, hk = bk % Hkv, group = Hq / Hkv;
  const int k0 = kt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int num_qt = (S + kTile - 1) / kTile;

  load_tile<T, HD>(sK, k + int64_t(b) * S * ldk + int64_t(hk) * HD, ldk, k0, S);
  load_tile<T, HD>(sV, v + int64_t(b) * S * ldk + int64_t(hk) * HD, ldk, k0, S);
  float dk_acc[4][kCols], dv_acc[4][kCols];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int c = 0; c < kCols; ++c) dk_acc[i][c] = dv_acc[i][c] = 0.f;

  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const T* qb = q + int64_t(b) * S * ldq + int64_t(h) * HD;
    const T* dob = dout + int64_t(b) * S * ldq + int64_t(h) * HD;
    const float* lse_h = lse + (int64_t(b) * Hq + h) * S;
    const float* D_h = D + (int64_t(b) * Hq + h) * S;
    for (int qt = kt; qt < num_qt; ++qt) {
      const int q0 = qt * kTile;
      __syncthreads();
      load_tile<T, HD>(sQ, qb, ldq, q0, S);
      load_tile<T, HD>(sdO, dob, ldq, q0, S);
      load_row_stats(sL, sD, lse_h, D_h, q0, S);
      __syncthreads();
      float p[4][4], ds[4][4];
      probs_and_dscores<HD>(p, ds, sQ, sK, sdO, sV, sL, sD, q0, k0, S, scale, scale_log2, ty, tx);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          sP[(ty * 4 + i) * kPLd + tx + 16 * j] = p[i][j];
          sdS[(ty * 4 + i) * kPLd + tx + 16 * j] = ds[i][j];
        }
      __syncthreads();
      // Thread (ty, tx) now owns key rows ty*4 + i and head-dim columns tx + 16*cc.
#pragma unroll 4
      for (int qq = 0; qq < kTile; ++qq) {
        float pk[4], dsk[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          pk[i] = sP[qq * kPLd + ty * 4 + i];
          dsk[i] = sdS[qq * kPLd + ty * 4 + i];
        }
#pragma unroll
        for (int cc = 0; cc < kCols; ++cc) {
          const float go = sdO[qq * LD + tx + 16 * cc];
          const float qv = sQ[qq * LD + tx + 16 * cc];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            dv_acc[i][cc] = fmaf(pk[i], go, dv_acc[i][cc]);
            dk_acc[i][cc] = fmaf(dsk[i], qv, dk_acc[i][cc]);
          }
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = k0 + ty * 4 + i;
    if (row >= S) continue;
    const int64_t off = (int64_t(b) * S + row) * ldk + int64_t(hk) * HD;
#pragma unroll
    for (int cc = 0; cc < kCols; ++cc) {
      dk[off + tx + 16 * cc] = detail::from_float<T>(dk_acc[i][cc]);
      dv[off + tx + 16 * cc] = detail::from_float<T>(dv_acc[i][cc]);
    }
  }
}

// One block per (query tile, b, query head): dQ = dS K over the key tiles up to the diagonal.
template <class T, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                        const float* D, int S, int Hq, int Hkv, float scale, float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  constexpr int kCols = HD / 16;
  extern __shared__ float smem[];
  float* sQ = smem;                // (64, HD+1)
  float* sdO = sQ + kTile * LD;    // (64, HD+1)
  float* sK = sdO + kTile * LD;    // (64, HD+1)
  float* sV = sK + kTile * LD;     // (64, HD+1)
  float* sdS = sV + kTile * LD;    // (64, 65) [query][key]
  float* sL = sdS + kTile * kPLd;  // (64)
  float* sD = sL + kTile;          // (64)

  const int bh = blockIdx.x, qt = blockIdx.y;
  const int b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
  const int q0 = qt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* kb = k + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const T* vb = v + int64_t(b) * S * ldk + int64_t(hk) * HD;

  load_tile<T, HD>(sQ, q + int64_t(b) * S * ldq + int64_t(h) * HD, ldq, q0, S);
  load_tile<T, HD>(sdO, dout + int64_t(b) * S * ldq + int64_t(h) * HD, ldq, q0, S);
  load_row_stats(sL, sD, lse + int64_t(bh) * S, D + int64_t(bh) * S, q0, S);
  float dq_acc[4][kCols];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int c = 0; c < kCols; ++c) dq_acc[i][c] = 0.f;

  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();
    load_tile<T, HD>(sK, kb, ldk, k0, S);
    load_tile<T, HD>(sV, vb, ldk, k0, S);
    __syncthreads();
    float p[4][4], ds[4][4];
    probs_and_dscores<HD>(p, ds, sQ, sK, sdO, sV, sL, sD, q0, k0, S, scale, scale_log2, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sdS[(ty * 4 + i) * kPLd + tx + 16 * j] = ds[i][j];
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kTile; ++kk) {
      float d4[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) d4[i] = sdS[(ty * 4 + i) * kPLd + kk];
#pragma unroll
      for (int cc = 0; cc < kCols; ++cc) {
        const float kv = sK[kk * LD + tx + 16 * cc];
#pragma unroll
        for (int i = 0; i < 4; ++i) dq_acc[i][cc] = fmaf(d4[i], kv, dq_acc[i][cc]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = q0 + ty * 4 + i;
    if (row >= S) continue;
    T* drow = dq + (int64_t(b) * S + row) * ldq + int64_t(h) * HD;
#pragma unroll
    for (int cc = 0; cc < kCols; ++cc) drow[tx + 16 * cc] = detail::from_float<T>(dq_acc[i][cc]);
  }
}

template <int HD>
constexpr size_t forward_smem() {
  return sizeof(float) * (3 * kTile * tile_ld<HD>() + kTile * kPLd);
}
template <int HD>
constexpr size_t dkdv_smem() {
  return sizeof(float) * (4 * kTile * tile_ld<HD>() + 2 * kTile * kPLd + 2 * kTile);
}
template <int HD>
constexpr size_t dq_smem() {
  return sizeof(float) * (4 * kTile * tile_ld<HD>() + kTile * kPLd + 2 * kTile);
}

// Raises a kernel's dynamic shared-memory limit once per process.
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, bool& done) {
  if (done) return;
  DIRMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
  done = true;
}

void check_shape(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd) {
  DIRMOE_CHECK(B >= 0 && S >= 0, "bad attention shape B=", B, " S=", S);
  DIRMOE_CHECK(Hq > 0 && Hkv > 0 && Hq % Hkv == 0, "query heads (", Hq,
               ") must be a positive multiple of kv heads (", Hkv, ")");
  DIRMOE_CHECK(S < (int64_t(1) << 31) && B * Hq < (int64_t(1) << 31),
               "attention shape too large: B=", B, " S=", S, " Hq=", Hq);
}

template <class T, int HD>
void forward_launch(T* out, float* lse, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                    int64_t Hq, int64_t Hkv, cudaStream_t stream) {
  static bool smem_set = false;
  allow_smem(attention_forward_kernel<T, HD>, forward_smem<HD>(), smem_set);
  const dim3 grid(static_cast<unsigned>(B * Hq), static_cast<unsigned>((S + kTile - 1) / kTile));
  const float scale_log2 = static_cast<float>(kLog2e / std::sqrt(double(HD)));
  attention_forward_kernel<T, HD><<<grid, kThreads, forward_smem<HD>(), stream>>>(
      out, lse, q, k, v, static_cast<int>(S), static_cast<int>(Hq), static_cast<int>(Hkv),
      scale_log2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T, int HD>
void backward_launch(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                     const float* lse, const float* D, int64_t B, int64_t S, int64_t Hq,
                     int64_t Hkv, cudaStream_t stream) {
  static bool dkdv_set = false, dq_set = false;
  allow_smem(attention_dkdv_kernel<T, HD>, dkdv_smem<HD>(), dkdv_set);
  allow_smem(attention_dq_kernel<T, HD>, dq_smem<HD>(), dq_set);
  const double scale = 1.0 / std::sqrt(double(HD));
  const float sc = static_cast<float>(scale), sc2 = static_cast<float>(scale * kLog2e);
  const unsigned tiles = static_cast<unsigned>((S + kTile - 1) / kTile);
  attention_dkdv_kernel<T, HD>
      <<<dim3(static_cast<unsigned>(B * Hkv), tiles), kThreads, dkdv_smem<HD>(), stream>>>(
          dk, dv, q, k, v, dout, lse, D, static_cast<int>(S), static_cast<int>(Hq),
          static_cast<int>(Hkv), sc, sc2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  attention_dq_kernel<T, HD>
      <<<dim3(static_cast<unsigned>(B * Hq), tiles), kThreads, dq_smem<HD>(), stream>>>(
          dq, q, k, v, dout, lse, D, static_cast<int>(S), static_cast<int>(Hq),
          static_cast<int>(Hkv), sc, sc2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

[[noreturn]] void unsupported_head_dim(int64_t hd) {
  DIRMOE_FAIL("attention: head dim ", hd, " is not supported (supported: 32, 64, 96, 128)");
}

}  // namespace

template <class T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t Hq, int64_t Hkv, int64_t hd, cudaStream_t stream) {
  check_shape(B, S, Hq, Hkv, hd);
  if (B == 0 || S == 0) return;
  DIRMOE_CHECK(detail::aligned16(q) && detail::aligned16(k) && detail::aligned16(v),
               "attention_forward: q, k and v must be 16-byte aligned");
  detail::NvtxRange range("attention_forward");
  if constexpr (std::is_same_v<T, bf16>) {
    const void* ptrs[] = {out, q, k, v};
    if (detail::attention_tc_covers(hd, ptrs, 4))
      return detail::attention_tc_forward(out, lse, q, k, v, B, S, Hq, Hkv, hd, stream);
  }
  switch (hd) {
    case 32:
      return forward_launch<T, 32>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
    case 64:
      return forward_launch<T, 64>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
    case 96:
      return forward_launch<T, 96>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
    case 128:
      return forward_launch<T, 128>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
    default:
      unsupported_head_dim(hd);
  }
}

size_t attention_backward_scratch_floats(int64_t B, int64_t S, int64_t Hq) {
  return static_cast<size_t>(B * S * Hq);
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, int64_t B, int64_t S, int64_t Hq,
                        int64_t Hkv, int64_t hd, float* scratch, cudaStream_t stream) {
  check_shape(B, S, Hq, Hkv, hd);
  if (B == 0 || S == 0) return;
  DIRMOE_CHECK(scratch != nullptr, "attention_backward: null scratch (need ",
               attention_backward_scratch_floats(B, S, Hq), " floats)");
  DIRMOE_CHECK(detail::aligned16(q) && detail::aligned16(k) && detail::aligned16(v) &&
                   detail::aligned16(dout),
               "attention_backward: q, k, v and dout must be 16-byte aligned");
  if (hd != 32 && hd != 64 && hd != 96 && hd != 128) unsupported_head_dim(hd);
  detail::NvtxRange range("attention_backward");
  const int64_t rows = B * S * Hq;
  attention_dot_kernel<T><<<detail::grid_for(rows, 8), 256, 0, stream>>>(
      scratch, dout, out, rows, static_cast<int>(S), static_cast<int>(Hq), static_cast<int>(hd));
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  if constexpr (std::is_same_v<T, bf16>) {
    const void* ptrs[] = {dq, dk, dv, dout, q, k, v};
    if (detail::attention_tc_covers(hd, ptrs, 7))
      return detail::attention_tc_backward(dq, dk, dv, dout, q, k, v, lse, scratch, B, S, Hq, Hkv,
                                           hd, stream);
  }
  switch (hd) {
    case 32:
      return backward_launch<T, 32>(dq, dk, dv, dout, q, k, v, lse, scratch, B, S, Hq, Hkv, stream);
    case 64:
      return backward_launch<T, 64>(dq, dk, dv, dout, q, k, v, lse, scratch, B, S, Hq, Hkv, stream);
    case 96:
      return backward_launch<T, 96>(dq, dk, dv, dout, q, k, v, lse, scratch, B, S, Hq, Hkv, stream);
    case 128:
      return backward_launch<T, 128>(dq, dk, dv, dout, q, k, v, lse, scratch, B, S, Hq, Hkv,
                                     stream);
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template void attention_forward<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template void attention_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, const float*,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, float*,
                                        cudaStream_t);
template void attention_backward<bf16>(bf16*, bf16*, bf16*, const bf16*, const bf16*, const bf16*,
                                       const bf16*, const bf16*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, int64_t, float*, cudaStream_t);

}  // namespace dirmoe::cuda
