/* Leaky integrate-and-fire over a whole sequence: forward and backward loops.
 *
 * The same float operations, in the same order, as snncompile/runtime/fused.py
 * (leaky_scan and leaky_backward), so the spikes and membranes are identical to
 * the eager kernels and to snnTorch's step loop; gradients agree up to float
 * summation order. Build with -ffp-contract=off (no fused multiply-add: each
 * product rounds on its own, as in PyTorch's elementwise kernels).
 *
 * Layout: a step holds E = rows * cols elements, row-major; records are [T, E].
 * Elements are independent, so work is split into blocks of one row and up to
 * BLOCK columns, each block run through all T steps with its state in L1.
 *
 * reset: 0 subtract  mem = b * mem + I - reset * thr
 *        1 zero      mem = b * ((1 - reset) * mem) + I
 *        2 none      mem = b * mem + I
 * spk[t] = (mem[t] - thr > 0), reset[t] = spk[t - 1], reset[0] = (0 - thr > 0).
 *
 * surrogate (dS/dx at x = mem - thr, times the incoming gradient g):
 *        0 none (no gradient through spikes)  1 atan(alpha)
 *        2 fast_sigmoid(slope)  3 sigmoid(slope)  4 triangular(threshold)
 *        5 straight_through  6 spike_rate_escape(beta, slope)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 256

/* Records are [T, E]: a block reads a short piece of each step, too short for
 * the hardware prefetcher, so the loops ask for the pieces they read next (the
 * forward: the next step's; the backward: the next block's, every step). */
static inline void prefetch(const float *data, int n, int write) {
  if (!data) return;
  for (int j = 0; j < n; j += 16) {
    if (write) {
      __builtin_prefetch(data + j, 1);
    } else {
      __builtin_prefetch(data + j, 0);
    }
  }
}

static inline float leaky_step(float mem, float cur, float flag, float b,
                               float thr, int reset) {
  float out;
  if (reset == 1) {
    out = (1.0f - flag) * mem;
    out = b * out;
    out = out + cur;
  } else {
    out = b * mem;
    out = out + cur;
    if (reset == 0) out = out - flag * thr;
  }
  return out;
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

/* Forward: spk [T, E] (and mem [T, E] unless NULL) from cur, [E] when constant
 * (the same input at every step) or [T, E]. */
void snn_leaky_forward(const float *cur, int constant, int64_t steps,
                       int64_t rows, int64_t cols, float b, float thr,
                       int reset, float *spk, float *mem, int threads) {
  const int64_t numel = rows * cols;
  const int64_t per_row = (cols + BLOCK - 1) / BLOCK;
  const float first = (0.0f - thr > 0.0f) ? 1.0f : 0.0f;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < rows * per_row; block++) {
    const int64_t start = block / per_row * cols + block % per_row * BLOCK;
    const int64_t col = block % per_row * BLOCK;
    const int n = (int)(cols - col < BLOCK ? cols - col : BLOCK);
    float state[BLOCK], flag[BLOCK];
    for (int j = 0; j < n; j++) {
      state[j] = 0.0f;
      flag[j] = first;
    }
    for (int64_t t = 0; t < steps; t++) {
      const float *in = cur + (constant ? 0 : t * numel) + start;
      float *s = spk + t * numel + start;
      float *m = mem ? mem + t * numel + start : NULL;
      if (t + 1 < steps) {
        if (!constant) prefetch(in + numel, n, 0);
        prefetch(s + numel, n, 1);
        if (m) prefetch(m + numel, n, 1);
      }
      for (int j = 0; j < n; j++) {
        float out = leaky_step(state[j], in[j], flag[j], b, thr, reset);
        float fired = (out - thr > 0.0f) ? 1.0f : 0.0f;
        state[j] = out;
        flag[j] = fired;
        s[j] = fired;
      }
      if (m) memcpy(m, state, n * sizeof(float));
    }
  }
}

/* Backward from the last step to the first; see leaky_backward in fused.py.
 *
 * mem: the membrane record [T, E], or NULL to recompute it from cur and spk
 * (constant input only). grad_spk, grad_mem: [T, E] or NULL. through_grad
 * [T, rows, K] and through_weight [K, cols], or NULL: the gradient of a linear
 * layer fed by these spikes; the spike gradient it sends back, sum_k
 * through_grad[t, r, k] * through_weight[k, c], is formed here step by step.
 * grad_weight [K, cols] (NULL: not wanted): that layer's weight gradient,
 * sum over t and r of through_grad[t, r, k] * spk[t, r, c]; scratch holds
 * threads * K * cols floats for it.
 * Returns 0, or -1 when a thread's buffer could not be allocated.
 * Outputs: grad_cur ([E] summed over steps when constant, else [T, E]; NULL:
 * not wanted); if `sums`, out_sums[0] = dL/db and out_sums[1] = dL/dthr (scalar
 * parameters).
 *
 * One pass over a block per step, without branches in it: a missing input
 * reads zeros (x + 0 and 1 * x are exact), so the loop vectorizes. */
typedef struct {
  const float *cur, *spk, *mem, *grad_spk, *grad_mem, *through_grad,
      *through_weight;
  float *grad_cur, *scratch;
  int64_t steps, rows, cols, k_out;
  float b, thr, a0, a1;
  int constant, reset, surrogate, sums;
} Backward;

static inline __attribute__((always_inline)) void backward_block(
    const int kind, const Backward *p, int64_t block, float *buffer,
    float *weight_part, double *b_total, double *thr_total) {
  const int64_t numel = p->rows * p->cols, steps = p->steps;
  /* blocks go down the rows of one column chunk: the linear layer's weight
     slice for the chunk stays in cache */
  const int64_t row = block % p->rows, col = block / p->rows * BLOCK;
  const int64_t start = row * p->cols + col;
  const int n = (int)(p->cols - col < BLOCK ? p->cols - col : BLOCK);
  const float b = p->b, thr = p->thr, a0 = p->a0, a1 = p->a1;
  const float zero_reset = p->reset == 1 ? 1.0f : 0.0f;
  const float first = (0.0f - thr > 0.0f) ? 1.0f : 0.0f;
  float after[BLOCK], total[BLOCK], b_acc[BLOCK], fire_acc[BLOCK],
      reset_acc[BLOCK], sent[BLOCK], zeros[BLOCK], firsts[BLOCK], sink[BLOCK];
  for (int j = 0; j < BLOCK; j++) {
    after[j] = total[j] = b_acc[j] = fire_acc[j] = reset_acc[j] = 0.0f;
    sent[j] = zeros[j] = 0.0f;
    firsts[j] = first;
  }
  if (row + 1 < p->rows) { /* the next block's pieces of every record */
    for (int64_t t = 0; t < steps; t++) {
      const int64_t next = t * numel + start + p->cols;
      prefetch(p->spk + next, n, 0);
      if (p->mem) prefetch(p->mem + next, n, 0);
      if (p->grad_spk) prefetch(p->grad_spk + next, n, 0);
      if (p->grad_mem) prefetch(p->grad_mem + next, n, 0);
    }
  }
  if (!p->mem) { /* recompute the membranes exactly as the forward did */
    float state[BLOCK];
    for (int j = 0; j < n; j++) state[j] = 0.0f;
    for (int64_t t = 0; t < steps; t++) {
      const float *in = p->cur + (p->constant ? 0 : t * numel) + start;
      const float *flags = t ? p->spk + (t - 1) * numel + start : firsts;
      float *out = buffer + t * BLOCK;
      for (int j = 0; j < n; j++) {
        state[j] = leaky_step(state[j], in[j], flags[j], b, thr, p->reset);
        out[j] = state[j];
      }
    }
  }
  for (int64_t t = steps - 1; t >= 0; t--) {
    const float *m = p->mem ? p->mem + t * numel + start : buffer + t * BLOCK;
    const float *s = p->spk + t * numel + start;
    const float *gs = p->grad_spk ? p->grad_spk + t * numel + start : zeros;
    const float *gm = p->grad_mem ? p->grad_mem + t * numel + start : zeros;
    const float *flags = t ? p->spk + (t - 1) * numel + start : firsts;
    const float *prev = !t ? zeros
                      : p->mem ? p->mem + (t - 1) * numel + start
                               : buffer + (t - 1) * BLOCK;
    float *gc = (p->grad_cur && !p->constant) ? p->grad_cur + t * numel + start
                                              : sink;
    if (p->through_grad) {
      const float *g_out = p->through_grad + (t * p->rows + row) * p->k_out;
      for (int j = 0; j < n; j++) sent[j] = 0.0f;
      for (int64_t k = 0; k < p->k_out; k++) {
        const float gk = g_out[k];
        const float *w = p->through_weight + k * p->cols + col;
        for (int j = 0; j < n; j++) sent[j] += gk * w[j];
        if (weight_part) {
          float *gw = weight_part + k * p->cols + col;
          for (int j = 0; j < n; j++) gw[j] += gk * s[j];
        }
      }
    }
    for (int j = 0; j < n; j++) {
      float d = surrogate_grad(kind, m[j] - thr, gs[j] + sent[j], a0, a1);
      fire_acc[j] += d;
      d = d + gm[j];
      d = d + b * (1.0f - zero_reset * s[j]) * after[j]; /* f[t+1] d[t+1] */
      b_acc[j] += d * ((1.0f - zero_reset * flags[j]) * prev[j]);
      reset_acc[j] += d * flags[j];
      total[j] += d;
      gc[j] = d;
      after[j] = d;
    }
  }
  if (p->grad_cur && p->constant) {
    memcpy(p->grad_cur + start, total, n * sizeof(float));
  }
  if (!p->sums) return;
  double b_sum = 0.0, thr_sum = 0.0;
  for (int j = 0; j < n; j++) {
    b_sum += b_acc[j];
    thr_sum -= fire_acc[j];
    if (p->reset == 0) thr_sum -= reset_acc[j];
  }
  *b_total += b_sum;
  *thr_total += thr_sum;
}

int snn_leaky_backward(const float *cur, int constant, const float *spk,
                        const float *mem, int64_t steps, int64_t rows,
                        int64_t cols, float b, float thr, int reset,
                        int surrogate, float a0, float a1,
                        const float *grad_spk, const float *grad_mem,
                        const float *through_grad, const float *through_weight,
                        int64_t k_out, float *grad_weight, float *scratch,
                        float *grad_cur, int sums, double *out_sums,
                        int threads) {
  const Backward p = {cur, spk, mem, grad_spk, grad_mem, through_grad,
                      through_weight, grad_cur, scratch, steps, rows, cols,
                      k_out, b, thr, a0, a1, constant, reset,
                      ((grad_spk || through_grad) ? surrogate : 0), sums};
  const int64_t blocks = rows * ((cols + BLOCK - 1) / BLOCK);
  double b_total = 0.0, thr_total = 0.0;
  int failed = 0;
  if (grad_weight) memset(scratch, 0, threads * k_out * cols * sizeof(float));
#pragma omp parallel num_threads(threads) reduction(+ : b_total, thr_total)
  {
    float *buffer = (!mem) ? malloc(steps * BLOCK * sizeof(float)) : NULL;
    if (!mem && !buffer) {
#pragma omp atomic write
      failed = 1;
    }
    float *weight_part = NULL;
#ifdef _OPENMP
    if (grad_weight) weight_part = scratch + omp_get_thread_num() * k_out * cols;
#else
    if (grad_weight) weight_part = scratch;
#endif
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {
      int stop;
#pragma omp atomic read
      stop = failed;
      if (stop) continue; /* every thread still meets the loop's barrier */
      switch (p.surrogate) { /* one specialized loop per surrogate */
        case 1: backward_block(1, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 2: backward_block(2, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 3: backward_block(3, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 4: backward_block(4, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 5: backward_block(5, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 6: backward_block(6, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        default: backward_block(0, &p, block, buffer, weight_part, &b_total, &thr_total);
      }
    }
    free(buffer);
  }
  if (grad_weight) { /* the threads' partial sums, in thread order */
    memcpy(grad_weight, scratch, k_out * cols * sizeof(float));
    for (int i = 1; i < threads; i++) {
      const float *part = scratch + i * k_out * cols;
      for (int64_t e = 0; e < k_out * cols; e++) grad_weight[e] += part[e];
    }
  }
  out_sums[0] = b_total;
  out_sums[1] = thr_total;
  return failed ? -1 : 0;
}
