/* What the native kernels share: the surrogates' derivatives and the failure
 * flag of a parallel region. */
#ifndef SNN_H
#define SNN_H

#include <math.h>

#ifndef M_PI /* strict C libraries leave it out */
#define M_PI 3.14159265358979323846
#endif

/* A parallel region's shared failure flag (a thread could not allocate its
 * buffers): set by that thread, read by all before each work item, so that
 * every thread still reaches the loop's barrier and the call returns -1. */
static inline void set_failed(int *failed) {
#pragma omp atomic write
  *failed = 1;
}

static inline int has_failed(int *failed) {
  int stop;
#pragma omp atomic read
  stop = *failed;
  return stop;
}

/* g * dS/dx at x = mem - thr; see runtime/surrogates.py for the formulas.
 * `kind` is a constant wherever this is inlined: one loop per surrogate. */
static inline __attribute__((always_inline)) float surrogate_grad(
    const int kind, float x, float g, float a0, float a1) {
  switch (kind) {
    case 1: { /* alpha / 2 / (1 + (pi / 2 * alpha * x)^2) * g */
      float u = (float)(M_PI / 2 * a0) * x;
      return (a0 / 2.0f) / (1.0f + u * u) * g;
    }
    case 2: { /* g / (slope * |x| + 1)^2 */
      float s = a0 * fabsf(x) + 1.0f;
      return g / (s * s);
    }
    case 3: { /* g * slope * sigmoid(slope x) * sigmoid(-slope x) */
      float k = a0 * x;
      return g * a0 * (1.0f / (1.0f + expf(-k))) * (1.0f / (1.0f + expf(k)));
    }
    case 4: { /* -g * threshold where x >= 0, g * threshold elsewhere */
      float scaled = g * a0;
      return x >= 0.0f ? -scaled : scaled;
    }
    case 5:
      return g;
    case 6: /* g * slope * exp(-beta * |x - 1|) */
      return g * a1 * expf(-a0 * fabsf(x - 1.0f));
    default: /* no surrogate: no gradient through the spikes */
      return 0.0f;
  }
}

#endif
