/* Cross entropy with its gradient in one pass, for the per-step losses.
 *
 * Row r of logits [rows, classes] is scored against label targets[r % period]
 * (the labels of one batch, repeated for every step of a flattened [T * B, C]
 * record):
 *
 *   loss = scale * sum_r (log sum_c exp(z[r, c]) - z[r, y_r])
 *   grad[r, c] = scale * (softmax(z[r])[c] - 1[c == y_r])
 *
 * The same values as torch's log_softmax and nll_loss up to float rounding
 * (each row is shifted by its maximum first, as there). torch's CPU log_softmax
 * over rows of a few classes runs a loop built for long rows; this is one pass
 * that also leaves the gradient, so the backward is a multiplication. */
#include <math.h>
#include <stdint.h>

/* e^x in float, within about 2 ulp of expf: e^x = 2^n e^r with n = round(x /
 * ln 2) and |r| <= ln 2 / 2, e^r from its degree-7 Taylor-like polynomial (the
 * minimax coefficients of the Cephes library's expf). Branch-free, so that a
 * loop of it vectorizes; NaN stays NaN, below -87.3 the result is 0. */
static inline float exp_poly(float x) {
  const float low = -87.3f, big = 12582912.0f; /* 1.5 * 2^23: rounds to int */
  const float clamped = x < low ? low : x;
  const float n = (clamped * 1.44269504088896341f + big) - big;
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { float f; int32_t i; } bits = {p};
  bits.i += (int32_t)n << 23;
  const float out = x < low ? 0.0f : bits.f;
  return x != x ? x : out;
}

/* Returns 0, or 1 + r for the first label r (of `period`) outside [0, classes).
 * work [rows, classes] receives the gradient (scratch when it is not wanted);
 * *loss receives the loss. */
int snn_cross_entropy(const float *logits, const int64_t *targets, int64_t rows,
                      int64_t classes, int64_t period, float scale, float *work,
                      double *loss) {
  for (int64_t r = 0; r < period; r++) {
    if (targets[r] < 0 || targets[r] >= classes) return (int)(1 + r);
  }
  double total = 0.0;
  for (int64_t r = 0; r < rows; r++) { /* shift each row by its maximum */
    const float *z = logits + r * classes;
    float top = z[0];
    for (int64_t c = 1; c < classes; c++) { /* NaN spreads, as in torch */
      top = (z[c] > top || isnan(z[c])) ? z[c] : top;
    }
    for (int64_t c = 0; c < classes; c++) work[r * classes + c] = z[c] - top;
    total -= work[r * classes + targets[r % period]];
  }
  const int64_t numel = rows * classes;
  for (int64_t i = 0; i < numel; i++) work[i] = exp_poly(work[i]);
  for (int64_t r = 0; r < rows; r++) { /* log-sum and softmax - one-hot */
    float *g = work + r * classes;
    float sum = 0.0f;
    for (int64_t c = 0; c < classes; c++) sum += g[c];
    total += (double)logf(sum);
    const float share = scale / sum;
    for (int64_t c = 0; c < classes; c++) g[c] *= share;
    g[targets[r % period]] -= scale;
  }
  *loss = total * scale;
  return 0;
}
