// A 2-D NHWC convolution on CPU, as an XLA FFI custom call (byol_jax/models/native):
//
//   y[n, oh, ow, co] = sum_{i, j, ci} x[n, oh*sh - ph + i, ow*sw - pw + j, ci] * w[i, j, ci, co]
//
// with x read as zero outside its borders (the padding is done here: padding in XLA was a copy of every
// input, ~5% of the default step). Direct, register-blocked: a tile of P output pixels (consecutive in a
// row, or the same pixel of P images where rows are shorter than P) times 16 NV output channels is
// accumulated in registers over every tap and input channel (NV weight vectors and P broadcasts of x per
// P NV multiply-adds). XLA:CPU runs the convolutions of the small ResNets at ~60 GFLOP/s
// (docs/benchmarks.md). Also the input gradient of a stride-1 convolution: a convolution of the output
// gradient, padded by k - 1 - pad, with the flipped, transposed kernel. Row or image groups x output
// blocks run on XLA's intra-op thread pool; each writes its own outputs.

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

#if defined(__AVX512F__)
constexpr int kP = 12, kNV = 2;  // 12 pixels x 2 vectors of 16 floats: 24 of the 32 zmm registers
#else
constexpr int kP = 6, kNV = 1;   // AVX2: a 16-float vector is two ymm registers; 6 x 2 = 12 of the 16
#endif

// acc[p] += sum_c x_p[c] w[c, :] for one tap, where pixel p's input channels start at pixel(p).
template <int P, int NV, class Pixel>
inline void accumulate(v16 (&acc)[P][NV], const Pixel& pixel, const float* wp, int64_t ci, int64_t co) {
  for (int64_t c = 0; c < ci; ++c, wp += co) {
    v16 wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load(wp + 16 * v);
    for (int p = 0; p < P; ++p) {
      const float xv = pixel(p)[c];
      for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
    }
  }
}

// y[p, co0 + 16 v] for P output pixels. Pixel p's window starts at input row ih0, column iw0 + p * iw_step of
// the image at xb + p * image_step (iw_step = sw, image_step = 0 along a row; iw_step = 0, image_step = one
// image for the same pixel of P images); its output is at yb + p * y_step. A tap inside the input for every
// pixel reads x in place, a tap outside for every pixel is skipped, and a tap that is partly outside (a row's
// first or last tile) reads zeros for the pixels it misses.
template <int P, int NV>
void tile(const Geometry& g, const float* xb, int64_t image_step, int64_t ih0, int64_t iw0, int64_t iw_step,
          const float* w, const float* zeros, float* yb, int64_t y_step, int64_t co0) {
  v16 acc[P][NV] = {};
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = ih0 + i;
    if (ih < 0 || ih >= g.h) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t first = iw0 + j, last = first + (P - 1) * iw_step;
      const float* wp = w + (i * g.kw + j) * g.ci * g.co + co0;
      if (first >= 0 && last < g.w) {
        const float* x0 = xb + (ih * g.w + first) * g.ci;
        const int64_t step = image_step + iw_step * g.ci;
        accumulate<P, NV>(acc, [=](int p) { return x0 + p * step; }, wp, g.ci, g.co);
      } else if (last >= 0 && first < g.w) {  // (iw_step > 0 here: the same column for every pixel is all or none)
        const float* xp[P];
        for (int p = 0; p < P; ++p) {
          const int64_t iw = first + p * iw_step;
          xp[p] = (iw >= 0 && iw < g.w) ? xb + (ih * g.w + iw) * g.ci : zeros;
        }
        accumulate<P, NV>(acc, [&](int p) { return xp[p]; }, wp, g.ci, g.co);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) store(yb + p * y_step + co0 + 16 * v, acc[p][v]);
}

template <int NV>
void tile_any(int p, const Geometry& g, const float* xb, int64_t image_step, int64_t ih0, int64_t iw0,
              int64_t iw_step, const float* w, const float* zeros, float* yb, int64_t y_step, int64_t co0) {
  switch (p) {
#define CASE(P) case P: return tile<P, NV>(g, xb, image_step, ih0, iw0, iw_step, w, zeros, yb, y_step, co0);
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#if defined(__AVX512F__)
    CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#endif
#undef CASE
  }
}

void convolution(const Geometry& g, const float* x, const float* w, float* y, ffi::ThreadPool& pool, bool parallel) {
  constexpr int NV = kNV;
  const std::vector<float> zeros(g.ci, 0.0f);
  const int64_t co_blocks = g.co / (16 * NV), threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t x_image = g.h * g.w * g.ci, y_image = g.ho * g.wo * g.co;
  if (g.wo >= kP) {
    // Wide maps: tiles of kP pixels along each output row (the last tile of a row may be shorter).
    const int64_t rows = g.n * g.ho, rows_per_item = std::max<int64_t>(1, rows / (8 * threads));
    const int64_t items = (rows + rows_per_item - 1) / rows_per_item;
    parallel_for(pool, parallel, items * co_blocks, [&](int64_t item) {
      const int64_t co0 = (item % co_blocks) * 16 * NV, r0 = (item / co_blocks) * rows_per_item;
      for (int64_t r = r0; r < std::min(rows, r0 + rows_per_item); ++r) {
        const int64_t n = r / g.ho, oh = r % g.ho;
        float* yrow = y + r * g.wo * g.co;
        for (int64_t ow = 0; ow < g.wo; ow += kP) {
          const int p = static_cast<int>(std::min<int64_t>(kP, g.wo - ow));
          tile_any<NV>(p, g, x + n * x_image, 0, oh * g.sh - g.ph, ow * g.sw - g.pw, g.sw, w, zeros.data(),
                       yrow + ow * g.co, g.co, co0);
        }
      }
    });
  } else {
    // Narrow maps (rows shorter than a tile): tiles of kP images at each output pixel.
    const int64_t groups = (g.n + kP - 1) / kP;
    parallel_for(pool, parallel, groups * co_blocks, [&](int64_t item) {
      const int64_t co0 = (item % co_blocks) * 16 * NV, n0 = (item / co_blocks) * kP;
      const int p = static_cast<int>(std::min<int64_t>(kP, g.n - n0));
      for (int64_t oh = 0; oh < g.ho; ++oh)
        for (int64_t ow = 0; ow < g.wo; ++ow)
          tile_any<NV>(p, g, x + n0 * x_image, x_image, oh * g.sh - g.ph, ow * g.sw - g.pw, 0, w, zeros.data(),
                       y + n0 * y_image + (oh * g.wo + ow) * g.co, y_image, co0);
    });
  }
}

ffi::Error ConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                    ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                    int64_t parallel) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("conv: x, w and y must be rank 4 (NHWC, HWIO, NHWC)");
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], sh, sw, ph, pw};
  if (yd[0] != g.n || wd[2] != g.ci || wd[3] != g.co || g.co % (16 * kNV) != 0 || sh < 1 || sw < 1)
    return ffi::Error::InvalidArgument(
        "conv: inconsistent shapes or strides, or output channels not a multiple of 32 (16 without AVX-512)");
  convolution(g, x.typed_data(), w.typed_data(), y->typed_data(), pool, parallel != 0);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv, ConvImpl,
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
