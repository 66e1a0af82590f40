// y = x Wᵀ for a bf16 x with a few rows (M, K) and a bf16 weight W (N, K), summed in fp32.
//
// Decoding one token reads every weight once and does two flops per weight read, so at batch 1 the
// speed of a step is the speed at which the weights stream from memory. The way to stream fast is
// the plainest one: each thread walks its share of W start to end, one row after the other, so the
// hardware prefetcher sees one sequential stream; a row's dot product is split over four
// independent sums so the adds never wait on each other. vdpbf16ps (AVX512-BF16) multiplies 32
// bf16 pairs and adds them into 16 fp32 lanes in one instruction.
//
// Built on first use by krmini/infer/gemv.py, which uses it only where the CPU has AVX512-BF16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>

namespace {

constexpr int64_t kLanes = 32;          // bf16 values per 512-bit register
constexpr int kSums = 4;                // independent partial sums per dot product
constexpr int kRowsTogether = 4;        // with a batch: rows of x that share one pass over a weight row
constexpr int64_t kBytesPerTask = 64 << 10;  // less work than this per thread costs more than it saves

inline __m512bh load(const at::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }

// The first n values (n <= 32), zeros after: the tail of a row whose length is not a multiple of 32.
inline __m512bh load_n(const at::BFloat16* p, int64_t n) {
  return n == kLanes ? load(p) : (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1u << n) - 1), p);
}

// One weight row against one x row: four sums over alternating chunks of K, so that each
// vdpbf16ps does not wait for the one before it.
float dot_row(const at::BFloat16* w, const at::BFloat16* x, int64_t K) {
  __m512 acc[kSums];
  #pragma GCC unroll 16
  for (int u = 0; u < kSums; ++u) acc[u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kSums * kLanes <= K; k += kSums * kLanes)
    #pragma GCC unroll 16
    for (int u = 0; u < kSums; ++u)
      acc[u] = _mm512_dpbf16_ps(acc[u], load(w + k + u * kLanes), load(x + k + u * kLanes));
  for (; k < K; k += kLanes) {
    const int64_t n = std::min(kLanes, K - k);
    acc[0] = _mm512_dpbf16_ps(acc[0], load_n(w + k, n), load_n(x + k, n));
  }
  #pragma GCC unroll 16
  for (int u = 1; u < kSums; ++u) acc[0] = _mm512_add_ps(acc[0], acc[u]);
  return _mm512_reduce_add_ps(acc[0]);
}

// One weight row against R rows of x (a batch): the weight vector is loaded once for R products.
// y[r * ldy] = dot(w, x_r).
template <int R>
void dot_rows(const at::BFloat16* w, const at::BFloat16* x, int64_t K, at::BFloat16* y, int64_t ldy) {
  __m512 acc[R];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kLanes) {
    const int64_t n = std::min(kLanes, K - k);
    const __m512bh wv = load_n(w + k, n);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], wv, load_n(x + r * K + k, n));
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) y[r * ldy] = at::BFloat16(_mm512_reduce_add_ps(acc[r]));
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "gemv_bf16: expected x (M, K) and w (N, K), got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "gemv_bf16: expected bf16 tensors");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "gemv_bf16: expected CPU tensors");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = wc.size(0);
  at::Tensor y = at::empty({M, N}, xc.options());
  const at::BFloat16* xp = xc.const_data_ptr<at::BFloat16>();
  const at::BFloat16* wp = wc.const_data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.mutable_data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(1, kBytesPerTask / std::max<int64_t>(1, 2 * K));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const at::BFloat16* row = wp + n * K;
      if (M == 1) {
        yp[n] = at::BFloat16(dot_row(row, xp, K));
        continue;
      }
      for (int64_t m = 0; m < M; m += kRowsTogether) {  // x rows four at a time, the weight row hot in L1
        const at::BFloat16* xm = xp + m * K;
        at::BFloat16* ym = yp + m * N + n;
        switch (std::min<int64_t>(kRowsTogether, M - m)) {
          case 1: dot_rows<1>(row, xm, K, ym, N); break;
          case 2: dot_rows<2>(row, xm, K, ym, N); break;
          case 3: dot_rows<3>(row, xm, K, ym, N); break;
          default: dot_rows<4>(row, xm, K, ym, N); break;
        }
      }
    }
  });
  return y;
}

constexpr int64_t kFloats = 16;  // fp32 values per 512-bit register

// 16 int8 weights widened to fp32 (n < 16: the first n, zeros after).
inline __m512 load_int8(const int8_t* p, int64_t n = kFloats) {
  const __m128i bytes = n == kFloats ? _mm_loadu_si128((const __m128i*)p) : _mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1), p);
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
}

inline __m512 load_floats(const float* p, int64_t n = kFloats) {
  return n == kFloats ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}

// One int8 weight row against one fp32 x row, in four independent sums. The weights stream at a
// byte each, half of bf16's bytes; widening them to fp32 costs two instructions per 16.
float dot_row_int8(const int8_t* w, const float* x, int64_t K) {
  __m512 acc[kSums];
  #pragma GCC unroll 16
  for (int u = 0; u < kSums; ++u) acc[u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kSums * kFloats <= K; k += kSums * kFloats)
    #pragma GCC unroll 16
    for (int u = 0; u < kSums; ++u)
      acc[u] = _mm512_fmadd_ps(load_int8(w + k + u * kFloats), load_floats(x + k + u * kFloats), acc[u]);
  for (; k < K; k += kFloats) {
    const int64_t n = std::min(kFloats, K - k);
    acc[0] = _mm512_fmadd_ps(load_int8(w + k, n), load_floats(x + k, n), acc[0]);
  }
  #pragma GCC unroll 16
  for (int u = 1; u < kSums; ++u) acc[0] = _mm512_add_ps(acc[0], acc[u]);
  return _mm512_reduce_add_ps(acc[0]);
}

// One int8 weight row against R rows of x: each 16 weights are widened once for R products.
template <int R>
void dot_rows_int8(const int8_t* w, const float* x, int64_t K, float scale, float* y, int64_t ldy) {
  __m512 acc[R];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kFloats) {
    const int64_t n = std::min(kFloats, K - k);
    const __m512 wv = load_int8(w + k, n);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wv, load_floats(x + r * K + k, n), acc[r]);
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) y[r * ldy] = _mm512_reduce_add_ps(acc[r]) * scale;
}

// y = (x Wᵀ) · scale for int8 W (N, K) with one scale per row, x (M, K) in fp32 or bf16; y in x's dtype.
at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) && scale.numel() == w.size(0),
              "gemv_int8: expected x (M, K), w (N, K) and scale (N,), got ", x.sizes(), ", ", w.sizes(), " and ",
              scale.sizes());
  TORCH_CHECK(w.scalar_type() == at::kChar, "gemv_int8: expected int8 weights");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && scale.device().is_cpu(), "gemv_int8: expected CPU tensors");
  const at::Tensor xf = x.to(at::kFloat).contiguous(), wc = w.contiguous(), sf = scale.to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), N = wc.size(0);
  at::Tensor y = at::empty({M, N}, xf.options());
  const float* xp = xf.const_data_ptr<float>();
  const int8_t* wp = wc.const_data_ptr<int8_t>();
  const float* sp = sf.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kBytesPerTask / std::max<int64_t>(1, K));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* row = wp + n * K;
      if (M == 1) {
        yp[n] = dot_row_int8(row, xp, K) * sp[n];
        continue;
      }
      for (int64_t m = 0; m < M; m += kRowsTogether) {
        const float* xm = xp + m * K;
        float* ym = yp + m * N + n;
        switch (std::min<int64_t>(kRowsTogether, M - m)) {
          case 1: dot_rows_int8<1>(row, xm, K, sp[n], ym, N); break;
          case 2: dot_rows_int8<2>(row, xm, K, sp[n], ym, N); break;
          case 3: dot_rows_int8<3>(row, xm, K, sp[n], ym, N); break;
          default: dot_rows_int8<4>(row, xm, K, sp[n], ym, N); break;
        }
      }
    }
  });
  return y.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(krmini, m) {
  m.def("gemv_bf16(Tensor x, Tensor w) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor w, Tensor scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(krmini, CPU, m) {
  m.impl("gemv_bf16", gemv_bf16);
  m.impl("gemv_int8", gemv_int8);
}
