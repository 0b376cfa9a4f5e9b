/* One inner step of Q's fit (CLUB's variational nets): the gradient of the weighted negative
 * log-likelihood for every parameter of one Q, in one pass over the rows.
 *
 * Why it exists: the torch form of this step (sea_dist/model/club_fit.py, _NetFit.gradients)
 * is five skinny matmuls and ~15 elementwise passes over [64, rows] buffers; on a CPU half of
 * its time is spent streaming those buffers and dispatching kernels, not multiplying. Here a
 * tile of TILE x LANES rows goes through the whole step (forward, loss derivative, backward)
 * before the next tile starts: activations are computed in vector registers, the tile's
 * intermediates stay in L1/L2, and the weight gradients are accumulated per tile in registers.
 *
 * The shapes are compile-time constants (-DDX= -DHID= -DDY=, supplied by club_native.py,
 * which compiles one library per shape): the loops over features then unroll and the block's
 * activations stay in registers. Plain C with GCC/Clang vector extensions: no intrinsics, so
 * any x86-64 or ARM compiler builds it for whatever vector width the CPU has.
 *
 * Layouts (float32, all contiguous) are those of club_fit.py's _NetFit:
 *   x_t [DX][stride], y_t [DY][stride], weight [stride]: rows along the columns, stride a
 *   multiple of LANES; padding rows carry weight 0 (and zeros), which makes every gradient
 *   term and loss term of theirs exactly 0.
 *   params / grad: w1 [2*HID][DX] (mu's hidden units first), b1 [2*HID],
 *   w2 [2][DY][HID] (mu head, logvar head), b2 [2][DY].
 *
 * The arithmetic follows _NetFit.gradients: logvar = tanh(z) = 2 sigmoid(2z) - 1,
 * exp(-logvar) = exp(1 - 2 sg), dL/dmu = w d exp(-logvar),
 * dL/dz = (2w - 2 d dL/dmu) (sg - sg^2); gradients scaled by `scale` at the end.
 */
#include <stddef.h>
#include <string.h>

#ifndef DX
#error "compile with -DDX=<input width> -DHID=<hidden width> -DDY=<output width>"
#endif
#if DX % 8 || DY % 2
#error "the input layer's gradient takes 8 inputs at a time and the output layer 2 outputs"
#endif
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#ifndef TILE
#define TILE 8 /* vectors of rows per tile: the tile's intermediates stay in L1/L2 */
#endif
#define H2 (2 * HID)

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef float vf_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));
typedef int vi __attribute__((vector_size(4 * LANES)));

static inline vf load(const float *p) { return *(const vf_unaligned *)p; }
static inline vf splat(float s) { return (vf){0} + s; }
/* lane by lane: mask ? a : b (C has no ?: on vectors; a comparison yields 0 / -1 lanes) */
static inline vf where(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* c[0] x^(n-1) + ... + c[n-1], by Horner's rule (the loop unrolls: n is a constant). */
static inline vf horner(vf x, const float *c, int n) {
    vf p = splat(c[0]);
    for (int i = 1; i < n; i++) p = p * x + splat(c[i]);
    return p;
}

/* exp(x) for x in [-87, 88] (clamped outside), within ~2 ulp: 2^n * p(r), x = n ln2 + r. */
static inline vf vexp(vf x) {
    static const float c[] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                              4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};
    const vf hi = splat(88.0f), lo = splat(-87.0f);
    x = where(x > hi, hi, x);
    x = where(x < lo, lo, x);
    const vf shifter = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf n = (x * splat(1.44269504088896341f) + shifter) - shifter;
    vf r = x - n * splat(0.693359375f); /* ln2 split in two for an exact reduction */
    r = r - n * splat(-2.12194440e-4f);
    const vf p = horner(r, c, 6) * r * r + r + splat(1.0f);
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

/* exp(x) for x in [-1, 1], within ~3e-7 relative: a degree-8 polynomial (Chebyshev fit), no
 * range reduction needed on so short an interval. */
static inline vf exp_unit(vf x) {
    static const float c[] = {2.5499197560e-05f, 2.0469993358e-04f, 1.3882759394e-03f,
                              8.3285961069e-03f, 4.1666886032e-02f, 1.6666798560e-01f,
                              4.9999997255e-01f, 9.9999990094e-01f, 1.0000000005e+00f};
    return horner(x, c, 9);
}

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += v[l];
    return s;
}

/* Per-lane gradient accumulators (summed over lanes once per call) and one tile's
 * intermediates. The caller owns it (club_scratch_bytes(), 64-byte aligned): no hidden state,
 * so concurrent fits in one process cannot share one by accident. */
typedef struct {
    vf g_w1[H2][DX], g_b1[H2], g_w2[2][DY][HID], g_b2[2][DY];
    vf act[H2][TILE], g[2][DY][TILE], g_act[H2][TILE];
} scratch_t;

long club_scratch_bytes(void) { return (long)sizeof(scratch_t); }
/* Rows per vector: the row stride of x_t, y_t and weight must be a multiple of it. */
long club_lanes(void) { return LANES; }

/* The forward pass and the loss derivative for the tile's vectors [0, nv): the ReLU
 * activations into s->act, dL/dmu and dL/dz into s->g. Returns the tile's loss lanes. */
static inline vf forward_tile(scratch_t *s, const float *restrict x_t, const float *restrict y_t,
                              const float *restrict weight, long stride, long t0, int nv,
                              const float *w1, const float *b1, const float *w2, const float *b2, int want_loss) {
    vf loss = splat(0.0f);
    for (int v = 0; v < nv; v++) {
        const long t = t0 + (long)v * LANES;
        vf act[H2];
#pragma GCC unroll 64
        for (int j = 0; j < H2; j++) act[j] = splat(b1[j]);
        for (int k = 0; k < DX; k++) {
            const vf xk = load(x_t + k * stride + t);
#pragma GCC unroll 64
            for (int j = 0; j < H2; j++) act[j] += splat(w1[j * DX + k]) * xk;
        }
#pragma GCC unroll 64
        for (int j = 0; j < H2; j++) {
            act[j] = where(act[j] > 0.0f, act[j], splat(0.0f));
            s->act[j][v] = act[j];
        }
        for (int i = 0; i < DY; i++) {
            vf mu = splat(b2[i]), z = splat(b2[DY + i]);
#pragma GCC unroll 64
            for (int j = 0; j < HID; j++) {
                mu += splat(w2[i * HID + j]) * act[j];
                z += splat(w2[(DY + i) * HID + j]) * act[HID + j];
            }
            s->g[0][i][v] = mu - load(y_t + i * stride + t); /* d, until the pass below */
            s->g[1][i][v] = z;
        }
    }
    /* The loss derivative in its own pass: its iterations are independent, long chains of
     * dependent operations (two exponentials), which overlap only when placed side by side. */
    for (int v = 0; v < nv; v++) {
        const vf w = load(weight + t0 + (long)v * LANES);
#pragma GCC unroll 4
        for (int i = 0; i < DY; i++) {
            const vf d = s->g[0][i][v], z = s->g[1][i][v];
            const vf sg = splat(1.0f) / (splat(1.0f) + vexp(splat(-2.0f) * z));
            const vf g_mu = w * exp_unit(splat(1.0f) - splat(2.0f) * sg) * d;
            s->g[0][i][v] = g_mu;
            s->g[1][i][v] = (splat(2.0f) * w - splat(2.0f) * d * g_mu) * (sg - sg * sg);
            if (want_loss) loss += splat(0.5f) * d * g_mu + splat(0.5f) * w * (splat(2.0f) * sg - splat(1.0f));
        }
    }
    return loss;
}

/* The backward pass of one tile into the accumulators. */
static inline void backward_tile(scratch_t *s, const float *restrict x_t, long stride, long t0, int nv,
                                 const float *w2) {
    /* output layers: g_w2[h][i][j] += sum_v g[h][i][v] act[h HID + j][v], two i at a time */
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < DY; i += 2) {
            vf acc[2][HID], acc_b[2] = {splat(0.0f), splat(0.0f)};
#pragma GCC unroll 64
            for (int j = 0; j < HID; j++) acc[0][j] = acc[1][j] = splat(0.0f);
            for (int v = 0; v < nv; v++) {
                const vf g0 = s->g[h][i][v], g1 = s->g[h][i + 1][v];
                acc_b[0] += g0;
                acc_b[1] += g1;
#pragma GCC unroll 64
                for (int j = 0; j < HID; j++) {
                    const vf a = s->act[h * HID + j][v];
                    acc[0][j] += g0 * a;
                    acc[1][j] += g1 * a;
                }
            }
#pragma GCC unroll 64
            for (int j = 0; j < HID; j++) {
                s->g_w2[h][i][j] += acc[0][j];
                s->g_w2[h][i + 1][j] += acc[1][j];
            }
            s->g_b2[h][i] += acc_b[0];
            s->g_b2[h][i + 1] += acc_b[1];
        }
    /* hidden units: dL/d(act) through both heads, zero where the ReLU was off */
    for (int v = 0; v < nv; v++) {
        vf g_act[H2];
#pragma GCC unroll 64
        for (int j = 0; j < H2; j++) g_act[j] = splat(0.0f);
        for (int i = 0; i < DY; i++) {
            const vf g0 = s->g[0][i][v], g1 = s->g[1][i][v];
#pragma GCC unroll 64
            for (int j = 0; j < HID; j++) {
                g_act[j] += splat(w2[i * HID + j]) * g0;
                g_act[HID + j] += splat(w2[(DY + i) * HID + j]) * g1;
            }
        }
#pragma GCC unroll 64
        for (int j = 0; j < H2; j++) s->g_act[j][v] = where(s->act[j][v] > 0.0f, g_act[j], splat(0.0f));
    }
    /* input layer: g_w1[j][k] += sum_v g_act[j][v] x[k][v], a 2 x 8 block at a time */
    for (int j = 0; j < H2; j += 2) {
        vf acc_b[2] = {splat(0.0f), splat(0.0f)};
        for (int k = 0; k < DX; k += 8) {
            vf acc[2][8];
#pragma GCC unroll 64
            for (int kk = 0; kk < 8; kk++) acc[0][kk] = acc[1][kk] = splat(0.0f);
            for (int v = 0; v < nv; v++) {
                const long t = t0 + (long)v * LANES;
                const vf g0 = s->g_act[j][v], g1 = s->g_act[j + 1][v];
                if (k == 0) {
                    acc_b[0] += g0;
                    acc_b[1] += g1;
                }
#pragma GCC unroll 64
                for (int kk = 0; kk < 8; kk++) {
                    const vf xk = load(x_t + (k + kk) * stride + t);
                    acc[0][kk] += g0 * xk;
                    acc[1][kk] += g1 * xk;
                }
            }
#pragma GCC unroll 64
            for (int kk = 0; kk < 8; kk++) {
                s->g_w1[j][k + kk] += acc[0][kk];
                s->g_w1[j + 1][k + kk] += acc[1][kk];
            }
        }
        s->g_b1[j] += acc_b[0];
        s->g_b1[j + 1] += acc_b[1];
    }
}

/* The gradient of sum_rows weight * nll(row), times `scale`, into `grad`; returns the
 * unscaled loss sum when want_loss (else 0). */
double club_step(const float *restrict x_t, const float *restrict y_t, const float *restrict weight,
                 long stride, const float *restrict params, float *restrict grad, float scale, int want_loss,
                 void *scratch) {
    const float *w1 = params, *b1 = w1 + H2 * DX, *w2 = b1 + H2, *b2 = w2 + 2 * DY * HID;
    scratch_t *s = (scratch_t *)scratch;
    memset(s->g_w1, 0, sizeof s->g_w1);
    memset(s->g_b1, 0, sizeof s->g_b1);
    memset(s->g_w2, 0, sizeof s->g_w2);
    memset(s->g_b2, 0, sizeof s->g_b2);
    vf loss = splat(0.0f);
    const long vectors = stride / LANES;
    for (long first = 0; first < vectors; first += TILE) {
        const int nv = (int)(vectors - first < TILE ? vectors - first : TILE);
        const long t0 = first * LANES;
        loss += forward_tile(s, x_t, y_t, weight, stride, t0, nv, w1, b1, w2, b2, want_loss);
        backward_tile(s, x_t, stride, t0, nv, w2);
    }
    float *gw1 = grad, *gb1 = gw1 + H2 * DX, *gw2 = gb1 + H2, *gb2 = gw2 + 2 * DY * HID;
    for (int j = 0; j < H2; j++) {
        for (int k = 0; k < DX; k++) gw1[j * DX + k] = scale * hsum(s->g_w1[j][k]);
        gb1[j] = scale * hsum(s->g_b1[j]);
    }
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < DY; i++) {
            for (int j = 0; j < HID; j++) gw2[(h * DY + i) * HID + j] = scale * hsum(s->g_w2[h][i][j]);
            gb2[h * DY + i] = scale * hsum(s->g_b2[h][i]);
        }
    double total = 0.0;
    for (int l = 0; l < LANES; l++) total += loss[l];
    return total;
}
