// y = x Wᵀ for an x with a few rows (M, K) and a weight W (N, K) in bf16 or in int8 with one scale
// per row, summed in fp32.
//
// Decoding one token reads every weight once and does two flops per weight read, so at batch 1 the
// speed of a step is the speed at which the weights stream from memory. The way to stream fast is
// the plainest one: each thread walks its share of W start to end, one row after the other, so the
// hardware prefetcher sees one sequential stream; a row's dot product is split over four
// independent sums so the adds never wait on each other. The two weight types differ only in how a
// register's worth of weights is loaded and multiplied (`Bf16`, `Int8` below).
//
// Built on first use by krmini/infer/fast/gemv.py, which uses it only where the CPU has AVX512-BF16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>

namespace {

constexpr int kSums = 4;                     // independent partial sums per dot product
constexpr int kRowsTogether = 4;             // with a batch: rows of x that share one pass over a weight row
constexpr int64_t kBytesPerTask = 64 << 10;  // less work than this per thread costs more than it saves

// bf16 weights and x: vdpbf16ps multiplies 32 bf16 pairs and adds them into 16 fp32 lanes.
struct Bf16 {
  using Weight = at::BFloat16;
  using Input = at::BFloat16;
  static constexpr int64_t kStep = 32;

  // the first n values (n <= kStep: a row's tail when K is not a multiple of 32), zeros after
  static __m512bh load(const at::BFloat16* p, int64_t n) {
    return (__m512bh)(n == kStep ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16((__mmask32)((1u << n) - 1), p));
  }
  static __m512bh load_weights(const Weight* p, int64_t n) { return load(p, n); }
  static __m512bh load_input(const Input* p, int64_t n) { return load(p, n); }
  static __m512 multiply_add(__m512 acc, __m512bh w, __m512bh x) { return _mm512_dpbf16_ps(acc, w, x); }
};

// int8 weights widened to fp32, 16 at a time (two instructions), against an fp32 x. The weights
// stream at a byte each, half of bf16's bytes; the row's scale is applied once, to the sum.
struct Int8 {
  using Weight = int8_t;
  using Input = float;
  static constexpr int64_t kStep = 16;

  static __mmask16 first(int64_t n) { return (__mmask16)((1u << n) - 1); }
  static __m512 load_weights(const Weight* p, int64_t n) {
    const __m128i bytes = n == kStep ? _mm_loadu_si128((const __m128i*)p) : _mm_maskz_loadu_epi8(first(n), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  }
  static __m512 load_input(const Input* p, int64_t n) {
    return n == kStep ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first(n), p);
  }
  static __m512 multiply_add(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
};

// One weight row against one x row: four sums over alternating chunks of K, so that each
// multiply-add does not wait for the one before it.
template <class T>
float dot_row(const typename T::Weight* w, const typename T::Input* x, int64_t K) {
  constexpr int64_t step = T::kStep;
  __m512 acc[kSums];
  #pragma GCC unroll 16
  for (int u = 0; u < kSums; ++u) acc[u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kSums * step <= K; k += kSums * step)
    #pragma GCC unroll 16
    for (int u = 0; u < kSums; ++u)
      acc[u] = T::multiply_add(acc[u], T::load_weights(w + k + u * step, step), T::load_input(x + k + u * step, step));
  for (; k < K; k += step) {
    const int64_t n = std::min(step, K - k);
    acc[0] = T::multiply_add(acc[0], T::load_weights(w + k, n), T::load_input(x + k, n));
  }
  #pragma GCC unroll 16
  for (int u = 1; u < kSums; ++u) acc[0] = _mm512_add_ps(acc[0], acc[u]);
  return _mm512_reduce_add_ps(acc[0]);
}

// One weight row against R rows of x (a batch): each chunk of weights is loaded once for R
// products. out[r] = dot(w, x_r).
template <class T, int R>
void dot_rows(const typename T::Weight* w, const typename T::Input* x, int64_t K, float* out) {
  __m512 acc[R];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += T::kStep) {
    const int64_t n = std::min(T::kStep, K - k);
    const auto wv = T::load_weights(w + k, n);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = T::multiply_add(acc[r], wv, T::load_input(x + r * K + k, n));
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

// y (M, N) = x Wᵀ, times scale[n] per weight row where `scale` is given, written in y's type (each
// sum rounded once). Threads split W's rows.
template <class T, class Out>
void gemv(const typename T::Input* x, const typename T::Weight* w, const Out* scale, int64_t M, int64_t K, int64_t N,
          Out* y) {
  const int64_t grain = std::max<int64_t>(1, kBytesPerTask / std::max<int64_t>(1, K * sizeof(typename T::Weight)));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    float out[kRowsTogether];
    for (int64_t n = begin; n < end; ++n) {
      const typename T::Weight* row = w + n * K;
      const float s = scale ? static_cast<float>(scale[n]) : 1.f;
      if (M == 1) {
        y[n] = Out(dot_row<T>(row, x, K) * s);
        continue;
      }
      for (int64_t m = 0; m < M; m += kRowsTogether) {  // x rows four at a time, the weight row hot in L1
        const int64_t rows = std::min<int64_t>(kRowsTogether, M - m);
        const typename T::Input* xm = x + m * K;
        switch (rows) {
          case 1: dot_rows<T, 1>(row, xm, K, out); break;
          case 2: dot_rows<T, 2>(row, xm, K, out); break;
          case 3: dot_rows<T, 3>(row, xm, K, out); break;
          default: dot_rows<T, 4>(row, xm, K, out); break;
        }
        for (int64_t r = 0; r < rows; ++r) y[(m + r) * N + n] = Out(out[r] * s);
      }
    }
  });
}

void check_shapes(const char* op, const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, ": expected x (M, K) and w (N, K), got ",
              x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), op, ": expected CPU tensors");
}

// bf16 x, bf16 W → bf16 y (each sum rounded once, as oneDNN does)
at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w) {
  check_shapes("gemv_bf16", x, w);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "gemv_bf16: expected bf16 tensors");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  at::Tensor y = at::empty({xc.size(0), wc.size(0)}, xc.options());
  gemv<Bf16, at::BFloat16>(xc.const_data_ptr<at::BFloat16>(), wc.const_data_ptr<at::BFloat16>(), nullptr, xc.size(0),
                           xc.size(1), wc.size(0), y.mutable_data_ptr<at::BFloat16>());
  return y;
}

// fp32 or bf16 x, int8 W with one scale per row in x's dtype (as `Int8Linear` keeps them) → y in x's dtype
at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  check_shapes("gemv_int8", x, w);
  TORCH_CHECK(w.scalar_type() == at::kChar, "gemv_int8: expected int8 weights");
  TORCH_CHECK(scale.numel() == w.size(0) && scale.scalar_type() == x.scalar_type() && scale.device().is_cpu(),
              "gemv_int8: expected one CPU scale per row, in x's dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "gemv_int8: expected fp32 or bf16 x");
  const at::Tensor xf = x.to(at::kFloat).contiguous(), wc = w.contiguous(), sc = scale.contiguous();
  at::Tensor y = at::empty({xf.size(0), wc.size(0)}, x.options());
  const int64_t M = xf.size(0), K = xf.size(1), N = wc.size(0);
  if (x.scalar_type() == at::kFloat) {
    gemv<Int8, float>(xf.const_data_ptr<float>(), wc.const_data_ptr<int8_t>(), sc.const_data_ptr<float>(), M, K, N,
                      y.mutable_data_ptr<float>());
  } else {
    gemv<Int8, at::BFloat16>(xf.const_data_ptr<float>(), wc.const_data_ptr<int8_t>(), sc.const_data_ptr<at::BFloat16>(),
                             M, K, N, y.mutable_data_ptr<at::BFloat16>());
  }
  return y;
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
