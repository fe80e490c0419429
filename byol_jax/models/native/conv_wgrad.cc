// The weight gradient of an NHWC convolution on CPU, as an XLA FFI custom call (byol_jax/models/native.py).
//
//   dW[i, j, ci, co] = sum_{n, ho, wo} x[n, ho*sh + i - ph, wo*sw + j - pw, ci] * dy[n, ho, wo, co]
//
// XLA:CPU computes this as a convolution whose window is the batch: it transposes x to [C, H, W, N] and dy to
// [H, W, N, C] first (copies that run far below the memory bandwidth) and then reaches ~25 GFLOP/s
// (docs/records/benchmarks_log_2026-11.md, "The training step on CPU"). Here it is a register-blocked outer-product
// loop that reads x and dy in place: for each tap and each block of CB input x 16*NV output channels the accumulators
// stay in registers while the valid pixels of a chunk of images stream by; the chunk is sized so that its x and dy stay
// in the L2 cache across the taps and blocks. The (tap, output block) items of a chunk run on XLA's intra-op thread
// pool; each writes its own part of dW, so the result does not depend on the threads. Vectors are GCC's generic
// vectors, so the same source builds for AVX2 and AVX-512.
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using byol_jax_native::load;
using byol_jax_native::parallel_for;
using byol_jax_native::store;
using byol_jax_native::v16;

namespace {

struct Geometry {
  int64_t n, h, w, ci, ho, wo, co, kh, kw, sh, sw, ph, pw;
};

// The output rows (or columns) o with 0 <= o * stride + tap - pad < size: [lo, hi).
inline void valid_range(int64_t tap, int64_t stride, int64_t pad, int64_t size, int64_t out, int64_t* lo,
                        int64_t* hi) {
  int64_t first = pad - tap;  // o * stride >= pad - tap
  *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  int64_t last = size - 1 + pad - tap;  // o * stride <= size - 1 + pad - tap
  *hi = last < 0 ? 0 : last / stride + 1;
  if (*hi > out) *hi = out;
  if (*lo > *hi) *lo = *hi;
}

// acc[c][v] += x[pixel, ci0 + c] * dy[pixel, co0 + 16 v] over the pixels of `n_rows` output rows of one tap
// (row r: x from xs[r], dy from ds[r], `width` pixels); the accumulators start from (and end in) dw_tap.
template <int CB, int NV>
void block(const Geometry& g, const float* const* xs, const float* const* ds, int64_t n_rows, int64_t width,
           float* dw_tap, int64_t ci0, int64_t co0) {
  v16 acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = load(dw_tap + (ci0 + c) * g.co + co0 + 16 * v);
  const int64_t x_step = g.sw * g.ci;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xp = xs[r] + ci0;
    const float* dp = ds[r] + co0;
    for (int64_t k = 0; k < width; ++k, xp += x_step, dp += g.co) {
      v16 d[NV];
      for (int v = 0; v < NV; ++v) d[v] = load(dp + 16 * v);
      for (int c = 0; c < CB; ++c) {
        const float xv = xp[c];
        for (int v = 0; v < NV; ++v) acc[c][v] += xv * d[v];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) store(dw_tap + (ci0 + c) * g.co + co0 + 16 * v, acc[c][v]);
}

#if defined(__AVX512F__)
constexpr int kCB = 8, kNV = 2;  // 8 x 2 accumulators of 16 floats: 16 of the 32 zmm registers
#else
constexpr int kCB = 4, kNV = 1;  // AVX2: a 16-float vector is two ymm registers; 4 x 2 of the 16
#endif
constexpr int64_t kTilePixels = 32;  // a dy tile (32 x 16 NV floats) and its x rows stay in L1 across ci blocks

// One tap, one block of 16 NV output channels: tiles of ~kTilePixels pixels, every input-channel block per tile.
template <int NV>
void co_block(const Geometry& g, const std::vector<const float*>& xs, const std::vector<const float*>& ds,
              int64_t width, float* dw_tap, int64_t co0) {
  const int64_t n_rows = xs.size();
  const int64_t tile_rows = width >= kTilePixels ? 1 : kTilePixels / width;
  for (int64_t r0 = 0; r0 < n_rows; r0 += tile_rows) {
    const int64_t rows = r0 + tile_rows < n_rows ? tile_rows : n_rows - r0;
    int64_t ci0 = 0;
    for (; ci0 + kCB <= g.ci; ci0 += kCB) block<kCB, NV>(g, &xs[r0], &ds[r0], rows, width, dw_tap, ci0, co0);
    for (; ci0 < g.ci; ++ci0) block<1, NV>(g, &xs[r0], &ds[r0], rows, width, dw_tap, ci0, co0);
  }
}

void weight_gradient(const Geometry& g, const float* x, const float* dy, float* dw, ffi::ThreadPool& pool, bool parallel) {
  std::memset(dw, 0, sizeof(float) * g.kh * g.kw * g.ci * g.co);
  // Images per chunk: their x and dy fit in ~1 MiB (L2 on current x86 server cores).
  const int64_t image_bytes = sizeof(float) * (g.h * g.w * g.ci + g.ho * g.wo * g.co);
  int64_t chunk = (int64_t{1} << 20) / (image_bytes > 0 ? image_bytes : 1);
  if (chunk < 1) chunk = 1;
  const int64_t taps = g.kh * g.kw, co_blocks = (g.co + 16 * kNV - 1) / (16 * kNV);
  std::vector<std::vector<const float*>> xs(taps), ds(taps);
  std::vector<int64_t> widths(taps);
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    const int64_t n1 = n0 + chunk < g.n ? n0 + chunk : g.n;
    // For each tap, the first valid pixel of each of its output rows, in x and in dy.
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t i = t / g.kw, j = t % g.kw;
      int64_t ho_lo, ho_hi, wo_lo, wo_hi;
      valid_range(i, g.sh, g.ph, g.h, g.ho, &ho_lo, &ho_hi);
      valid_range(j, g.sw, g.pw, g.w, g.wo, &wo_lo, &wo_hi);
      xs[t].clear();
      ds[t].clear();
      widths[t] = wo_hi - wo_lo;
      if (wo_lo >= wo_hi) continue;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t oh = ho_lo; oh < ho_hi; ++oh) {
          xs[t].push_back(x + ((n * g.h + oh * g.sh + i - g.ph) * g.w + wo_lo * g.sw + j - g.pw) * g.ci);
          ds[t].push_back(dy + ((n * g.ho + oh) * g.wo + wo_lo) * g.co);
        }
    }
    // Work items: (tap, block of output channels), each writing its own part of dw.
    parallel_for(pool, parallel, taps * co_blocks, [&](int64_t item) {
      const int64_t t = item / co_blocks, co0 = (item % co_blocks) * 16 * kNV;
      if (xs[t].empty()) return;
      float* dw_tap = dw + t * g.ci * g.co;
      if (co0 + 16 * kNV <= g.co) {
        co_block<kNV>(g, xs[t], ds[t], widths[t], dw_tap, co0);
      } else {
        for (int64_t c = co0; c < g.co; c += 16) co_block<1>(g, xs[t], ds[t], widths[t], dw_tap, c);  // co % 16 == 0
      }
    });
  }
}

ffi::Error ConvWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                              ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                              int64_t parallel) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), dwd = dw->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || dwd.size() != 4)
    return ffi::Error::InvalidArgument("conv_weight_grad: x, dy and dw must be rank 4 (NHWC, NHWC, HWIO)");
  Geometry g{xd[0], xd[1], xd[2], xd[3], dyd[1], dyd[2], dyd[3], dwd[0], dwd[1], sh, sw, ph, pw};
  if (dyd[0] != g.n || dwd[2] != g.ci || dwd[3] != g.co || g.co % 16 != 0)
    return ffi::Error::InvalidArgument("conv_weight_grad: inconsistent shapes, or output channels not a multiple of 16");
  weight_gradient(g, x.typed_data(), dy.typed_data(), dw->typed_data(), pool, parallel != 0);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvWeightGrad, ConvWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("parallel"));
