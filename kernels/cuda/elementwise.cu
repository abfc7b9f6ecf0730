// Reductions and elementwise helpers around the optimiser: deterministic sum of squares (grad
// norm), the clip coefficient on device, scaling, accumulation and dtype conversion.
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;  // blocks of the first sum-of-squares pass
constexpr int64_t kPerBlock = int64_t(kThreads) * 16;

int sum_squares_blocks(int64_t n) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((n + kPerBlock - 1) / kPerBlock, kMaxPartials)));
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    sum_squares_partial_kernel(double* partial, const T* x, int64_t n) {
  __shared__ double red[kThreads / 32];
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const double e = detail::to_float(x[i]);
    acc += e * e;
  }
  acc = detail::block_sum<kThreads>(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(double* out, const double* partial, int num, bool accumulate) {
  __shared__ double red[kThreads / 32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < num; i += kThreads) acc += partial[i];
  acc = detail::block_sum<kThreads>(acc, red);
  if (threadIdx.x == 0) *out = accumulate ? *out + acc : acc;
}

__global__ void clip_kernel(float* scale, const double* sumsq, double max_norm) {
  const double norm = sqrt(*sumsq);
  *scale = (max_norm > 0 && norm > max_norm) ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

template <class T>
__global__ void scale_kernel(T* x, int64_t n, float s, const float* d_s) {
  const float f = d_s != nullptr ? *d_s : s;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = detail::from_float<T>(detail::to_float(x[i]) * f);
  }
}

template <class T>
__global__ void add_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[i] = detail::from_float<T>(detail::to_float(y[i]) + detail::to_float(x[i]));
  }
}

template <class Src, class Dst>
__global__ void convert_kernel(Dst* out, const Src* in, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = detail::from_float<Dst>(detail::to_float(in[i]));
  }
}

}  // namespace

size_t sum_squares_scratch_doubles(int64_t n) { return kMaxPartials; }

template <class T>
void sum_squares(double* d_out, const T* x, int64_t n, bool accumulate, double* scratch,
                 cudaStream_t stream) {
  DIRMOE_CHECK(n >= 0, "sum_squares: negative size ", n);
  DIRMOE_CHECK(scratch != nullptr, "sum_squares: null scratch");
  detail::NvtxRange range("sum_squares");
  const int blocks = sum_squares_blocks(n);
  if (n > 0) {
    sum_squares_partial_kernel<T><<<blocks, kThreads, 0, stream>>>(scratch, x, n);
    DIRMOE_CUDA_LAUNCH_CHECK(stream);
  }
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(d_out, scratch, n > 0 ? blocks : 0, accumulate);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void clip_coefficient(float* d_scale, const double* d_sumsq, double max_norm, cudaStream_t stream) {
  clip_kernel<<<1, 1, 0, stream>>>(d_scale, d_sumsq, max_norm);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void scale_inplace(T* x, int64_t n, float s, cudaStream_t stream) {
  if (n <= 0) return;
  detail::NvtxRange range("scale_inplace");
  scale_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, s, nullptr);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void scale_inplace_device(T* x, int64_t n, const float* d_s, cudaStream_t stream) {
  if (n <= 0) return;
  DIRMOE_CHECK(d_s != nullptr, "scale_inplace_device: null scale");
  detail::NvtxRange range("scale_inplace");
  scale_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, 1.0f, d_s);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void add_inplace(T* y, const T* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  detail::NvtxRange range("add_inplace");
  add_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(y, x, n);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class Src, class Dst>
void convert(Dst* out, const Src* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  detail::NvtxRange range("convert");
  convert_kernel<Src, Dst><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, in, n);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template void sum_squares<float>(double*, const float*, int64_t, bool, double*, cudaStream_t);
template void sum_squares<bf16>(double*, const bf16*, int64_t, bool, double*, cudaStream_t);
template void scale_inplace<float>(float*, int64_t, float, cudaStream_t);
template void scale_inplace<bf16>(bf16*, int64_t, float, cudaStream_t);
template void scale_inplace_device<float>(float*, int64_t, const float*, cudaStream_t);
template void scale_inplace_device<bf16>(bf16*, int64_t, const float*, cudaStream_t);
template void add_inplace<float>(float*, const float*, int64_t, cudaStream_t);
template void add_inplace<bf16>(bf16*, const bf16*, int64_t, cudaStream_t);
template void convert<float, bf16>(bf16*, const float*, int64_t, cudaStream_t);
template void convert<bf16, float>(float*, const bf16*, int64_t, cudaStream_t);
template void convert<float, float>(float*, const float*, int64_t, cudaStream_t);

}  // namespace dirmoe::cuda
