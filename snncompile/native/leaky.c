/* Leaky integrate-and-fire over a whole sequence: forward and backward loops.
 *
 * The same float operations, in the same order, as snncompile/runtime/fused.py
 * (leaky_scan and leaky_backward), so the spikes and membranes are identical to
 * the eager kernels and to snnTorch's step loop; gradients agree up to float
 * summation order. Build with -ffp-contract=off (no fused multiply-add: each
 * product rounds on its own, as in PyTorch's elementwise kernels); only the
 * panel backward's matrix-product sums use explicit fused multiply-adds. The
 * forward can also form the linear layer after a hidden layer
 * (snn_leaky_forward_linear): that sum runs in its own order, so its outputs
 * agree with a BLAS product's to rounding, not bit for bit.
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

#include "lanes.h"
#include "snn.h"

#define BLOCK 256

/* Floats per vector in this build (see lanes.h). */
int snn_lanes(void) { return LANES; }

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

/* A block's or panel's first n lanes of the per-element sums, added to the
 * scalar parameters' gradients: dL/db, and dL/dthr (minus the surrogate's sum
 * and, for subtract reset, minus the reset's). */
static void add_parameter_sums(const Backward *p, int n, const float *b_acc,
                               const float *fire_acc, const float *reset_acc,
                               double *b_total, double *thr_total) {
  double b_sum = 0.0, thr_sum = 0.0;
  for (int j = 0; j < n; j++) {
    b_sum += b_acc[j];
    thr_sum -= fire_acc[j];
    if (p->reset == 0) thr_sum -= reset_acc[j];
  }
  *b_total += b_sum;
  *thr_total += thr_sum;
}

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
  if (p->sums) {
    add_parameter_sums(p, n, b_acc, fire_acc, reset_acc, b_total, thr_total);
  }
}

/* The hidden layer of a fused Leaky + linear node, in its common form: constant
 * input, membranes recomputed, no other gradient coming in than through the
 * linear layer, a surrogate without exp. Work goes by panels of LANES columns
 * (one vector), each owned by one thread: a panel's weight slice and weight-
 * gradient sums stay in L1 for all rows and steps, each row's membranes are
 * recomputed into a T x LANES buffer, and the spike records are not read (the
 * recomputation gives them again, exactly: the same operations on each lane).
 * The weight gradient needs no per-thread copies to add up. Columns past the
 * last are zero lanes, never written. GCC vector extensions: each operation is
 * the scalar one on every lane (no contraction, as everywhere in this file). */
#define PANEL_K 32 /* the most outputs of the linear layer this path takes */

/* leaky_step on every lane: the same operations in the same order */
static inline __attribute__((always_inline)) vf leaky_lanes(
    int reset, vf mem, vf cur, vf flag, float b, float thr) {
  if (reset == 1) return b * ((1.0f - flag) * mem) + cur;
  vf out = b * mem + cur;
  if (reset == 0) out = out - flag * thr;
  return out;
}

static inline __attribute__((always_inline)) vf panel_surrogate(
    const int kind, vf x, vf g, float a0) {
  const vf zero = {0};
  switch (kind) {
    case 1: { /* as surrogate_grad: alpha / 2 / (1 + u^2) * g */
      const vf u = (float)(M_PI / 2 * a0) * x;
      return splat(a0 / 2.0f) / (1.0f + u * u) * g;
    }
    case 2: {
      const vf s = a0 * (vf)((vi)x & 0x7fffffff) + 1.0f;
      return g / (s * s);
    }
    case 4: { /* -g * threshold where x >= 0: the sign bit flipped */
      const vf scaled = g * a0;
      return (vf)((vi)scaled ^ ((x >= 0.0f) & (int32_t)0x80000000));
    }
    case 5:
      return g;
    default:
      return zero;
  }
}

static int panel_kind(int surrogate) {
  return surrogate == 0 || surrogate == 1 || surrogate == 2 ||
         surrogate == 4 || surrogate == 5;
}

/* The linear layer's weight gradient in a panel, sum over t and r of
 * grad[t, r, k] * spk[t, r, c], from the spikes alone (each is 0 or 1): per
 * spike, its gradient row is added to its neuron's sums. Spikes are few (a
 * tenth of the neurons per step, typically), so this costs a fraction of a
 * dense product's multiply-adds, on every vector width. `grad`: the incoming
 * gradient [T * rows, kv] (vectors, zero past k_out); `sums`: [LANES, kv]. */
typedef struct {
  const vf *grad;
  vf *sums, *dense; /* by spikes [LANES, kv]; by products [k_out] */
  int64_t kv;
  int32_t *lanes, *rows; /* per listed spike: its lane, its gradient row */
} Spikes;

/* Whether adding a gradient row per spike costs less than the products, for
 * `count` spikes in `cells` rows-and-steps of a panel: per cell, k_out
 * multiply-adds and broadcasts against listing the spikes; per spike, an
 * index, a load, an add and a store per vector (counts of instructions; on
 * AVX-512 the products win at mnist_fc's tenth of neurons firing, on AVX2 and
 * SSE2 the spikes). */
static inline int spikes_pay(int64_t count, int64_t cells, int64_t k_out,
                             int64_t kv) {
  const int64_t products = cells * k_out * (SNN_HAS_FMA ? 2 : 3);
  return cells * 6 + count * (7 + 2 * kv) < products;
}

static inline __attribute__((always_inline)) void add_spike_rows(
    const vf *restrict grad, vf *restrict sums, const int64_t kv,
    const int32_t *lanes, const int32_t *rows, int64_t count) {
  for (int64_t i = 0; i < count; i++) {
    const vf *g = grad + rows[i] * kv;
    vf *a = sums + lanes[i] * kv;
    for (int64_t v = 0; v < kv; v++) a[v] += g[v];
  }
}

/* Rows row0 .. row0 + R - 1 of one panel. R rows at a time: every chain over
 * the steps (the membrane, the gradient through it, each sum) has R
 * independent copies to overlap. Work: 3 * steps * R vectors. `full`: the
 * sums for dL/db and dL/dthr, and zero reset; without, the loop leaves out what
 * is then zero or one. */
static inline __attribute__((always_inline)) void panel_rows(
    const int kind, const int R, const int full, const Backward *p,
    int64_t row0, int64_t col, int n, vf *restrict work, const vf *weight,
    const Spikes *acc, vf *sums) {
  const int64_t steps = p->steps, rows = p->rows, cols = p->cols,
                k_out = p->k_out;
  const float b = p->b, thr = p->thr, a0 = p->a0;
  const float zero_reset = p->reset == 1 ? 1.0f : 0.0f;
  const vf zero = {0}, first = splat((0.0f - thr > 0.0f) ? 1.0f : 0.0f);
  vf *restrict mems = work, *restrict fired = work + steps * R,
               *restrict sent = work + 2 * steps * R;
  vf in[R], state[R], flag[R];
  for (int r = 0; r < R; r++) {
    in[r] = load_lanes(p->cur + (row0 + r) * cols + col, n);
    state[r] = zero;
    flag[r] = first;
  }
  int64_t count = 0; /* spikes */
  for (int64_t t = 0; t < steps; t++) { /* the forward, exactly */
    for (int r = 0; r < R; r++) {
      state[r] = leaky_lanes(p->reset, state[r], in[r], flag[r], b, thr);
      const vi test = state[r] - thr > 0.0f;
      flag[r] = ones_where(test);
      mems[t * R + r] = state[r];
      fired[t * R + r] = flag[r];
      if (acc) count += count_lanes(test, n);
    }
  }
  /* what the linear layer sends back, and its weight gradient */
  for (int64_t t = 0; t < steps; t++) {
    const float *g_out = p->through_grad + (t * rows + row0) * k_out;
    vf s[R];
    for (int r = 0; r < R; r++) s[r] = zero;
    for (int64_t k = 0; k < k_out; k++) {
      for (int r = 0; r < R; r++) {
        s[r] = fmadd(splat(g_out[r * k_out + k]), weight[k], s[r]);
      }
    }
    for (int r = 0; r < R; r++) sent[t * R + r] = s[r];
  }
  if (acc && spikes_pay(count, steps * R, k_out, acc->kv)) {
    int64_t listed = 0; /* the weight gradient: each spike's gradient row */
    for (int64_t t = 0; t < steps; t++) {
      for (int r = 0; r < R; r++) {
        const vi at = {0};
        const vi test = fired[t * R + r] > 0.0f;
        *(viu *)(acc->rows + listed) = at + (int32_t)(t * rows + row0 + r);
        listed += list_lanes(test, n, 0, acc->lanes + listed);
      }
    }
    if (acc->kv == 1) {
      add_spike_rows(acc->grad, acc->sums, 1, acc->lanes, acc->rows, listed);
    } else {
      add_spike_rows(acc->grad, acc->sums, acc->kv, acc->lanes, acc->rows,
                     listed);
    }
  } else if (acc) { /* the weight gradient by products */
    for (int64_t k = 0; k < k_out; k++) {
      vf part[R];
      for (int r = 0; r < R; r++) part[r] = zero;
      for (int64_t t = 0; t < steps; t++) {
        const float *g_out = p->through_grad + (t * rows + row0) * k_out + k;
        for (int r = 0; r < R; r++) {
          part[r] = fmadd(splat(g_out[r * k_out]), fired[t * R + r], part[r]);
        }
      }
      for (int r = 0; r < R; r++) acc->dense[k] += part[r];
    }
  }
  /* the gradient back through the steps */
  vf after[R], total[R], b_acc[R], fire_acc[R], reset_acc[R];
  for (int r = 0; r < R; r++) {
    after[r] = total[r] = b_acc[r] = fire_acc[r] = reset_acc[r] = zero;
  }
  for (int64_t t = steps - 1; t >= 0; t--) {
    for (int r = 0; r < R && !full; r++) { /* subtract or no reset, no sums */
      vf d = panel_surrogate(kind, mems[t * R + r] - thr, sent[t * R + r], a0);
      d = d + b * after[r]; /* b * (1 - 0 * s) * after, the same value */
      total[r] += d;
      after[r] = d;
    }
    for (int r = 0; r < R && full; r++) {
      const vf s = fired[t * R + r];
      const vf f = t ? fired[(t - 1) * R + r] : first;
      const vf before = t ? mems[(t - 1) * R + r] : zero;
      vf d = panel_surrogate(kind, mems[t * R + r] - thr, sent[t * R + r], a0);
      fire_acc[r] += d;
      d = d + b * (1.0f - zero_reset * s) * after[r];
      b_acc[r] += d * ((1.0f - zero_reset * f) * before);
      reset_acc[r] += d * f;
      total[r] += d;
      after[r] = d;
    }
  }
  for (int r = 0; r < R; r++) {
    if (p->grad_cur) {
      store_lanes(p->grad_cur + (row0 + r) * cols + col, total[r], n);
    }
    sums[0] += b_acc[r];
    sums[1] += fire_acc[r];
    sums[2] += reset_acc[r];
  }
}

#define PANEL_ROWS 4

static inline __attribute__((always_inline)) void backward_panel(
    const int kind, const Backward *p, int64_t panel, vf *work,
    const Spikes *spikes, float *grad_weight, double *b_total,
    double *thr_total) {
  const int64_t cols = p->cols, k_out = p->k_out, col = panel * LANES;
  const int n = (int)(cols - col < LANES ? cols - col : LANES);
  const vf zero = {0};
  vf weight[PANEL_K], sums[3] = {zero, zero, zero};
  for (int64_t k = 0; k < k_out; k++) {
    weight[k] = load_lanes(p->through_weight + k * cols + col, n);
  }
  const Spikes *acc = grad_weight ? spikes : NULL;
  if (acc) {
    memset(acc->sums, 0, LANES * acc->kv * sizeof(vf));
    memset(acc->dense, 0, k_out * sizeof(vf));
  }
  const int full = p->sums || p->reset == 1;
  int64_t row = 0;
  for (; row + PANEL_ROWS <= p->rows; row += PANEL_ROWS) {
    if (full) {
      panel_rows(kind, PANEL_ROWS, 1, p, row, col, n, work, weight, acc, sums);
    } else {
      panel_rows(kind, PANEL_ROWS, 0, p, row, col, n, work, weight, acc, sums);
    }
  }
  for (; row < p->rows; row++) {
    if (full) {
      panel_rows(kind, 1, 1, p, row, col, n, work, weight, acc, sums);
    } else {
      panel_rows(kind, 1, 0, p, row, col, n, work, weight, acc, sums);
    }
  }
  if (acc) { /* both sums -> grad_weight [k_out, cols] */
    for (int j = 0; j < n; j++) {
      const float *from = (const float *)(acc->sums + j * acc->kv);
      for (int64_t k = 0; k < k_out; k++) {
        grad_weight[k * cols + col + j] = acc->dense[k][j] + from[k];
      }
    }
  }
  if (p->sums) {
    add_parameter_sums(p, n, (const float *)&sums[0], (const float *)&sums[1],
                       (const float *)&sums[2], b_total, thr_total);
  }
}

static int backward_panels(const Backward *p, float *grad_weight, int threads,
                           double *out_sums) {
  const int64_t panels = (p->cols + LANES - 1) / LANES;
  const int64_t kv = (p->k_out + LANES - 1) / LANES, steps = p->steps;
  const int64_t grad_rows = steps * p->rows;
  double b_total = 0.0, thr_total = 0.0;
  int failed = 0;
  vf *grad = NULL; /* the incoming gradient [T * rows, kv], zero past k_out */
  if (grad_weight) {
    if (posix_memalign((void **)&grad, sizeof(vf), grad_rows * kv * sizeof(vf))) {
      return -1;
    }
    memset(grad, 0, grad_rows * kv * sizeof(vf));
    for (int64_t i = 0; i < grad_rows; i++) {
      memcpy(grad + i * kv, p->through_grad + i * p->k_out,
             p->k_out * sizeof(float));
    }
  }
#pragma omp parallel num_threads(threads) reduction(+ : b_total, thr_total)
  {
    vf *work = NULL, *sums = NULL, dense[PANEL_K];
    const size_t size = 3 * PANEL_ROWS * steps * sizeof(vf);
    const size_t listed = PANEL_ROWS * steps * LANES + LANES;
    int32_t *lanes = NULL, *rows = NULL;
    if (posix_memalign((void **)&work, sizeof(vf), size)) work = NULL;
    if (grad_weight) {
      if (posix_memalign((void **)&sums, sizeof(vf), LANES * kv * sizeof(vf))) {
        sums = NULL;
      }
      lanes = malloc(listed * sizeof(int32_t));
      rows = malloc(listed * sizeof(int32_t));
    }
    if (!work || (grad_weight && (!sums || !lanes || !rows))) {
      set_failed(&failed);
    }
    const Spikes spikes = {grad, sums, dense, kv, lanes, rows};
#pragma omp for schedule(static)
    for (int64_t panel = 0; panel < panels; panel++) {
      if (has_failed(&failed)) continue; /* each thread meets the barrier */
      switch (p->surrogate) { /* specialized loops for the common surrogates */
        case 1: backward_panel(1, p, panel, work, &spikes, grad_weight, &b_total, &thr_total); break;
        case 2: backward_panel(2, p, panel, work, &spikes, grad_weight, &b_total, &thr_total); break;
        default: /* the rarer ones share a loop that switches inside */
          backward_panel(p->surrogate, p, panel, work, &spikes, grad_weight, &b_total, &thr_total);
      }
    }
    free(work);
    free(sums);
    free(lanes);
    free(rows);
  }
  free(grad);
  out_sums[0] = b_total;
  out_sums[1] = thr_total;
  return failed ? -1 : 0;
}

/* Whether snn_leaky_backward_panels takes a linear layer of k_out outputs and
 * this surrogate. */
int snn_leaky_panels_fit(int64_t k_out, int surrogate) {
  return k_out >= 1 && k_out <= PANEL_K && panel_kind(surrogate);
}

/* The backward of a hidden layer with constant input whose spikes feed only a
 * linear layer (see backward_panel); the arguments as in snn_leaky_backward.
 * Only where snn_leaky_panels_fit. Returns 0, or -1 when out of memory. */
int snn_leaky_backward_panels(const float *cur, int64_t steps, int64_t rows,
                              int64_t cols, float b, float thr, int reset,
                              int surrogate, float a0,
                              const float *through_grad,
                              const float *through_weight, int64_t k_out,
                              float *grad_weight, float *grad_cur, int sums,
                              double *out_sums, int threads) {
  const Backward p = {cur, NULL, NULL, NULL, NULL, through_grad,
                      through_weight, grad_cur, NULL, steps, rows, cols,
                      k_out, b, thr, a0, 0.0f, 1, reset, surrogate, sums};
  return backward_panels(&p, grad_weight, threads, out_sums);
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
    if (!mem && !buffer) set_failed(&failed);
    float *weight_part = NULL;
#ifdef _OPENMP
    if (grad_weight) weight_part = scratch + omp_get_thread_num() * k_out * cols;
#else
    if (grad_weight) weight_part = scratch;
#endif
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {
      if (has_failed(&failed)) continue; /* each thread meets the barrier */
      switch (p.surrogate) { /* specialized loops for the common surrogates */
        case 1: backward_block(1, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        case 2: backward_block(2, &p, block, buffer, weight_part, &b_total, &thr_total); break;
        default: /* the rarer ones share a loop that switches inside */
          backward_block(p.surrogate, &p, block, buffer, weight_part, &b_total, &thr_total);
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

/* One row's step of the neurons for snn_leaky_forward_linear: panels of LANES
 * columns (the last may be partial), state and flag updated, spikes (and
 * membranes when `record`) stored (spikes unless spk is NULL), the fired
 * neurons listed; returns how many fired. `reset` and `record` are constants
 * where inlined. */
static inline __attribute__((always_inline)) int64_t linear_step(
    const int reset, const int record, const float *in, int64_t cols,
    vf *state, vf *flag, float b, float thr, float *spk, float *mem,
    int32_t *list) {
  const int64_t full = cols / LANES;
  int64_t fired = 0;
  for (int64_t p = 0; p <= full; p++) {
    const int64_t col = p * LANES;
    const int n = p < full ? LANES : (int)(cols - col);
    if (n == 0) break;
    const vf x = load_lanes(in + col, n);
    const vf st = leaky_lanes(reset, state[p], x, flag[p], b, thr);
    const vi test = st - thr > 0.0f;
    const vf spikes = ones_where(test);
    state[p] = st;
    flag[p] = spikes;
    if (spk) store_lanes(spk + col, spikes, n);
    if (record) store_lanes(mem + col, st, n);
    fired += list_lanes(test, n, (int32_t)col, list + fired);
  }
  return fired;
}

/* The sum of w[list[i] * stride] over the `fired` listed neurons, the i-th
 * into sum i mod 4, the four sums as (0 + 1) + (2 + 3). */
static inline __attribute__((always_inline)) vf sum_fired(
    const vf *w, const int64_t stride, const int32_t *list, int64_t fired) {
  const vf zero = {0};
  vf s0 = zero, s1 = zero, s2 = zero, s3 = zero;
  int64_t i = 0;
  for (; i + 4 <= fired; i += 4) {
    s0 += w[list[i] * stride];
    s1 += w[list[i + 1] * stride];
    s2 += w[list[i + 2] * stride];
    s3 += w[list[i + 3] * stride];
  }
  if (i < fired) s0 += w[list[i] * stride];
  if (i + 1 < fired) s1 += w[list[i + 1] * stride];
  if (i + 2 < fired) s2 += w[list[i + 2] * stride];
  return (s0 + s1) + (s2 + s3);
}

/* Forward of a Leaky layer and the linear layer its spikes feed, in one pass:
 * spk [T, rows, cols] and mem exactly as snn_leaky_forward (either may be NULL:
 * not recorded), and out [T, rows, k_out] = spk[t, r] @ weight^T + bias, weight
 * [k_out, cols], bias [k_out] or NULL, k_out <= PANEL_K. A spike is 0 or 1, so
 * an output is the sum of the weights of the neurons that fired: per row and
 * step, their numbers are listed (in order, without branches) as the neurons
 * are updated, then their weight columns are added, the i-th into sum i mod 4,
 * the four sums as (0 + 1) + (2 + 3), then the bias. The order is fixed: the
 * result does not depend on the thread count; it may differ from a BLAS
 * product's by rounding. No spike record needs writing or reading again (a
 * training step's 12.8 MB for mnist_fc's hidden layer, and a skinny matrix
 * product over it). Returns 0; 1 (nothing done) when k_out does not fit
 * (snn_leaky_forward_linear_fits); -1 when out of memory. */
int snn_leaky_forward_linear_fits(int64_t k_out) {
  return k_out >= 1 && k_out <= PANEL_K;
}

int snn_leaky_forward_linear(const float *cur, int constant, int64_t steps,
                             int64_t rows, int64_t cols, float b, float thr,
                             int reset, float *spk, float *mem,
                             const float *weight, const float *bias,
                             int64_t k_out, float *out, int threads) {
  const int64_t panels = (cols + LANES - 1) / LANES, numel = rows * cols;
  const int64_t kv = (k_out + LANES - 1) / LANES; /* vectors per neuron */
  const vf zero = {0};
  const vf first = splat((0.0f - thr > 0.0f) ? 1.0f : 0.0f);
  if (!snn_leaky_forward_linear_fits(k_out) || cols > INT32_MAX / 2 - LANES) {
    return 1;
  }
  vf *columns = NULL; /* [cols, kv]: neuron c's k_out weights, zero past */
  if (posix_memalign((void **)&columns, sizeof(vf), cols * kv * sizeof(vf))) {
    return -1;
  }
  memset(columns, 0, cols * kv * sizeof(vf));
  for (int64_t k = 0; k < k_out; k++) {
    for (int64_t c = 0; c < cols; c++) {
      ((float *)(columns + c * kv))[k] = weight[k * cols + c];
    }
  }
  const int mode = reset * 2 + (mem != NULL);
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    /* one row's state and flag per panel, and one step's list of spikes */
    vf *work = NULL;
    int32_t *list = malloc((cols + LANES) * sizeof(int32_t));
    if (posix_memalign((void **)&work, sizeof(vf), 2 * panels * sizeof(vf))) {
      work = NULL;
    }
    if (!work || !list) set_failed(&failed);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; row++) {
      if (has_failed(&failed)) continue; /* each thread meets the barrier */
      vf *state = work, *flag = work + panels;
      for (int64_t p = 0; p < panels; p++) {
        state[p] = zero;
        flag[p] = first;
      }
      for (int64_t t = 0; t < steps; t++) {
        const int64_t at = t * numel + row * cols;
        const float *in = cur + (constant ? row * cols : at);
        float *s = spk ? spk + at : NULL, *m = mem ? mem + at : NULL;
        int64_t fired;
        switch (mode) { /* a loop for each reset, with and without record */
          case 0: fired = linear_step(0, 0, in, cols, state, flag, b, thr, s, m, list); break;
          case 1: fired = linear_step(0, 1, in, cols, state, flag, b, thr, s, m, list); break;
          case 2: fired = linear_step(1, 0, in, cols, state, flag, b, thr, s, m, list); break;
          case 3: fired = linear_step(1, 1, in, cols, state, flag, b, thr, s, m, list); break;
          case 4: fired = linear_step(2, 0, in, cols, state, flag, b, thr, s, m, list); break;
          default: fired = linear_step(2, 1, in, cols, state, flag, b, thr, s, m, list);
        }
        float *o = out + (t * rows + row) * k_out;
        for (int64_t j = 0; j < kv; j++) { /* the weights of those that fired */
          const vf total = kv == 1 ? sum_fired(columns, 1, list, fired)
                                   : sum_fired(columns + j, kv, list, fired);
          const int64_t n = k_out - j * LANES < LANES ? k_out - j * LANES : LANES;
          for (int64_t k = 0; k < n; k++) {
            o[j * LANES + k] = bias ? total[k] + bias[j * LANES + k] : total[k];
          }
        }
      }
    }
    free(work);
    free(list);
  }
  free(columns);
  return failed ? -1 : 0;
}
