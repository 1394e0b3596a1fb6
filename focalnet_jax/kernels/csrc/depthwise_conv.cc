// FocalNet's depthwise convolution as XLA:CPU custom calls (jax.ffi): k x k, stride 1, zero
// padding k / 2, no bias, NHWC float32, with its backward pass (input and kernel gradients in
// one sweep). XLA:CPU has no fast depthwise convolution and computes the kernel gradient as k*k
// separate reductions; these loops keep each row's taps in registers and split rows over XLA's
// intra-op thread pool. Built on first use by focalnet_jax/native.py; the reference is
// focalnet_jax.ops.depthwise_conv_xla.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <functional>
#include <thread>
#include <type_traits>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(chunk) for chunk in [0, n) on the caller and the XLA intra-op pool. Chunks are
// claimed from a shared counter, so the caller never waits for a helper that has not started.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;
  auto work = [state, fn, n]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < n;) {
      (*fn)(c);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(work));
  work();
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

struct Dims { int64_t b, h, w, c, k, p; };

// Channels go in blocks of 64, 16, then 1: a wide block gives several independent accumulator
// chains per position (one AVX-512 vector is 16 floats). Every pointer below is formed at a
// valid element: windows are clipped to the image first.

// out[0:B] = sum over the clipped window of x * k; `x` and `k` point at the window's first
// valid tap, rows `x_row` and `k_row` apart, `nj` taps per row, `C` apart.
// Calls f(std::integral_constant<int64_t, B>{}, c) for channel blocks [c, c + B) covering [0, C).
template <typename F>
inline void ForEachChannelBlock(int64_t C, const F& f) {
  int64_t c = 0;
  for (; c + 64 <= C; c += 64) f(std::integral_constant<int64_t, 64>{}, c);
  for (; c + 16 <= C; c += 16) f(std::integral_constant<int64_t, 16>{}, c);
  for (; c < C; ++c) f(std::integral_constant<int64_t, 1>{}, c);
}

template <int64_t B>
inline void ConvBlock(const float* __restrict x, const float* __restrict k, float* __restrict out,
                      int64_t C, int64_t ni, int64_t nj, int64_t x_row, int64_t k_row) {
  float acc[B] = {};
  for (int64_t i = 0; i < ni; ++i) {
    const float* xr = x + i * x_row;
    const float* kr = k + i * k_row;
    for (int64_t j = 0; j < nj; ++j)
      for (int64_t t = 0; t < B; ++t) acc[t] += xr[j * C + t] * kr[j * C + t];
  }
  for (int64_t t = 0; t < B; ++t) out[t] = acc[t];
}

// One output row (b, h): out[w, c] = sum_{i,j} x[h + i - p, w + j - p, c] * k[i, j, c].
inline void ConvRow(const float* __restrict x, const float* __restrict k, float* __restrict out,
                    const Dims& d, int64_t b, int64_t h) {
  const int64_t W = d.w, C = d.c;
  const int64_t i0 = std::max<int64_t>(0, d.p - h), i1 = std::min<int64_t>(d.k, d.h + d.p - h);
  for (int64_t w = 0; w < W; ++w) {
    const int64_t j0 = std::max<int64_t>(0, d.p - w), j1 = std::min<int64_t>(d.k, W + d.p - w);
    const float* xw = x + ((b * d.h + h + i0 - d.p) * W + w + j0 - d.p) * C;
    const float* kw = k + (i0 * d.k + j0) * C;
    const int64_t ni = i1 - i0, nj = j1 - j0;
    float* ov = out + w * C;
    ForEachChannelBlock(C, [&](auto block, int64_t c) {
      ConvBlock<decltype(block)::value>(xw + c, kw + c, ov + c, C, ni, nj, W * C, d.k * C);
    });
  }
}

// dk[0:B] += sum_{w < n} x[w] * g[w], positions C apart.
template <int64_t B>
inline void TapGradBlock(const float* __restrict x, const float* __restrict g, float* __restrict dk,
                         int64_t C, int64_t n) {
  float acc[B];
  for (int64_t t = 0; t < B; ++t) acc[t] = dk[t];
  for (int64_t w = 0; w < n; ++w)
    for (int64_t t = 0; t < B; ++t) acc[t] += x[w * C + t] * g[w * C + t];
  for (int64_t t = 0; t < B; ++t) dk[t] = acc[t];
}

// dk[i, j, c] += sum_w x[h + i - p, w + j - p, c] * g[h, w, c] for one cotangent row (b, h).
inline void KernelGradRow(const float* __restrict x, const float* __restrict g, float* __restrict dk,
                          const Dims& d, int64_t b, int64_t h) {
  const int64_t W = d.w, C = d.c;
  const float* grow = g + ((b * d.h + h) * W) * C;
  const int64_t i0 = std::max<int64_t>(0, d.p - h), i1 = std::min<int64_t>(d.k, d.h + d.p - h);
  for (int64_t i = i0; i < i1; ++i) {
    const float* xrow = x + ((b * d.h + h + i - d.p) * W) * C;
    for (int64_t j = 0; j < d.k; ++j) {
      float* dkij = dk + (i * d.k + j) * C;
      const int64_t w0 = std::max<int64_t>(0, d.p - j), w1 = std::min<int64_t>(W, W + d.p - j);
      if (w1 <= w0) continue;
      const float* xs = xrow + (w0 + j - d.p) * C;
      const float* gs = grow + w0 * C;
      ForEachChannelBlock(C, [&](auto block, int64_t c) {
        TapGradBlock<decltype(block)::value>(xs + c, gs + c, dkij + c, C, w1 - w0);
      });
    }
  }
}

// x: (B, H, W, C); k: (K, K, C) with K odd.
ffi::Error GetDims(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& k, Dims* d) {
  auto xd = x.dimensions();
  auto kd = k.dimensions();
  if (xd.size() != 4 || kd.size() != 3 || kd[0] != kd[1] || kd[0] % 2 != 1 || kd[2] != xd[3])
    return ffi::Error::InvalidArgument(
        "focalnet depthwise conv: expected x (B, H, W, C) and kernel (K, K, C) with K odd");
  *d = Dims{xd[0], xd[1], xd[2], xd[3], kd[0], kd[0] / 2};
  return ffi::Error::Success();
}

int64_t RowsPerChunk(const Dims& d, int64_t threads) {
  int64_t rows = d.b * d.h;
  return std::max<int64_t>(1, rows / (4 * std::max<int64_t>(1, threads)));
}

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> out) {
  Dims d;
  if (ffi::Error e = GetDims(x, k, &d); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* op = out->typed_data();
  int64_t rows = d.b * d.h, per = RowsPerChunk(d, pool.num_threads());
  int64_t n = (rows + per - 1) / per;
  ParallelFor(pool, n, [&](int64_t c) {
    for (int64_t r = c * per; r < std::min(rows, (c + 1) * per); ++r)
      ConvRow(xp, kp, op + r * d.w * d.c, d, r / d.h, r % d.h);
  });
  return ffi::Error::Success();
}

// dx = conv(g, flipped k); dk = per-tap sums of x-window * g. `kf` is k flipped in both axes.
ffi::Error BwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kf,
                   ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx,
                   ffi::ResultBuffer<ffi::F32> dk) {
  Dims d;
  if (ffi::Error e = GetDims(x, kf, &d); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* kp = kf.typed_data();
  const float* gp = g.typed_data();
  float* dxp = dx->typed_data();
  int64_t rows = d.b * d.h, per = RowsPerChunk(d, pool.num_threads());
  int64_t n = (rows + per - 1) / per;
  const int64_t kk = d.k * d.k * d.c;
  std::vector<float> partial(n * kk, 0.0f);
  ParallelFor(pool, n, [&](int64_t c) {
    float* acc = partial.data() + c * kk;
    for (int64_t r = c * per; r < std::min(rows, (c + 1) * per); ++r) {
      ConvRow(gp, kp, dxp + r * d.w * d.c, d, r / d.h, r % d.h);
      KernelGradRow(xp, gp, acc, d, r / d.h, r % d.h);
    }
  });
  float* dkp = dk->typed_data();  // chunk partials summed in a fixed order: deterministic
  std::fill(dkp, dkp + kk, 0.0f);
  for (int64_t c = 0; c < n; ++c)
    for (int64_t t = 0; t < kk; ++t) dkp[t] += partial[c * kk + t];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocalnetDepthwiseFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocalnetDepthwiseBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
