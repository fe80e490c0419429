// Helpers shared by the CPU kernels (conv_wgrad.cc, conv_fwd.cc).
#ifndef BYOL_JAX_NATIVE_COMMON_H_
#define BYOL_JAX_NATIVE_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace byol_jax_native {

namespace ffi = xla::ffi;

// 16 floats: one zmm register with AVX-512; without it, two 8-float vectors (two ymm registers with AVX2).
// GCC keeps a generic vector wider than the hardware's in memory (stack traffic and memcpy calls on every
// multiply-add), so the narrower case is a pair of vectors it can hold in registers.
#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
#else
typedef float v8 __attribute__((vector_size(32)));
struct v16 {
  v8 lo, hi;
};

inline v16 operator*(float s, const v16& a) { return {s * a.lo, s * a.hi}; }
inline v16& operator+=(v16& a, const v16& b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v.lo, p, sizeof(v8));
  std::memcpy(&v.hi, p + 8, sizeof(v8));
  return v;
}
inline void store(float* p, const v16& v) {
  std::memcpy(p, &v.lo, sizeof(v8));
  std::memcpy(p + 8, &v.hi, sizeof(v8));
}
#endif

// Calls fn(0) ... fn(total - 1), on the intra-op thread pool's threads and the calling thread. The caller
// takes items too and waits only for items already taken, so it never waits on a task that has not started
// (no deadlock when the pool's threads are busy); a task that starts late finds no item left and touches
// only the shared counters.
inline void parallel_for(ffi::ThreadPool& pool, bool parallel, int64_t total, const std::function<void(int64_t)>& fn) {
  const int64_t threads = parallel ? std::min<int64_t>(pool.num_threads(), total) : 1;
  if (threads <= 1) {
    for (int64_t k = 0; k < total; ++k) fn(k);
    return;
  }
  struct Work {
    std::atomic<int64_t> next{0}, finished{0};
    int64_t total;
    std::function<void(int64_t)> fn;
  };
  auto work = std::make_shared<Work>();
  work->total = total;
  work->fn = fn;
  auto drain = [](Work& w) {
    for (int64_t k; (k = w.next.fetch_add(1)) < w.total;) {
      w.fn(k);
      w.finished.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([work, drain] { drain(*work); });
  drain(*work);
  while (work->finished.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

}  // namespace byol_jax_native

#endif  // BYOL_JAX_NATIVE_COMMON_H_
