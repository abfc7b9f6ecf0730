// Rotary position embedding, Hugging Face rotate_half layout (element i pairs with i + hd/2), from
// a cos/sin table built once in double precision like the CPU path's angles.
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

__global__ void rope_table_kernel(float* cos_table, float* sin_table, int64_t S, int64_t half,
                                  double base, double hd) {
  const int64_t total = S * half;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = idx / half, i = idx % half;
    const double a = double(s) * pow(base, -2.0 * double(i) / hd);
    cos_table[idx] = static_cast<float>(cos(a));
    sin_table[idx] = static_cast<float>(sin(a));
  }
}

// One thread per rotated pair; sign = +1 forward, -1 backward.
template <class T>
__global__ void rope_kernel(T* x, const float* cos_table, const float* sin_table, int64_t B,
                            int64_t S, int64_t H, int64_t half, int64_t row_stride, float sign) {
  const int64_t total = B * S * H * half;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t h = (idx / half) % H;
    const int64_t bs = idx / (half * H);  // b * S + s
    const int64_t s = bs % S;
    T* lo = x + bs * row_stride + h * 2 * half + i;
    T* hi = lo + half;
    const float c = cos_table[s * half + i], sn = sign * sin_table[s * half + i];
    const float x1 = detail::to_float(*lo), x2 = detail::to_float(*hi);
    *lo = detail::from_float<T>(x1 * c - x2 * sn);
    *hi = detail::from_float<T>(x2 * c + x1 * sn);
  }
}

void check_shape(int64_t B, int64_t S, int64_t H, int64_t hd, int64_t row_stride) {
  DIRMOE_CHECK(B >= 0 && S >= 0 && H > 0, "bad RoPE shape B=", B, " S=", S, " H=", H);
  DIRMOE_CHECK(hd > 0 && hd % 2 == 0, "RoPE needs an even head dim, got ", hd);
  DIRMOE_CHECK(row_stride == 0 || row_stride >= H * hd, "RoPE row stride ", row_stride,
               " is smaller than H*hd = ", H * hd);
}

template <class T>
void rope_launch(T* x, const float* cos_table, const float* sin_table, int64_t B, int64_t S,
                 int64_t H, int64_t hd, int64_t row_stride, float sign, cudaStream_t stream) {
  check_shape(B, S, H, hd, row_stride);
  const int64_t total = B * S * H * (hd / 2);
  if (total == 0) return;
  const int64_t stride = row_stride == 0 ? H * hd : row_stride;
  rope_kernel<T><<<detail::grid_for(total, 256), 256, 0, stream>>>(x, cos_table, sin_table, B, S, H,
                                                                   hd / 2, stride, sign);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace

void rope_table(float* cos_table, float* sin_table, int64_t S, int64_t hd, double base,
                cudaStream_t stream) {
  DIRMOE_CHECK(S >= 0 && hd > 0 && hd % 2 == 0, "bad RoPE table shape S=", S, " hd=", hd);
  if (S == 0) return;
  detail::NvtxRange range("rope_table");
  const int64_t total = S * (hd / 2);
  rope_table_kernel<<<detail::grid_for(total, 256), 256, 0, stream>>>(cos_table, sin_table, S,
                                                                      hd / 2, base, double(hd));
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void rope_forward(T* x, const float* cos_table, const float* sin_table, int64_t B, int64_t S,
                  int64_t H, int64_t hd, int64_t row_stride, cudaStream_t stream) {
  detail::NvtxRange range("rope_forward");
  rope_launch(x, cos_table, sin_table, B, S, H, hd, row_stride, 1.0f, stream);
}

template <class T>
void rope_backward(T* dx, const float* cos_table, const float* sin_table, int64_t B, int64_t S,
                   int64_t H, int64_t hd, int64_t row_stride, cudaStream_t stream) {
  detail::NvtxRange range("rope_backward");
  rope_launch(dx, cos_table, sin_table, B, S, H, hd, row_stride, -1.0f, stream);
}

template void rope_forward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, cudaStream_t);
template void rope_forward<bf16>(bf16*, const float*, const float*, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, cudaStream_t);
template void rope_backward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, cudaStream_t);
template void rope_backward<bf16>(bf16*, const float*, const float*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, cudaStream_t);

}  // namespace dirmoe::cuda
