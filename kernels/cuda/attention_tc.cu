// Causal GQA attention on tensor cores (bf16 in, fp32 accumulation and softmax statistics), head
// dims 64 and 128, the FlashAttention-2 scheme: the forward tiles over 64-row query blocks and
// walks the 64-column key blocks up to the diagonal with an online softmax, saving the logsumexp;
// the backward recomputes P from q, k and lse in two deterministic kernels without atomics (dK/dV
// per key block over every query head of its KV group and every query block at or below the
// diagonal; dQ per query block over the key blocks up to the diagonal).
//
// Why WMMA (nvcuda::wmma, bf16 16x16x16 fragments, fp32 accumulators) and not mma.sync/ldmatrix
// or wgmma: the accumulator layout of a WMMA fragment is opaque, so every row-wise step (mask,
// max, exp2, row sums, O rescale) goes through a per-warp fp32 tile in shared memory with a lane
// mapping we define; that costs shared-memory traffic (the kernels are bound by it, not by the
// tensor cores) but leaves no undocumented register layout to get wrong. mma.sync with the
// accumulators kept in registers is the next step once this is measured.
//
// Layout per CTA: 4 warps (128 threads), 64 rows per block, each warp owns 16 rows. Shared-memory
// tiles of bf16 have row stride HD + 8 (rows 16-byte aligned, 8 consecutive rows start in distinct
// bank quads: conflict-free 16-byte accesses and fragment loads); fp32 per-warp tiles have row
// stride 68 (or HD + 4). Row-wise work: lane l handles row l % 16, columns [32 (l / 16), +32).
// Partial tiles (S not a multiple of 64): rows past S load as zeros, their columns are masked to
// -inf (P = 0), and nothing past S is stored, so every S takes this path.
#include <mma.h>

#include <cmath>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda::detail {
namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int kTile = 64;  // query rows / key columns per block
constexpr int kWarps = 4;  // each owns 16 rows of the block
constexpr int kThreads = 32 * kWarps;
constexpr int kSLd = kTile + 4;  // fp32 row stride of a warp's (16, 64) score tile
constexpr int kPLd = kTile + 8;  // bf16 row stride of a warp's (16, 64) P / dS tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <int HD>
constexpr int tile_ld() {  // bf16 row stride of a (64, HD) tile
  return HD + 8;
}
template <int HD>
constexpr int tile_elems() {
  return kTile * tile_ld<HD>();
}
template <int HD>
constexpr int out_ld() {  // fp32 row stride of a warp's (16, HD) output staging tile
  return HD + 4;
}

// dst (64, HD+8) = rows [row0, row0 + 64) of a (S, HD) bf16 matrix with row stride ld elements;
// rows at or past S are zero. 16-byte accesses (src rows are 16-byte aligned: checked by caller).
template <int HD>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t ld, int row0, int S) {
  constexpr int kPerRow = HD / 8;
  constexpr int kIters = kTile * kPerRow / kThreads;
  static_assert(kTile * kPerRow % kThreads == 0, "tile load must divide evenly");
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int idx = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = idx / kPerRow, c = (idx % kPerRow) * 8;
    const int row = row0 + r;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row < S) val = *reinterpret_cast<const uint4*>(src + int64_t(row) * ld + c);
    *reinterpret_cast<uint4*>(dst + r * tile_ld<HD>() + c) = val;
  }
}

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

// x[0..N) = columns [c0, c0 + N) of row r of a fp32 tile with row stride ld (16-byte aligned).
template <int N>
__device__ __forceinline__ void read_row(float (&x)[N], const float* tile, int ld, int r, int c0) {
  const float* src = tile + r * ld + c0;
#pragma unroll
  for (int c = 0; c < N; c += 4) {
    const float4 t = *reinterpret_cast<const float4*>(src + c);
    x[c] = t.x;
    x[c + 1] = t.y;
    x[c + 2] = t.z;
    x[c + 3] = t.w;
  }
}

// N floats -> bf16 at dst (16-byte aligned), 16 bytes at a time.
template <int N>
__device__ __forceinline__ void write_bf16(bf16* dst, const float (&x)[N]) {
  static_assert(N % 8 == 0, "whole 16-byte chunks");
#pragma unroll
  for (int c = 0; c < N; c += 8) {
    uint4 raw;
    __nv_bfloat162* p2 = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; ++e) p2[e] = __floats2bfloat162_rn(x[c + 2 * e], x[c + 2 * e + 1]);
    *reinterpret_cast<uint4*>(dst + c) = raw;
  }
}

// out (16, 64) fp32, row stride kSLd = A (16 rows of a tile, row stride LD) times B^T, B = a
// (64, HD) tile: scores of the warp's 16 rows against 64 rows of B, JB blocks of 16 columns at a
// time (JB < 4 holds fewer accumulators live, for kernels short of registers).
template <int HD, int JB = 4>
__device__ __forceinline__ void scores_abt(float* out, const bf16* A, const bf16* Bt) {
  constexpr int LD = tile_ld<HD>();
  static_assert(4 % JB == 0, "column blocks per pass must divide 4");
#pragma unroll
  for (int j0 = 0; j0 < 4; j0 += JB) {
    FragC acc[JB];
#pragma unroll
    for (int j = 0; j < JB; ++j) wmma::fill_fragment(acc[j], 0.f);
#pragma unroll
    for (int d = 0; d < HD / 16; ++d) {
      FragA a;
      wmma::load_matrix_sync(a, A + d * 16, LD);
#pragma unroll
      for (int j = 0; j < JB; ++j) {
        FragBCol b;  // B^T[kk][n] = Bt[16 (j0 + j) + n][16 d + kk]
        wmma::load_matrix_sync(b, Bt + (j0 + j) * 16 * LD + d * 16, LD);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < JB; ++j)
      wmma::store_matrix_sync(out + (j0 + j) * 16, acc[j], kSLd, wmma::mem_row_major);
  }
}

// acc[d] += P (16, 64; bf16, row stride kPLd) times rows of a (64, HD) tile, column block d of Bm
// (N blocks of 16 columns; Bm may point into the tile at a column offset).
template <int HD, int N = HD / 16>
__device__ __forceinline__ void accumulate_pb(FragC (&acc)[N], const bf16* P, const bf16* Bm) {
  constexpr int LD = tile_ld<HD>();
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    FragA a;
    wmma::load_matrix_sync(a, P + j * 16, kPLd);
#pragma unroll
    for (int d = 0; d < N; ++d) {
      FragBRow b;  // B[kk][n] = Bm[16 j + kk][16 d + n]
      wmma::load_matrix_sync(b, Bm + j * 16 * LD + d * 16, LD);
      wmma::mma_sync(acc[d], a, b, acc[d]);
    }
  }
}

// Writes a warp's (16, HD) fp32 accumulators as bf16 rows [row0, row0 + 16) of a matrix with row
// stride ld (rows >= S skipped), staging through stage (16, HD+4) fp32.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t ld, int row0, int S,
                                           FragC (&acc)[HD / 16], float* stage, int lane) {
  constexpr int OLD = out_ld<HD>();
#pragma unroll
  for (int d = 0; d < HD / 16; ++d)
    wmma::store_matrix_sync(stage + d * 16, acc[d], OLD, wmma::mem_row_major);
  __syncwarp();
  const int r = lane & 15, half = lane >> 4;
  float x[HD / 2];
  read_row(x, stage, OLD, r, half * (HD / 2));
  if (row0 + r < S) write_bf16(dst + int64_t(row0 + r) * ld + half * (HD / 2), x);
}

template <int HD>
constexpr size_t forward_smem() {
  return sizeof(bf16) * 3 * tile_elems<HD>() +
         kWarps * (sizeof(float) * 16 * (out_ld<HD>() > kSLd ? out_ld<HD>() : kSLd) +
                   sizeof(bf16) * 16 * kPLd);
}

// Grid (B * Hq, query blocks), the last query block first (it has the most key blocks).
template <int HD>
__global__ void __launch_bounds__(kThreads)
    tc_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int S,
                      int Hq, int Hkv, float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  constexpr int kWLd = out_ld<HD>() > kSLd ? out_ld<HD>() : kSLd;
  extern __shared__ __align__(128) unsigned char tc_smem[];
  bf16* sQ = reinterpret_cast<bf16*>(tc_smem);  // (64, HD+8)
  bf16* sK = sQ + tile_elems<HD>();             // (64, HD+8)
  bf16* sV = sK + tile_elems<HD>();             // (64, HD+8)
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  float* sW = reinterpret_cast<float*>(sV + tile_elems<HD>()) + warp * 16 * kWLd;  // (16, kWLd)
  bf16* sP = reinterpret_cast<bf16*>(reinterpret_cast<float*>(sV + tile_elems<HD>()) +
                                     kWarps * 16 * kWLd) +
             warp * 16 * kPLd;  // (16, 64+8)

  const int bh = blockIdx.x, qt = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
  const int q0 = qt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const bf16* qb = q + int64_t(b) * S * ldq + int64_t(h) * HD;
  const bf16* kb = k + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const bf16* vb = v + int64_t(b) * S * ldk + int64_t(hk) * HD;

  load_tile<HD>(sQ, qb, ldq, q0, S);
  const int r = lane & 15, half = lane >> 4;
  const int row = q0 + warp * 16 + r;  // this lane's query row
  float m = -INFINITY, l = 0.f;        // running max (log2 units) and sum of row `row`
  float o[HD / 2];                     // columns [half HD/2, +HD/2) of row `row`, unnormalised
#pragma unroll
  for (int c = 0; c < HD / 2; ++c) o[c] = 0.f;

  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous block's K/V readers are done (and sQ is written)
    load_tile<HD>(sK, kb, ldk, k0, S);
    load_tile<HD>(sV, vb, ldk, k0, S);
    __syncthreads();
    scores_abt<HD>(sW, sQ + warp * 16 * LD, sK);  // (16, 64) raw scores
    __syncwarp();
    float s[32];
    read_row(s, sW, kWLd, r, half * 32);
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int col = k0 + half * 32 + c;
      s[c] = (col <= row && col < S) ? s[c] * scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m, mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(m - m_use);
    float rs = 0.f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      s[c] = exp2f(s[c] - m_use);
      rs += s[c];
    }
    rs += __shfl_xor_sync(0xffffffffu, rs, 16);
    l = l * alpha + rs;
    m = m_new;
    write_bf16(sP + r * kPLd + half * 32, s);
#pragma unroll
    for (int c = 0; c < HD / 2; ++c) o[c] *= alpha;
    __syncwarp();  // P written, every lane done reading the scores in sW

    // P V in 64-column slices of the head dim (fewer live accumulators at HD = 128).
#pragma unroll
    for (int d0 = 0; d0 < HD; d0 += 64) {
      FragC pv[4];
#pragma unroll
      for (int d = 0; d < 4; ++d) wmma::fill_fragment(pv[d], 0.f);
      accumulate_pb<HD, 4>(pv, sP, sV + d0);
#pragma unroll
      for (int d = 0; d < 4; ++d)
        wmma::store_matrix_sync(sW + d0 + d * 16, pv[d], kWLd, wmma::mem_row_major);
    }
    __syncwarp();
    const float* pv_row = sW + r * kWLd + half * (HD / 2);
#pragma unroll
    for (int c = 0; c < HD / 2; c += 4) {
      const float4 t = *reinterpret_cast<const float4*>(pv_row + c);
      o[c] += t.x;
      o[c + 1] += t.y;
      o[c + 2] += t.z;
      o[c + 3] += t.w;
    }
  }

  if (row < S) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < HD / 2; ++c) o[c] *= inv;
    write_bf16(out + (int64_t(b) * S + row) * ldq + int64_t(h) * HD + half * (HD / 2), o);
    if (half == 0) lse[int64_t(bh) * S + row] = (m + log2f(l)) * kLn2;
  }
}

// Column blocks per scores pass in the dK/dV kernel: its 2 x HD/16 accumulators stay live across
// the loop, so at HD = 128 the scores go two blocks at a time.
template <int HD>
constexpr int kDkdvJB = HD > 64 ? 2 : 4;

template <int HD>
constexpr size_t dkdv_smem() {
  return sizeof(bf16) * 4 * tile_elems<HD>() +
         kWarps * (sizeof(float) * 16 * kSLd + sizeof(bf16) * 2 * 16 * kPLd) +
         sizeof(float) * 2 * kTile;
}

// Grid (B * Hkv, key blocks): dK, dV of 64 keys summed over the group's query heads and every query
// block at or below the diagonal. Warp w owns keys [16 w, +16) of the block; lanes work on the
// transposed (key, query) tiles S^T, dP^T.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    tc_dkdv_kernel(bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v,
                   const bf16* dout, const float* lse, const float* D, int S, int Hq, int Hkv,
                   float scale, float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  extern __shared__ __align__(128) unsigned char tc_smem[];
  bf16* sK = reinterpret_cast<bf16*>(tc_smem);  // (64, HD+8)
  bf16* sV = sK + tile_elems<HD>();             // (64, HD+8)
  bf16* sQ = sV + tile_elems<HD>();             // (64, HD+8)
  bf16* sdO = sQ + tile_elems<HD>();            // (64, HD+8)
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  float* sW_all = reinterpret_cast<float*>(sdO + tile_elems<HD>());        // (4, 16, 68)
  bf16* sPt_all = reinterpret_cast<bf16*>(sW_all + kWarps * 16 * kSLd);    // (4, 2, 16, 72)
  float* sL = reinterpret_cast<float*>(sPt_all + kWarps * 2 * 16 * kPLd);  // (64) lse * log2(e)
  float* sD = sL + kTile;                                                  // (64)
  float* sW = sW_all + warp * 16 * kSLd;
  bf16* sPt = sPt_all + warp * 2 * 16 * kPLd;  // (16 keys, 64 queries) P^T
  bf16* sdSt = sPt + 16 * kPLd;                // (16 keys, 64 queries) dS^T (scaled)

  const int bk = blockIdx.x, kt = blockIdx.y;
  const int b = bk / Hkv, hk = bk % Hkv, group = Hq / Hkv;
  const int k0 = kt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const int num_qt = (S + kTile - 1) / kTile;
  const int r = lane & 15, half = lane >> 4;
  const int key = k0 + warp * 16 + r;  // this lane's key row

  load_tile<HD>(sK, k + int64_t(b) * S * ldk + int64_t(hk) * HD, ldk, k0, S);
  load_tile<HD>(sV, v + int64_t(b) * S * ldk + int64_t(hk) * HD, ldk, k0, S);
  FragC dk_acc[HD / 16], dv_acc[HD / 16];
#pragma unroll
  for (int d = 0; d < HD / 16; ++d) {
    wmma::fill_fragment(dk_acc[d], 0.f);
    wmma::fill_fragment(dv_acc[d], 0.f);
  }

  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const bf16* qb = q + int64_t(b) * S * ldq + int64_t(h) * HD;
    const bf16* dob = dout + int64_t(b) * S * ldq + int64_t(h) * HD;
    const float* lse_h = lse + (int64_t(b) * Hq + h) * S;
    const float* D_h = D + (int64_t(b) * Hq + h) * S;
    for (int qt = kt; qt < num_qt; ++qt) {
      const int q0 = qt * kTile;
      __syncthreads();  // the previous block's readers of sQ, sdO, sL, sD are done
      load_tile<HD>(sQ, qb, ldq, q0, S);
      load_tile<HD>(sdO, dob, ldq, q0, S);
      if (threadIdx.x < kTile) {
        const int qr = q0 + static_cast<int>(threadIdx.x);
        sL[threadIdx.x] = qr < S ? lse_h[qr] * kLog2e : 0.f;
        sD[threadIdx.x] = qr < S ? D_h[qr] : 0.f;
      }
      __syncthreads();
      float p[32];
      scores_abt<HD, kDkdvJB<HD>>(sW, sK + warp * 16 * LD, sQ);  // S^T (16 keys, 64 queries)
      __syncwarp();
#pragma unroll
      for (int c = 0; c < 32; c += 4) {
        const float4 x = ld4(sW + r * kSLd + half * 32 + c);
        const float4 lq = ld4(sL + half * 32 + c);  // same address across a half: broadcast
        const int qr = q0 + half * 32 + c;
        p[c] = (qr >= key && qr < S) ? exp2f(x.x * scale_log2 - lq.x) : 0.f;
        p[c + 1] = (qr + 1 >= key && qr + 1 < S) ? exp2f(x.y * scale_log2 - lq.y) : 0.f;
        p[c + 2] = (qr + 2 >= key && qr + 2 < S) ? exp2f(x.z * scale_log2 - lq.z) : 0.f;
        p[c + 3] = (qr + 3 >= key && qr + 3 < S) ? exp2f(x.w * scale_log2 - lq.w) : 0.f;
      }
      write_bf16(sPt + r * kPLd + half * 32, p);
      __syncwarp();  // every lane done reading S^T before dP^T overwrites it
      scores_abt<HD, kDkdvJB<HD>>(sW, sV + warp * 16 * LD, sdO);  // dP^T (16 keys, 64 queries)
      __syncwarp();
#pragma unroll
      for (int c = 0; c < 32; c += 4) {
        const float4 x = ld4(sW + r * kSLd + half * 32 + c);
        const float4 dq = ld4(sD + half * 32 + c);
        p[c] = p[c] * (x.x - dq.x) * scale;
        p[c + 1] = p[c + 1] * (x.y - dq.y) * scale;
        p[c + 2] = p[c + 2] * (x.z - dq.z) * scale;
        p[c + 3] = p[c + 3] * (x.w - dq.w) * scale;
      }
      write_bf16(sdSt + r * kPLd + half * 32, p);
      __syncwarp();
      accumulate_pb<HD>(dv_acc, sPt, sdO);  // dV += P^T dO
      accumulate_pb<HD>(dk_acc, sdSt, sQ);  // dK += dS^T Q
    }
  }

  __syncthreads();  // sQ/sdO are free: stage the outputs there (4 warps x (16, HD+4) fp32)
  float* stage = reinterpret_cast<float*>(sQ) + warp * 16 * out_ld<HD>();
  const int64_t off = int64_t(b) * S * ldk + int64_t(hk) * HD;
  store_rows<HD>(dk + off, ldk, k0 + warp * 16, S, dk_acc, stage, lane);
  __syncwarp();
  store_rows<HD>(dv + off, ldk, k0 + warp * 16, S, dv_acc, stage, lane);
}

template <int HD>
constexpr size_t dq_smem() {
  return sizeof(bf16) * 4 * tile_elems<HD>() +
         kWarps * (sizeof(float) * 16 * kSLd + sizeof(bf16) * 16 * kPLd);
}

// Grid (B * Hq, query blocks), the last query block first: dQ of 64 query rows = sum over the key
// blocks up to the diagonal of dS K.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    tc_dq_kernel(bf16* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                 const float* lse, const float* D, int S, int Hq, int Hkv, float scale,
                 float scale_log2) {
  constexpr int LD = tile_ld<HD>();
  extern __shared__ __align__(128) unsigned char tc_smem[];
  bf16* sQ = reinterpret_cast<bf16*>(tc_smem);  // (64, HD+8)
  bf16* sdO = sQ + tile_elems<HD>();            // (64, HD+8)
  bf16* sK = sdO + tile_elems<HD>();            // (64, HD+8)
  bf16* sV = sK + tile_elems<HD>();             // (64, HD+8)
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  float* sW = reinterpret_cast<float*>(sV + tile_elems<HD>()) + warp * 16 * kSLd;  // (16, 68)
  bf16* sdS = reinterpret_cast<bf16*>(reinterpret_cast<float*>(sV + tile_elems<HD>()) +
                                      kWarps * 16 * kSLd) +
              warp * 16 * kPLd;  // (16, 72)

  const int bh = blockIdx.x, qt = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int b = bh / Hq, h = bh % Hq, hk = h / (Hq / Hkv);
  const int q0 = qt * kTile;
  const int64_t ldq = int64_t(Hq) * HD, ldk = int64_t(Hkv) * HD;
  const bf16* kb = k + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const bf16* vb = v + int64_t(b) * S * ldk + int64_t(hk) * HD;
  const int r = lane & 15, half = lane >> 4;
  const int row = q0 + warp * 16 + r;  // this lane's query row
  const float lr = row < S ? lse[int64_t(bh) * S + row] * kLog2e : 0.f;
  const float dr = row < S ? D[int64_t(bh) * S + row] : 0.f;

  load_tile<HD>(sQ, q + int64_t(b) * S * ldq + int64_t(h) * HD, ldq, q0, S);
  load_tile<HD>(sdO, dout + int64_t(b) * S * ldq + int64_t(h) * HD, ldq, q0, S);
  FragC dq_acc[HD / 16];
#pragma unroll
  for (int d = 0; d < HD / 16; ++d) wmma::fill_fragment(dq_acc[d], 0.f);

  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous block's readers of sK, sV are done
    load_tile<HD>(sK, kb, ldk, k0, S);
    load_tile<HD>(sV, vb, ldk, k0, S);
    __syncthreads();
    float p[32];
    scores_abt<HD>(sW, sQ + warp * 16 * LD, sK);  // S (16 queries, 64 keys), unscaled
    __syncwarp();
    read_row(p, sW, kSLd, r, half * 32);
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int col = k0 + half * 32 + c;
      p[c] = (col <= row && col < S) ? exp2f(p[c] * scale_log2 - lr) : 0.f;
    }
    __syncwarp();  // every lane done reading S before dP overwrites it
    scores_abt<HD>(sW, sdO + warp * 16 * LD, sV);  // dP (16 queries, 64 keys)
    __syncwarp();
#pragma unroll
    for (int c = 0; c < 32; c += 4) {
      const float4 x = ld4(sW + r * kSLd + half * 32 + c);
      p[c] = p[c] * (x.x - dr) * scale;
      p[c + 1] = p[c + 1] * (x.y - dr) * scale;
      p[c + 2] = p[c + 2] * (x.z - dr) * scale;
      p[c + 3] = p[c + 3] * (x.w - dr) * scale;
    }
    write_bf16(sdS + r * kPLd + half * 32, p);
    __syncwarp();
    accumulate_pb<HD>(dq_acc, sdS, sK);  // dQ += dS K
  }

  __syncthreads();  // sK/sV are free: stage the output there (4 warps x (16, HD+4) fp32)
  float* stage = reinterpret_cast<float*>(sK) + warp * 16 * out_ld<HD>();
  store_rows<HD>(dq + int64_t(b) * S * ldq + int64_t(h) * HD, ldq, q0 + warp * 16, S, dq_acc, stage,
                 lane);
}

static_assert(kWarps * 16 * out_ld<128>() * sizeof(float) <= 2 * tile_elems<128>() * sizeof(bf16),
              "output staging must fit in two bf16 tiles");
static_assert(kWarps * 16 * out_ld<64>() * sizeof(float) <= 2 * tile_elems<64>() * sizeof(bf16),
              "output staging must fit in two bf16 tiles");

// Raises a kernel's dynamic shared-memory limit once per process.
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, bool& done) {
  if (done) return;
  DIRMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
  done = true;
}

template <int HD>
void forward_launch(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                    int64_t S, int64_t Hq, int64_t Hkv, cudaStream_t stream) {
  static bool smem_set = false;
  allow_smem(tc_forward_kernel<HD>, forward_smem<HD>(), smem_set);
  const dim3 grid(static_cast<unsigned>(B * Hq), static_cast<unsigned>((S + kTile - 1) / kTile));
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(double(HD)));
  tc_forward_kernel<HD><<<grid, kThreads, forward_smem<HD>(), stream>>>(
      out, lse, q, k, v, static_cast<int>(S), static_cast<int>(Hq), static_cast<int>(Hkv),
      scale_log2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <int HD>
void backward_launch(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                     const bf16* v, const float* lse, const float* D, int64_t B, int64_t S,
                     int64_t Hq, int64_t Hkv, cudaStream_t stream) {
  static bool dkdv_set = false, dq_set = false;
  allow_smem(tc_dkdv_kernel<HD>, dkdv_smem<HD>(), dkdv_set);
  allow_smem(tc_dq_kernel<HD>, dq_smem<HD>(), dq_set);
  const double scale = 1.0 / std::sqrt(double(HD));
  const float sc = static_cast<float>(scale), sc2 = static_cast<float>(scale * 1.4426950408889634);
  const unsigned tiles = static_cast<unsigned>((S + kTile - 1) / kTile);
  tc_dkdv_kernel<HD>
      <<<dim3(static_cast<unsigned>(B * Hkv), tiles), kThreads, dkdv_smem<HD>(), stream>>>(
          dk, dv, q, k, v, dout, lse, D, static_cast<int>(S), static_cast<int>(Hq),
          static_cast<int>(Hkv), sc, sc2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  tc_dq_kernel<HD><<<dim3(static_cast<unsigned>(B * Hq), tiles), kThreads, dq_smem<HD>(), stream>>>(
      dq, q, k, v, dout, lse, D, static_cast<int>(S), static_cast<int>(Hq), static_cast<int>(Hkv),
      sc, sc2);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace

bool attention_tc_covers(int64_t hd, const void* const* ptrs, int n_ptrs) {
  if (hd != 64 && hd != 128) return false;
  for (int i = 0; i < n_ptrs; ++i)
    if (!aligned16(ptrs[i])) return false;
  return true;
}

void attention_tc_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                          int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd,
                          cudaStream_t stream) {
  if (hd == 64) return forward_launch<64>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
  DIRMOE_CHECK(hd == 128, "attention_tc_forward: head dim ", hd, " is not 64 or 128");
  forward_launch<128>(out, lse, q, k, v, B, S, Hq, Hkv, stream);
}

void attention_tc_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                           const bf16* k, const bf16* v, const float* lse, const float* D,
                           int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd,
                           cudaStream_t stream) {
  if (hd == 64)
    return backward_launch<64>(dq, dk, dv, dout, q, k, v, lse, D, B, S, Hq, Hkv, stream);
  DIRMOE_CHECK(hd == 128, "attention_tc_backward: head dim ", hd, " is not 64 or 128");
  backward_launch<128>(dq, dk, dv, dout, q, k, v, lse, D, B, S, Hq, Hkv, stream);
}

}  // namespace dirmoe::cuda::detail
