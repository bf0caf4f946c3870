/* Every neuron type over a sequence: forward and backward loops.
 *
 * The forward runs the float operations of the `step` of each class in
 * snncompile/runtime/neurons.py in the same order (identical spikes and
 * states; build with -ffp-contract=off). The backward is the gradient of those
 * steps derived by hand (the reset detached, spikes through the surrogate), as
 * autograd's up to float summation order. One loop over blocks of elements and
 * steps, with the type's step inlined. Parameters are per column (one sample's
 * features; a scalar comes repeated): params [P, cols].
 *
 * Layout: a step holds E = rows * cols elements; state s at step t is
 * states[s * plane + t * E + e]. A call runs `steps` steps from `init` (the
 * states before its first step, `init_plane` apart; NULL: a sequence's zero
 * start), so a layer whose feedback is a matrix product (computed outside and
 * passed as `rec`) runs one step per call.
 *
 * f = H(mem - thr) of the state entering a step (the reset, detached); sp =
 * the spike of the previous step (0 at a sequence's start; else equal to f);
 * R = the feedback: sp * V (rec 1), rec[t] (rec 2) or none (rec 0); reset 0
 * subtract, 1 zero, 2 none; spk = H(mem - thr), for alif H(mem - (thr + adapt
 * a)). Types (parameters P, states S):
 *   0 leaky    P b thr           S mem
 *        mem = b mem + I - f thr | b ((1 - f) mem) + I | b mem + I
 *   1 rleaky   P b thr V         S mem      (also lapicque: b its decay, I its
 *        m = b mem + I + R                   scaled input; and li: thr inf)
 *        mem = m - f thr | m - f m | m
 *   2 synaptic P a b thr V       S syn mem
 *        syn = a syn + I + R;  m = b mem + syn;  mem = m - f thr | m - m f | m
 *   3 cuba     P a b thr         S syn mem
 *        syn = a syn + I;  mem = b (mem - f thr) + syn | b ((1 - f) mem) + syn
 *        | b mem + syn
 *   4 alpha    P a b thr tau     S exc inh mem    (as runtime Alpha)
 *   5 alif     P b thr rho adapt V   S a mem      (as runtime ALIF)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "snn.h"

/* The reset and feedback kinds are branches inside the loops (if-converted to
 * selects), not a copy of each loop per kind: that keeps the compile short. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-unswitch-loops")
#endif

#define NBLOCK 128 /* elements per block: its states and sums stay in L1 */
#define MAXS 3     /* states */
#define MAXP 5     /* parameters */
#define MAXC 3     /* gradients carried from a step to the one before */

enum { LEAKY, RLEAKY, SYNAPTIC, CUBA, ALPHA, ALIF, TYPES };
static const int STATES[TYPES] = {1, 1, 2, 2, 3, 2};
static const int PARAMS[TYPES] = {2, 3, 4, 3, 4, 5};

int snn_neuron_states(int type) {
  return type >= 0 && type < TYPES ? STATES[type] : 0;
}

int snn_neuron_params(int type) {
  return type >= 0 && type < TYPES ? PARAMS[type] : 0;
}

static inline float heaviside(float x) { return x > 0.0f ? 1.0f : 0.0f; }

/* One step of one element: s (the states) advanced; returns the spike. */
static inline __attribute__((always_inline)) float step_forward(
    const int type, const int reset, const int rec, const int first,
    float *s, const float in, const float rc, const float *P) {
  switch (type) {
    case LEAKY: {
      const float b = P[0], thr = P[1], m = s[0], f = heaviside(m - thr);
      float out;
      if (reset == 1) {
        out = b * ((1.0f - f) * m) + in;
      } else {
        out = b * m + in;
        if (reset == 0) out = out - f * thr;
      }
      s[0] = out;
      return heaviside(out - thr);
    }
    case RLEAKY: {
      const float b = P[0], thr = P[1], V = P[2], m = s[0];
      const float f = heaviside(m - thr), sp = first ? 0.0f : f;
      float mm = b * m + in;
      if (rec == 1) mm = mm + sp * V;
      if (rec == 2) mm = mm + rc;
      const float out = reset == 0 ? mm - f * thr : reset == 1 ? mm - f * mm : mm;
      s[0] = out;
      return heaviside(out - thr);
    }
    case SYNAPTIC: {
      const float a = P[0], b = P[1], thr = P[2], V = P[3];
      const float f = heaviside(s[1] - thr), sp = first ? 0.0f : f;
      float syn = a * s[0] + in;
      if (rec == 1) syn = syn + sp * V;
      if (rec == 2) syn = syn + rc;
      const float mm = b * s[1] + syn;
      const float out = reset == 0 ? mm - f * thr : reset == 1 ? mm - mm * f : mm;
      s[0] = syn;
      s[1] = out;
      return heaviside(out - thr);
    }
    case CUBA: {
      const float a = P[0], b = P[1], thr = P[2], m = s[1];
      const float f = heaviside(m - thr);
      const float syn = a * s[0] + in;
      float out;
      if (reset == 0) {
        out = b * (m - f * thr) + syn;
      } else if (reset == 1) {
        out = b * ((1.0f - f) * m) + syn;
      } else {
        out = b * m + syn;
      }
      s[0] = syn;
      s[1] = out;
      return heaviside(out - thr);
    }
    case ALPHA: {
      const float a = P[0], b = P[1], thr = P[2], tau = P[3];
      const float exc = s[0], inh = s[1], f = heaviside(s[2] - thr);
      float ne = a * exc + in, ni = b * inh - in, nm = tau * (ne + ni);
      if (reset == 0) {
        ne = ne - thr * f;
        ni = ni - (b * inh - in) * f;
        nm = nm - (-inh) * f;
      } else if (reset == 1) {
        ne = ne - ne * f;
        ni = ni - ni * f;
        nm = nm - nm * f;
      }
      s[0] = ne;
      s[1] = ni;
      s[2] = nm;
      return heaviside(nm - thr);
    }
    default: { /* ALIF */
      const float b = P[0], thr = P[1], rho = P[2], adapt = P[3], V = P[4];
      const float ad = s[0], m = s[1], last = thr + adapt * ad;
      const float f = heaviside(m - last), sp = first ? 0.0f : f;
      const float an = rho * ad + (1.0f - rho) * sp;
      float c = in;
      if (rec == 1) c = c + sp * V;
      if (rec == 2) c = c + rc;
      float out;
      if (reset == 0) {
        out = b * m + c - f * last;
      } else if (reset == 1) {
        out = b * ((1.0f - f) * m) + c;
      } else {
        out = b * m + c;
      }
      s[0] = an;
      s[1] = out;
      return heaviside(out - (thr + adapt * an));
    }
  }
}

/* The spike's input x = mem - thr (alif: mem - (thr + adapt a)) after a step,
 * and the gradient reaching the spike: gs and what the step after sends back
 * through it (a one-to-one feedback, alif's adaptation). */
static inline __attribute__((always_inline)) float spike_input(
    const int type, const float *now, const float *P, const float gs,
    const float *c, float *g) {
  switch (type) {
    case LEAKY:
      *g = gs;
      return now[0] - P[1];
    case RLEAKY:
      *g = gs + c[1];
      return now[0] - P[1];
    case SYNAPTIC:
      *g = gs + c[2];
      return now[1] - P[2];
    case CUBA:
      *g = gs;
      return now[1] - P[2];
    case ALPHA:
      *g = gs;
      return now[2] - P[2];
    default: /* ALIF */
      *g = gs + c[2];
      return now[1] - (P[1] + P[3] * now[0]);
  }
}

/* g * S'(x) over a block: one loop per surrogate, the switch outside. */
static void surrogate_block(int kind, const float *x, float *g, int n,
                            float a0, float a1) {
  switch (kind) {
#define SURROGATE_LOOP(KIND) \
  case KIND:                 \
    for (int j = 0; j < n; j++) g[j] = surrogate_grad(KIND, x[j], g[j], a0, a1); \
    break;
    SURROGATE_LOOP(1)
    SURROGATE_LOOP(2)
    SURROGATE_LOOP(3)
    SURROGATE_LOOP(4)
    SURROGATE_LOOP(5)
    SURROGATE_LOOP(6)
#undef SURROGATE_LOOP
    default:
      for (int j = 0; j < n; j++) g[j] = 0.0f;
  }
}

/* The gradient of one step of one element, from the last step to the first:
 * prev and now the states before and after it, dx the gradient of the spike's
 * input (surrogate_block), gm the membrane's, c the gradients carried from the
 * step after (updated for the step before). Adds the parameters' gradients to
 * g; returns dL/dI (= dL/dR where there is feedback). */
static inline __attribute__((always_inline)) float step_backward(
    const int type, const int reset, const int rec, const int first,
    const float *prev, const float *now, const float in, const float *P,
    const float dx, const float gm, float *c, float *g) {
  switch (type) {
    case LEAKY: {
      const float b = P[0], thr = P[1], mp = prev[0], f = heaviside(mp - thr);
      const float d = gm + dx + c[0];
      g[0] += d * (reset == 1 ? (1.0f - f) * mp : mp);
      g[1] += -dx - (reset == 0 ? d * f : 0.0f);
      c[0] = b * (reset == 1 ? 1.0f - f : 1.0f) * d;
      return d;
    }
    case RLEAKY: {
      const float b = P[0], thr = P[1], V = P[2], mp = prev[0];
      const float f = heaviside(mp - thr), sp = first ? 0.0f : f;
      const float dmem = gm + dx + c[0];
      const float dm = reset == 1 ? dmem * (1.0f - f) : dmem;
      g[0] += dm * mp;
      g[1] += -dx - (reset == 0 ? dmem * f : 0.0f);
      if (rec == 1) g[2] += dm * sp;
      c[0] = b * dm;
      c[1] = rec == 1 ? V * dm : 0.0f;
      return dm;
    }
    case SYNAPTIC: {
      const float a = P[0], b = P[1], thr = P[2], V = P[3];
      const float yp = prev[0], mp = prev[1];
      const float f = heaviside(mp - thr), sp = first ? 0.0f : f;
      const float dmem = gm + dx + c[0];
      const float dm = reset == 1 ? dmem * (1.0f - f) : dmem;
      const float dsyn = dm + c[1];
      g[0] += dsyn * yp;
      g[1] += dm * mp;
      g[2] += -dx - (reset == 0 ? dmem * f : 0.0f);
      if (rec == 1) g[3] += dsyn * sp;
      c[0] = b * dm;
      c[1] = a * dsyn;
      c[2] = rec == 1 ? V * dsyn : 0.0f;
      return dsyn;
    }
    case CUBA: {
      const float a = P[0], b = P[1], thr = P[2], yp = prev[0], mp = prev[1];
      const float f = heaviside(mp - thr);
      const float dmem = gm + dx + c[0];
      const float dsyn = dmem + c[1];
      g[0] += dsyn * yp;
      g[1] += dmem * (reset == 0   ? mp - f * thr
                      : reset == 1 ? (1.0f - f) * mp
                                   : mp);
      g[2] += -dx - (reset == 0 ? dmem * b * f : 0.0f);
      c[0] = b * (reset == 1 ? 1.0f - f : 1.0f) * dmem;
      c[1] = a * dsyn;
      return dsyn;
    }
    case ALPHA: {
      const float a = P[0], b = P[1], thr = P[2], tau = P[3];
      const float ep = prev[0], ip = prev[1], f = heaviside(prev[2] - thr);
      const float dmem = gm + dx, dexc = c[0], dinh = c[1];
      const float keep = reset == 1 ? 1.0f - f : 1.0f;
      const float dnm = dmem * keep;
      const float dne = dexc * keep + tau * dnm, dni = dinh * keep + tau * dnm;
      g[0] += dne * ep;
      g[1] += dni * ip;
      g[2] += -dx - (reset == 0 ? dexc * f : 0.0f);
      g[3] += dnm * ((a * ep + in) + (b * ip - in));
      float dip = b * dni, di = dne - dni;
      if (reset == 0) { /* inh - (b inh_prev - I) f and mem + inh_prev f */
        dip += f * dmem - b * f * dinh;
        g[1] += -ip * f * dinh;
        di += f * dinh;
      }
      c[0] = a * dne;
      c[1] = dip;
      return di;
    }
    default: { /* ALIF */
      const float b = P[0], thr = P[1], rho = P[2], adapt = P[3], V = P[4];
      const float ap = prev[0], mp = prev[1], an = now[0];
      const float f = heaviside(mp - (thr + adapt * ap)), sp = first ? 0.0f : f;
      const float dmem = gm + dx + c[0];
      const float da = c[1] - adapt * dx;
      g[0] += dmem * (reset == 1 ? (1.0f - f) * mp : mp);
      g[1] += -dx - (reset == 0 ? f * dmem : 0.0f);
      g[2] += da * (ap - sp);
      g[3] += -dx * an - (reset == 0 ? f * dmem * ap : 0.0f);
      if (rec == 1) g[4] += dmem * sp;
      c[0] = b * (reset == 1 ? 1.0f - f : 1.0f) * dmem;
      c[1] = rho * da - (reset == 0 ? adapt * f * dmem : 0.0f);
      c[2] = (1.0f - rho) * da + (rec == 1 ? V * dmem : 0.0f);
      return dmem;
    }
  }
}

typedef struct {
  int type, reset, rec, constant, kind;
  float a0, a1;
  const float *cur, *recs, *params, *init, *grad_spk, *grad_mem;
  int64_t steps, rows, cols, init_plane, plane;
  float *spk, *states, *carry, *grad_cur, *scratch;
} Job;

/* block -> (first element, first column, elements) */
static inline int64_t block_start(const Job *p, int64_t block, int64_t *col,
                                  int *n) {
  const int64_t per_row = (p->cols + NBLOCK - 1) / NBLOCK;
  *col = block % per_row * NBLOCK;
  *n = (int)(p->cols - *col < NBLOCK ? p->cols - *col : NBLOCK);
  return block / per_row * p->cols + *col;
}

static inline __attribute__((always_inline)) void forward_block(
    const int type, const Job *p, int64_t block) {
  int64_t col;
  int n;
  const int64_t start = block_start(p, block, &col, &n);
  const int64_t E = p->rows * p->cols;
  const int ns = STATES[type], np = PARAMS[type];
  /* A missing input reads zeros (never a select on a NULL pointer in a
   * vector loop: a masked load there costs a microcode assist per vector). */
  float st[MAXS][NBLOCK], par[MAXP][NBLOCK], zeros[NBLOCK] = {0};
  for (int k = 0; k < np; k++) {
    memcpy(par[k], p->params + k * p->cols + col, n * sizeof(float));
  }
  for (int k = 0; k < ns; k++) {
    if (p->init) {
      memcpy(st[k], p->init + k * p->init_plane + start, n * sizeof(float));
    } else {
      memset(st[k], 0, n * sizeof(float));
    }
  }
  for (int64_t t = 0; t < p->steps; t++) {
    const float *in = p->cur + (p->constant ? 0 : t * E) + start;
    const float *rc = p->recs ? p->recs + t * E + start : zeros;
    const int first = !p->init && t == 0;
    float *spk = p->spk + t * E + start;
    for (int j = 0; j < n; j++) {
      float s[MAXS], P[MAXP];
      for (int k = 0; k < ns; k++) s[k] = st[k][j];
      for (int k = 0; k < np; k++) P[k] = par[k][j];
      spk[j] = step_forward(type, p->reset, p->rec, first, s, in[j], rc[j], P);
      for (int k = 0; k < ns; k++) st[k][j] = s[k];
    }
    for (int k = 0; k < ns; k++) {
      memcpy(p->states + k * p->plane + t * E + start, st[k], n * sizeof(float));
    }
  }
}

static inline __attribute__((always_inline)) void backward_block(
    const int type, const Job *p, int64_t block, float *sums) {
  int64_t col;
  int n;
  const int64_t start = block_start(p, block, &col, &n);
  const int64_t E = p->rows * p->cols;
  const int ns = STATES[type], np = PARAMS[type];
  float par[MAXP][NBLOCK], car[MAXC][NBLOCK], grad[MAXP][NBLOCK],
      total[NBLOCK], shifted[NBLOCK], dx[NBLOCK], zeros[NBLOCK] = {0},
      sink[NBLOCK];
  for (int k = 0; k < np; k++) {
    memcpy(par[k], p->params + k * p->cols + col, n * sizeof(float));
  }
  for (int k = 0; k < MAXC; k++) {
    if (p->carry) {
      memcpy(car[k], p->carry + k * E + start, n * sizeof(float));
    } else {
      memset(car[k], 0, n * sizeof(float));
    }
  }
  for (int k = 0; k < MAXP; k++) {
    for (int j = 0; j < n; j++) grad[k][j] = 0.0f;
  }
  for (int j = 0; j < n; j++) total[j] = 0.0f;
  for (int64_t t = p->steps - 1; t >= 0; t--) {
    const int first = !p->init && t == 0;
    const float *now = p->states + t * E + start;
    const float *before = t ? p->states + (t - 1) * E + start
                            : (p->init ? p->init + start : zeros);
    const int64_t before_plane = t ? p->plane : (p->init ? p->init_plane : 0);
    const float *in = p->cur + (p->constant ? 0 : t * E) + start;
    const float *gs = p->grad_spk ? p->grad_spk + t * E + start : zeros;
    const float *gm = p->grad_mem ? p->grad_mem + t * E + start : zeros;
    float *gc = (p->grad_cur && !p->constant) ? p->grad_cur + t * E + start
                                              : sink;
    for (int j = 0; j < n; j++) { /* the spikes' inputs and gradients */
      float cur_states[MAXS], P[MAXP], c[MAXC];
      for (int k = 0; k < ns; k++) cur_states[k] = now[k * p->plane + j];
      for (int k = 0; k < np; k++) P[k] = par[k][j];
      for (int k = 0; k < MAXC; k++) c[k] = car[k][j];
      shifted[j] = spike_input(type, cur_states, P, gs[j], c, &dx[j]);
    }
    surrogate_block(p->kind, shifted, dx, n, p->a0, p->a1);
    for (int j = 0; j < n; j++) {
      float prev[MAXS], cur_states[MAXS], P[MAXP], c[MAXC], g[MAXP];
      for (int k = 0; k < ns; k++) {
        prev[k] = before[k * before_plane + j];
        cur_states[k] = now[k * p->plane + j];
      }
      for (int k = 0; k < np; k++) {
        P[k] = par[k][j];
        g[k] = 0.0f;
      }
      for (int k = 0; k < MAXC; k++) c[k] = car[k][j];
      const float d = step_backward(type, p->reset, p->rec, first, prev,
                                    cur_states, in[j], P, dx[j], gm[j], c, g);
      for (int k = 0; k < MAXC; k++) car[k][j] = c[k];
      for (int k = 0; k < np; k++) grad[k][j] += g[k];
      total[j] += d;
      gc[j] = d;
    }
  }
  if (p->carry) {
    for (int k = 0; k < MAXC; k++) {
      memcpy(p->carry + k * E + start, car[k], n * sizeof(float));
    }
  }
  if (p->grad_cur && p->constant) {
    for (int j = 0; j < n; j++) p->grad_cur[start + j] += total[j];
  }
  if (sums) {
    for (int k = 0; k < np; k++) {
      for (int j = 0; j < n; j++) sums[k * p->cols + col + j] += grad[k][j];
    }
  }
}

static void forward_blocks(const Job *p, int threads) {
  const int64_t blocks = p->rows * ((p->cols + NBLOCK - 1) / NBLOCK);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < blocks; block++) {
    switch (p->type) { /* a loop for each type */
      case LEAKY: forward_block(LEAKY, p, block); break;
      case RLEAKY: forward_block(RLEAKY, p, block); break;
      case SYNAPTIC: forward_block(SYNAPTIC, p, block); break;
      case CUBA: forward_block(CUBA, p, block); break;
      case ALPHA: forward_block(ALPHA, p, block); break;
      default: forward_block(ALIF, p, block);
    }
  }
}

static void backward_blocks(const Job *p, int threads) {
  const int64_t blocks = p->rows * ((p->cols + NBLOCK - 1) / NBLOCK);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < blocks; block++) {
    int thread = 0;
#ifdef _OPENMP
    thread = omp_get_thread_num();
#endif
    float *sums = p->scratch ? p->scratch + thread * PARAMS[p->type] * p->cols
                             : NULL;
    switch (p->type) { /* a loop for each type */
      case LEAKY: backward_block(LEAKY, p, block, sums); break;
      case RLEAKY: backward_block(RLEAKY, p, block, sums); break;
      case SYNAPTIC: backward_block(SYNAPTIC, p, block, sums); break;
      case CUBA: backward_block(CUBA, p, block, sums); break;
      case ALPHA: backward_block(ALPHA, p, block, sums); break;
      default: backward_block(ALIF, p, block, sums);
    }
  }
}

/* Forward of `steps` steps: spk [steps, E] and the states' records (see the
 * top). cur: [steps, E], or [E] when `constant`; rec: [steps, E] or NULL. */
int snn_neuron_forward(int type, int reset, int rec, const float *cur,
                       int constant, const float *recs, int64_t steps,
                       int64_t rows, int64_t cols, const float *params,
                       const float *init, int64_t init_plane, float *spk,
                       float *states, int64_t plane, int threads) {
  if (type < 0 || type >= TYPES) return -1;
  const Job p = {type, reset, rec, constant, 0, 0.0f, 0.0f, cur, recs,
                 params, init, NULL, NULL, steps, rows, cols, init_plane,
                 plane, spk, states, NULL, NULL, NULL};
  forward_blocks(&p, threads);
  return 0;
}

/* Backward of the `steps` steps that snn_neuron_forward ran from `init`:
 * grad_spk, grad_mem [steps, E] or NULL; carry [MAXC, E]: the gradients from
 * the step after (read, then the ones for the step before written), or NULL
 * (zeros, a sequence's end). Outputs: grad_cur [steps, E] (dL/dI), or [E] when
 * `constant` (added to); grad_params [P, cols] (added to; NULL: not wanted),
 * with scratch room for threads * P * cols floats. Returns 0, -1 when out of
 * range. */
int snn_neuron_backward(int type, int reset, int rec, int kind, float a0,
                        float a1, const float *cur, int constant,
                        int64_t steps, int64_t rows, int64_t cols,
                        const float *params, const float *init,
                        int64_t init_plane, const float *states, int64_t plane,
                        const float *grad_spk, const float *grad_mem,
                        float *carry, float *grad_cur, float *grad_params,
                        float *scratch, int threads) {
  if (type < 0 || type >= TYPES) return -1;
  const int64_t np = PARAMS[type];
  if (grad_params) memset(scratch, 0, threads * np * cols * sizeof(float));
  const Job p = {type, reset, rec, constant, kind, a0, a1, cur, NULL, params,
                 init, grad_spk, grad_mem, steps, rows, cols, init_plane,
                 plane, NULL, (float *)states, carry, grad_cur,
                 grad_params ? scratch : NULL};
  backward_blocks(&p, threads);
  if (grad_params) { /* the threads' partial sums, in thread order */
    for (int i = 0; i < threads; i++) {
      const float *part = scratch + i * np * cols;
      for (int64_t e = 0; e < np * cols; e++) grad_params[e] += part[e];
    }
  }
  return 0;
}
