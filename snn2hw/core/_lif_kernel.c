/* The LIF time loops of snn2hw/core/fused.py in one pass over memory.
 *
 * Plain C, called through ctypes (no torch headers, so it builds with any C
 * compiler); scripts/setup compiles it with -ffp-contract=off so that every
 * product and sum is rounded exactly as torch's separate operations round
 * them, which keeps the spikes bit-identical to lif_sequence.
 *
 * Layout: time-major, T steps of N neurons, each step contiguous. A current or
 * incoming gradient with time stride 0 is one step broadcast over T (the
 * direct-encoded first layer), read without materialising it.
 *
 * forward:  hard  u = lam*u*(1-s) + c              soft  u = lam*(u - vth*s) + c
 *           x = u - vth,  s = x > 0,  out = s (if asked),  xs = x (if asked)
 *           counts for hwsim (if nspk is given; made here so that nothing of size N
 *           or T*N is written for them), per thread th of the loop, which the caller
 *           zeroes and sums: nspk[th, n % units] += sum_t s[t, n] (spikes per unit of
 *           a sample), nchg[th] += #{(t >= 1, n) : u[t, n] != u[t-1, n]} (T < 2^22)
 * backward: gs = go + b*gu',  gu = gs*g + a*gu'   (gu' = gu of the next step)
 *           hard a = lam*(1-s), b = -lam*u;  soft a = lam, b = -lam*vth
 *           over a block of steps: carry holds gu' of the step after the block
 *           (zeros after the last step) and is left holding gu of its first
 *           step; gu_out may be xs itself (each x is read before gu replaces it);
 *           gext, if given, is a gradient reaching u from outside (recorded u).
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD() omp_get_thread_num()
#else
#define THREAD() 0
#endif

#define CHUNK 512

/* The backward kernels flush subnormal numbers to zero (x86's FTZ and DAZ bits, set per
 * thread around each loop body and restored): a product below 1.2e-38 (float32) becomes 0
 * instead of a subnormal value, which costs an x86 core ~100 cycles wherever it is made or
 * read. Smooth surrogates with long tails make them (GSG at beta = 10: 0.2% of the fused
 * backward's values, its calls 1.44 vs 1.31 ms); a gradient that small moves no weight.
 * Elsewhere (no SSE) a no-op: the same numbers but for such values. */
#if defined(__SSE2__)
#include <xmmintrin.h>
static inline unsigned subnormals_off(void)
{
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  /* FTZ (bit 15): results; DAZ (bit 6): inputs */
    return csr;
}
static inline void subnormals_restore(unsigned csr) { _mm_setcsr(csr); }
#else
static inline unsigned subnormals_off(void) { return 0; }
static inline void subnormals_restore(unsigned csr) { (void)csr; }
#endif

/* The forward's whole time loop for m <= VN (VN_f32, VN_f64) neurons, in GCC/Clang
 * vector types: u and the counts stay in registers, so a neuron step reads its current
 * and writes its spike (and x), nothing else (storing u and the counts each step made
 * counting cost 1.7 x the plain pass, which is bound by stores). Always inlined with constant flags (and
 * m = VN for full blocks): one branch-free loop per combination. Lanes past m hold
 * c = 0 and are masked out of the counts. The spike is arithmetic on the comparison
 * (0/-1 lanes): a select would compile to a branch, a misprediction per spike. */
#define VN_f32 4  /* 16-byte vectors: the baseline x86-64 and arm64 width; wider ones
                     are split badly by gcc without -m flags (measured 3-5 x slower) */
#define VN_f64 2
typedef float vec_f32 __attribute__((vector_size(VN_f32 * sizeof(float))));
typedef int32_t mask_f32 __attribute__((vector_size(VN_f32 * sizeof(int32_t))));
typedef double vec_f64 __attribute__((vector_size(VN_f64 * sizeof(double))));
typedef int64_t mask_f64 __attribute__((vector_size(VN_f64 * sizeof(int64_t))));

#define WIDE 4  /* vectors per block of the counted pass (the unroll pragmas below: 4) */
#define DEFINE_FWD_BLOCK(T_, SUF)                                                      \
/* m values from p, zeros after them (not returned by value: no vector ABI involved) */ \
static inline __attribute__((always_inline)) void                                      \
load_##SUF(vec_##SUF *v, const T_ *p, int64_t m)                                       \
{                                                                                      \
    *v = (vec_##SUF){0};                                                               \
    __builtin_memcpy(v, p, m * sizeof(T_));                                            \
}                                                                                      \
/* nv (1..WIDE) vectors side by side, m neurons in all (m <= VN when nv = 1, full      \
 * vectors when more): the T-step recurrence of one vector is a chain of dependent     \
 * operations on which the core idles; the counted pass, with more operations per      \
 * step, ran 15-25% slower than the plain one on one vector, and as fast with WIDE     \
 * chains interleaved (4 x 359 x 256 and 4 x 4096 x 256 neurons, one thread).          \
 * nv = 1 is the block as it was (the plain pass). */                                  \
static inline __attribute__((always_inline)) void                                      \
fwd_block_##SUF(int64_t m, const int nv, const T_ *c, int64_t c_ts, T_ *out, T_ *xs,   \
                int64_t N, int64_t T, T_ *own, int64_t f, int64_t units,               \
                mask_##SUF *changes, T_ lam, T_ vth, const int hard,                   \
                const int count, const int has_out, const int has_xs)                  \
{                                                                                      \
    vec_##SUF u[WIDE], s[WIDE], nsb[WIDE], x, ct, one = (T_)1 - (vec_##SUF){0};        \
    int64_t mk[WIDE];                                                                  \
    mask_##SUF live[WIDE];  /* lanes j < mk: all of them in a full block (folded) */   \
    _Pragma("GCC unroll 4")  /* WIDE */                                                \
    for (int k = 0; k < nv; k++) {                                                     \
        mk[k] = m - k * VN_##SUF < VN_##SUF ? m - k * VN_##SUF : VN_##SUF;             \
        for (int j = 0; j < VN_##SUF; j++) live[k][j] = -(j < mk[k]);                  \
        load_##SUF(&u[k], c + k * VN_##SUF, mk[k]);                                    \
        x = u[k] - vth;                                                                \
        s[k] = __builtin_convertvector(-(x > 0), vec_##SUF);                           \
        nsb[k] = s[k];                                                                 \
        if (has_out) __builtin_memcpy(out + k * VN_##SUF, &s[k], mk[k] * sizeof(T_));  \
        if (has_xs) __builtin_memcpy(xs + k * VN_##SUF, &x, mk[k] * sizeof(T_));       \
    }                                                                                  \
    for (int64_t t = 1; t < T; t++) {                                                  \
        _Pragma("GCC unroll 4")  /* WIDE */                                            \
        for (int k = 0; k < nv; k++) {                                                 \
            int64_t o = t * N + k * VN_##SUF;                                          \
            load_##SUF(&ct, c + t * c_ts + k * VN_##SUF, mk[k]);                       \
            /* lif_step's own expressions: the same roundings */                       \
            vec_##SUF v = hard ? lam * u[k] * (one - s[k]) + ct                        \
                               : lam * (u[k] - vth * s[k]) + ct;                       \
            if (count) *changes -= (v != u[k]) & live[k];  /* -1 where u changed */    \
            u[k] = v;                                                                  \
            x = u[k] - vth;                                                            \
            s[k] = __builtin_convertvector(-(x > 0), vec_##SUF);                       \
            if (count) nsb[k] += s[k];                                                 \
            if (has_out) __builtin_memcpy(out + o, &s[k], mk[k] * sizeof(T_));         \
            if (has_xs) __builtin_memcpy(xs + o, &x, mk[k] * sizeof(T_));              \
        }                                                                              \
    }                                                                                  \
    _Pragma("GCC unroll 4")  /* WIDE */                                                \
    for (int k = 0; count && k < nv; k++) {                                            \
        int64_t g = f + k * VN_##SUF;  /* neurons i + k VN.. are units g.. */          \
        while (g >= units) g -= units;                                                 \
        if (g + mk[k] <= units) {                                                      \
            vec_##SUF sum;                                                             \
            load_##SUF(&sum, own + g, mk[k]);                                          \
            sum += nsb[k];                                                             \
            __builtin_memcpy(own + g, &sum, mk[k] * sizeof(T_));                       \
        } else for (int64_t j = 0; j < mk[k]; j++) own[(g + j) % units] += nsb[k][j];  \
    }                                                                                  \
}

/* calls fwd_block with constant flags: one specialised loop per combination */
#define FWD_CALL(SUF, m, nv, hard, count, has_out, has_xs)                             \
    fwd_block_##SUF(m, nv, c + n0 + i, c_ts, out ? out + n0 + i : 0, xs ? xs + n0 + i : 0, \
                    N, T, own, f, units,                                               \
                    &changes, lam, vth, hard, count, has_out, has_xs)
#define FWD_XS(SUF, m, nv, hard, count, has_out)                                       \
    if (xs) FWD_CALL(SUF, m, nv, hard, count, has_out, 1);                             \
    else FWD_CALL(SUF, m, nv, hard, count, has_out, 0)
#define FWD_OUT(SUF, m, nv, hard, count)                                               \
    if (out) { FWD_XS(SUF, m, nv, hard, count, 1); }                                   \
    else { FWD_XS(SUF, m, nv, hard, count, 0); }
#define FWD_COUNT(SUF, m, hard)                                                        \
    if (count) { FWD_OUT(SUF, m, 1, hard, 1) }                                         \
    else { FWD_OUT(SUF, m, 1, hard, 0) }
#define FWD(SUF, m)                                                                    \
    if (hard) { FWD_COUNT(SUF, m, 1) }                                                 \
    else { FWD_COUNT(SUF, m, 0) }
/* the counted pass's blocks of WIDE full vectors */
#define FWD_COUNTED_WIDE(SUF)                                                          \
    if (hard) { FWD_OUT(SUF, WIDE * VN_##SUF, WIDE, 1, 1) }                            \
    else { FWD_OUT(SUF, WIDE * VN_##SUF, WIDE, 0, 1) }

#define DEFINE_KERNELS(T_, SUF)                                                        \
DEFINE_FWD_BLOCK(T_, SUF)                                                              \
void lif_forward_##SUF(const T_ *c, int64_t c_ts, T_ *out, T_ *xs, T_ *nspk,           \
                       int64_t *nchg, int64_t units, int64_t T, int64_t N, T_ lam,     \
                       T_ vth, int hard, int nthreads)                                 \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    int count = nspk != 0;                                                             \
    if (T < 1) return;                                                                 \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK, i = 0;          \
        T_ *own = count ? nspk + THREAD() * units : 0;  /* this thread's spike sums */ \
        int64_t f = n0 % units;  /* the unit of neuron n0 + i */                       \
        mask_##SUF changes = {0};  /* per lane over the chunk: < CHUNK * T (T < 2^22) */ \
        for (; count && i + WIDE * VN_##SUF <= len; i += WIDE * VN_##SUF) {            \
            FWD_COUNTED_WIDE(SUF)                                                      \
            for (f += WIDE * VN_##SUF; f >= units; f -= units) {}                      \
        }                                                                              \
        for (; i + VN_##SUF <= len; i += VN_##SUF) {                                   \
            FWD(SUF, VN_##SUF)                                                         \
            for (f += VN_##SUF; f >= units; f -= units) {}                             \
        }                                                                              \
        if (i < len) { FWD(SUF, len - i) }                                             \
        if (count) for (int j = 0; j < VN_##SUF; j++) nchg[THREAD()] += changes[j];    \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* One backward step on len neurons; restrict: the arrays do not overlap. Inlined:    \
 * lif_pool_backward's loop ran 1.4x slower calling it (its FMA clone then vectorises \
 * the step too; no contraction, so the same numbers). */                             \
static inline __attribute__((always_inline)) void bwd_step_##SUF(int64_t len, const T_ *restrict go, const T_ *restrict g,   \
                           const T_ *restrict x, T_ *restrict gun, T_ *restrict gsl,  \
                           T_ lam, T_ vth, int hard)                                   \
{                                                                                      \
    if (hard) for (int64_t i = 0; i < len; i++) {                                      \
        T_ gs = go[i] - lam * (x[i] + vth) * gun[i];                                   \
        T_ a = x[i] > 0 ? (T_)0 : lam;                                                 \
        gsl[i] = gs;                                                                   \
        gun[i] = gs * g[i] + a * gun[i];                                               \
    } else for (int64_t i = 0; i < len; i++) {                                         \
        T_ gs = go[i] - lam * vth * gun[i];                                            \
        gsl[i] = gs;                                                                   \
        gun[i] = gs * g[i] + lam * gun[i];                                             \
    }                                                                                  \
}                                                                                      \
                                                                                       \
void lif_backward_##SUF(const T_ *go, int64_t go_ts, const T_ *g, const T_ *xs,        \
                        const T_ *gext, T_ *gu_out, T_ *gs_out, T_ *carry, int64_t T,  \
                        int64_t N, T_ lam, T_ vth, int hard, int nthreads)             \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        unsigned csr = subnormals_off();  /* per thread: the loop runs on each */      \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ gun[CHUNK], gsl[CHUNK];                                                     \
        for (int64_t i = 0; i < len; i++) gun[i] = carry[n0 + i];                      \
        for (int64_t t = T - 1; t >= 0; t--) {                                         \
            bwd_step_##SUF(len, go + t * go_ts + n0, g + t * N + n0, xs + t * N + n0,  \
                           gun, gsl, lam, vth, hard);                                  \
            if (gext) for (int64_t i = 0; i < len; i++) gun[i] += gext[t * N + n0 + i]; \
            /* written after the step read x: gu_out may be xs */                      \
            for (int64_t i = 0; i < len; i++) gu_out[t * N + n0 + i] = gun[i];         \
            if (gs_out) for (int64_t i = 0; i < len; i++) gs_out[t * N + n0 + i] = gsl[i]; \
        }                                                                              \
        for (int64_t i = 0; i < len; i++) carry[n0 + i] = gun[i];                      \
        subnormals_restore(csr);                                                       \
    }                                                                                  \
}

/* ---- ASGL dual-mode (fused.DualModeValue, methods/asgl.py) --------------------------
 * The LIF loop of ASGL's training forward, s = H_alpha(x) + m (H(x) - H_alpha(x)), and
 * its BPTT, each in one pass (the kernels above take binary spikes only):
 * forward:  u as above with non-binary s (lif_step's expressions), x = u - vth,
 *           ha = clip(x/alpha + 1/2, 0, 1) (torch's division, add and clamp),
 *           s = mode 0: ha;  mode 1: r < p ? (x > 0) : ha;  mode 2: (x > 0)
 *           where r of neuron i at step t is uniform_(keys[t], i) (mode 1 only; keys:
 *           T integers torch drew beforehand); s is written to rs, x to xs if given.
 * uniform:  neuron i's value of a step's stream keyed by k: SplitMix64's output function
 *           (mix64) of k + (i + 1) * 0x9E3779B97F4A7C15 (its state after i + 1 steps from
 *           k), the top 24 bits over 2^24 (float32) or 53 over 2^53 (float64): U[0, 1).
 *           fused.counter_uniforms is its torch twin (the same bits). Made here, per
 *           neuron and step, instead of torch.rand's (T, N) draw: 2.5 ns a value there,
 *           33M values an epoch of the mnist1d conv net, most of ASGL's overhead. Keys
 *           random 63-bit: two steps' streams overlap only if their keys' offset is
 *           within N steps of the golden increment, a chance of about N / 2^63.
 * backward: AsglRect's derivatives at the width alpha, w = |x| < alpha/2:
 *           g = w / alpha,  dp = -w x / (alpha*alpha);  over the whole T (no carry)
 *           gu = go*g + k*gu',  gs = go + b*gu',  gp (if given) = gs*dp per element
 *           hard k = lam*((1-s) - u*g), b = -lam*u (u = x+vth);  soft k = lam*(1 - vth*g),
 *           b = -lam*vth: fused.py's torch backward with its very roundings, so that
 *           training with the kernel reproduces the torch loop's run bit for bit: its
 *           addcmul_ and add(alpha=) are fused multiply-adds on CPUs with FMA (AVX2 and
 *           up, measured), hence fma() for k*gu' and b*gu' (a clone with FMA
 *           instructions where the CPU has them); the caller sums gp as torch would.
 * Each step is a plain loop over a chunk's lanes, inlined with constant flags: its
 * selects vectorise (if-conversion), as the fma() calls do in the FMA clone. */
#if defined(__GNUC__) && !defined(__clang__)
/* GCC: no trapping-math here, so that it may compute AsglRect's derivative and
 * division for every lane and select (else it moves them under a branch and does not
 * vectorise; the values are the same, only FP exception flags could differ) */
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define FMA_CLONES __attribute__((target_clones("fma", "default")))
#endif
#endif
#ifndef FMA_CLONES
#define FMA_CLONES  /* elsewhere fma() is an instruction or a library call: same numbers */
#endif
/* asgl_forward's clones: the mask's 64-bit mixing (uniform_) vectorises with AVX2 and up */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ASGL_FWD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ASGL_FWD_CLONES
#endif
#define FMA_f32 __builtin_fmaf
#define FMA_f64 __builtin_fma
#define ABS_f32 __builtin_fabsf
#define ABS_f64 __builtin_fabs
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
#define GOLDEN64 0x9E3779B97F4A7C15ULL
static inline float uniform_f32(uint64_t key, int64_t i)
{
    /* through int32 (exact below 2^24): a conversion SSE2 and up vectorise */
    return (float)(int32_t)(mix64(key + (uint64_t)(i + 1) * GOLDEN64) >> 40) * 0x1p-24f;
}
static inline double uniform_f64(uint64_t key, int64_t i)
{
    return (double)(mix64(key + (uint64_t)(i + 1) * GOLDEN64) >> 11) * 0x1p-53;
}
#define DEFINE_DUAL_MODE(T_, SUF)                                                      \
/* one forward step on len lanes (neurons i0.. of the step); the flags are constants   \
 * where it is inlined */                                                              \
static inline __attribute__((always_inline)) void                                      \
asgl_fwd_step_##SUF(int64_t len, const T_ *restrict ct, T_ *restrict st,               \
                    T_ *restrict xt, T_ *restrict u, T_ *restrict s, T_ lam, T_ vth,   \
                    T_ alpha, T_ p, uint64_t key, int64_t i0, const int first,         \
                    const int hard, const int mode, const int has_x)                   \
{                                                                                      \
    T_ r[CHUNK];  /* the mask's uniforms, in a loop of their own: integer-only, it vectorises */ \
    if (mode == 1) for (int64_t i = 0; i < len; i++) r[i] = uniform_##SUF(key, i0 + i); \
    for (int64_t i = 0; i < len; i++) {                                                \
        T_ v = first ? ct[i] : hard ? lam * u[i] * ((T_)1 - s[i]) + ct[i]              \
                                    : lam * (u[i] - vth * s[i]) + ct[i];               \
        T_ x = v - vth, ha = x / alpha + (T_)0.5, h = x > 0 ? (T_)1 : (T_)0;           \
        ha = ha < 0 ? (T_)0 : ha;                                                      \
        ha = ha > 1 ? (T_)1 : ha;                                                      \
        T_ sv = mode == 0 ? ha : mode == 2 ? h : r[i] < p ? h : ha;                    \
        u[i] = v;                                                                      \
        s[i] = sv;                                                                     \
        st[i] = sv;                                                                    \
        if (has_x) xt[i] = x;                                                          \
    }                                                                                  \
}                                                                                      \
                                                                                       \
ASGL_FWD_CLONES void asgl_forward_##SUF(const T_ *c, int64_t c_ts, const int64_t *keys, T_ *rs, \
                        T_ *xs, int64_t T, int64_t N, T_ lam, T_ vth, int hard, T_ alpha, \
                        T_ p, int mode, int nthreads)                                  \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ u[CHUNK], s[CHUNK];                                                         \
        for (int64_t t = 0; t < T; t++) {                                              \
            const T_ *ct = c + t * c_ts + n0;                                          \
            T_ *st = rs + t * N + n0, *xt = xs ? xs + t * N + n0 : 0;                  \
            uint64_t key = keys ? (uint64_t)keys[t] : 0;                               \
            ASGL_FWD(SUF, t == 0)                                                      \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* one backward step on len lanes (gun: gu of the next step, replaced by this one's) */ \
static inline __attribute__((always_inline)) void                                      \
asgl_bwd_step_##SUF(int64_t len, const T_ *restrict got, const T_ *restrict xt,        \
                    const T_ *restrict st, T_ *restrict gut, T_ *restrict gpt,         \
                    T_ *restrict gun, T_ lam, T_ vth, T_ nlam, T_ nlamvth, T_ half,    \
                    T_ inv, T_ a2, const int hard, const int has_gp)                   \
{                                                                                      \
    for (int64_t i = 0; i < len; i++) {                                                \
        T_ x = xt[i], gs, kk;                                                          \
        int w = ABS_##SUF(x) < half;                                                   \
        T_ q = -x / a2, g = w ? inv : (T_)0, dp = w ? q : (T_)0;                       \
        if (hard) {                                                                    \
            T_ u = x + vth;                                                            \
            kk = (-(u * g) + ((T_)1 - st[i])) * lam;                                   \
            gs = FMA_##SUF(u * nlam, gun[i], got[i]);                                  \
        } else {                                                                       \
            kk = g * nlamvth + lam;                                                    \
            gs = FMA_##SUF(nlamvth, gun[i], got[i]);                                   \
        }                                                                              \
        gun[i] = FMA_##SUF(kk, gun[i], got[i] * g);                                    \
        gut[i] = gun[i];                                                               \
        if (has_gp) gpt[i] = gs * dp;                                                  \
    }                                                                                  \
}                                                                                      \
                                                                                       \
FMA_CLONES                                                                             \
void asgl_backward_##SUF(const T_ *go, int64_t go_ts, const T_ *xs, const T_ *ss,      \
                         T_ *gu_out, T_ *gp_out, int64_t T, int64_t N, T_ lam, T_ vth,  \
                         T_ nlam, T_ nlamvth, int hard, T_ alpha, int nthreads)        \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    T_ half = (T_)0.5 * alpha, inv = (T_)1 / alpha, a2 = alpha * alpha;                \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        unsigned csr = subnormals_off();  /* per thread: the loop runs on each */      \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ gun[CHUNK];                                                                 \
        for (int64_t i = 0; i < len; i++) gun[i] = 0;                                  \
        for (int64_t t = T - 1; t >= 0; t--) {                                         \
            const T_ *got = go + t * go_ts + n0, *xt = xs + t * N + n0;                \
            const T_ *st = ss + t * N + n0;                                            \
            T_ *gut = gu_out + t * N + n0, *gpt = gp_out ? gp_out + t * N + n0 : 0;    \
            ASGL_BWD(SUF)                                                              \
        }                                                                              \
        subnormals_restore(csr);                                                       \
    }                                                                                  \
}

/* the step loops with constant flags: one branch-free (vectorised) copy per combination */
#define ASGL_FWD_CALL(SUF, first, h, m, x)                                             \
    asgl_fwd_step_##SUF(len, ct, st, xt, u, s, lam, vth, alpha, p, key, n0, first, h, m, x);
#define ASGL_FWD_X(SUF, first, h, m)                                                   \
    if (xt) { ASGL_FWD_CALL(SUF, first, h, m, 1) } else { ASGL_FWD_CALL(SUF, first, h, m, 0) }
#define ASGL_FWD_M(SUF, first, h)                                                      \
    if (mode == 0) { ASGL_FWD_X(SUF, first, h, 0) }                                    \
    else if (mode == 1) { ASGL_FWD_X(SUF, first, h, 1) }                               \
    else { ASGL_FWD_X(SUF, first, h, 2) }
#define ASGL_FWD(SUF, is_first)                                                        \
    if (is_first) { ASGL_FWD_M(SUF, 1, 0) }  /* u = c: the reset kind is unused */     \
    else if (hard) { ASGL_FWD_M(SUF, 0, 1) }                                           \
    else { ASGL_FWD_M(SUF, 0, 0) }
#define ASGL_BWD_CALL(SUF, h, gp)                                                      \
    asgl_bwd_step_##SUF(len, got, xt, st, gut, gpt, gun, lam, vth, nlam, nlamvth, half, \
                        inv, a2, h, gp);
#define ASGL_BWD(SUF)                                                                  \
    if (hard && gpt) { ASGL_BWD_CALL(SUF, 1, 1) }                                      \
    else if (hard) { ASGL_BWD_CALL(SUF, 1, 0) }                                        \
    else if (gpt) { ASGL_BWD_CALL(SUF, 0, 1) }                                         \
    else { ASGL_BWD_CALL(SUF, 0, 0) }

DEFINE_DUAL_MODE(float, f32)
DEFINE_DUAL_MODE(double, f64)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
/* ---- end of ASGL dual-mode ---------------------------------------------------------- */

/* tdBN + LIF + pooling in one pass (snn2hw/core/fusion.py). The neurons are P planes
 * (b, c) of H x W (1-D: H = 1), plane p of channel p % C, each run whole by one thread,
 * so a pooled output has one writer; sbuf holds each thread's spikes of one plane
 * (nthreads x T x H x W, given by the caller).
 *   c = fma(z, alpha, beta) * w + bias   (mode 2: tdBN, rounded as torch's CPU batch_norm
 *   c = (z * alpha + beta) * w + bias     mode 1: the same without fma
 *   c = z                                 mode 0; coef: C x (alpha, beta, w, bias))
 * reset (the argument hard): 0 soft, 1 hard, 2 GSG's soft_nodecay u = lam*u + c - vth*s
 *           (lif_step's expression; lif_forward has no such reset, only this section).
 * forward:  the LIF of lif_forward on c; pooled[t, p, i, j] = (sum of the kh x kw window's
 *           spikes) / div, times mul if mul != 0 (sum pooling is avg_pool * k^d), windows
 *           kernel = stride, rows/columns past the last whole window dropped (floor);
 *           window[i] = 1 + the window of a plane's neuron i, 0 if in none (backward);
 *           xs = x (if given), as lif_forward; us = u (if given: PDA's recorded membranes,
 *           lif_forward_membrane's u bit for bit); counts for hwsim (if nspk is given), as
 *           lif_forward's with units = C x H x W: nspk[th, (p % C) * S + i] += the LIF's own
 *           spikes (before pooling), nchg[th] += its membrane changes at t >= 1.
 * backward: go of a neuron in a window = (gp * mul if mul != 0) / div, else 0; then
 *           lif_backward's step (soft_nodecay: gs = go - vth gu', gu = gs g + lam gu'), gext (if given: u's own gradient) added to gu as there;
 *           with a tdBN, sums[p] += (sum gc, sum gc * xn) over the
 *           plane's neurons and steps, xn = the normalised z of the forward; with dp
 *           (a scalar shape parameter's ds/dp per neuron and step) gpsum[p] += sum gs * dp
 *           over the plane (per lane over the steps in T_, then in double), instead of
 *           writing gs for torch to multiply and sum. */
/* FMA_CLONES, FMA_f32/f64: defined with the ASGL section above (baseline x86-64 has no
 * fma instruction, fmaf would be a libm call per neuron: one clone for CPUs with it) */
#define POOL_CALL(SUF, md, h, cnt)                                                     \
    pool_plane_##SUF(zp, z_ts, sb, S, xp, up, N, T, k, md, lam, vth, h, xs != 0, cnt, own, nc);
#define POOL_RESETS(SUF, md, cnt)                                                      \
    if (hard == 2) POOL_CALL(SUF, md, 2, cnt)                                          \
    else if (hard) POOL_CALL(SUF, md, 1, cnt)                                          \
    else POOL_CALL(SUF, md, 0, cnt)
#define POOL_MODES(SUF, cnt)                                                           \
    if (mode == 2) { POOL_RESETS(SUF, 2, cnt) }                                        \
    else if (mode == 1) { POOL_RESETS(SUF, 1, cnt) }                                   \
    else { POOL_RESETS(SUF, 0, cnt) }
/* pool_block on the neurons i.. of the plane: m of them in nv vectors */
#define POOL_BLOCK(SUF, m, nv)                                                         \
    pool_block_##SUF(m, nv, z + i, z_ts, sb + i, S, has_xs ? xs + i : 0, us ? us + i : 0, \
                     N, T, k, mode, lam, vth, hard, has_xs, count, count ? own + i : 0, nchg);
/* pool_windows with constant kh, kw for the common windows (their loop over oj
 * vectorises), runtime sizes for the rest */
#define POOL_WINDOWS_K(SUF, sb, sts, out, h, w)                                        \
    pool_windows_##SUF(sb, sts, out, P * So, T, H, W, h, w, div, mul);
#define POOL_WINDOWS(SUF, sb, sts, out)                                                \
    if (kh == 1 && kw == 2) { POOL_WINDOWS_K(SUF, sb, sts, out, 1, 2) }                \
    else if (kh == 2 && kw == 2) { POOL_WINDOWS_K(SUF, sb, sts, out, 2, 2) }           \
    else if (kh == 1 && kw == 3) { POOL_WINDOWS_K(SUF, sb, sts, out, 1, 3) }           \
    else if (kh == 3 && kw == 3) { POOL_WINDOWS_K(SUF, sb, sts, out, 3, 3) }           \
    else { POOL_WINDOWS_K(SUF, sb, sts, out, kh, kw) }
#define DEFINE_POOLED(T_, SUF)                                                         \
static inline __attribute__((always_inline)) T_                                        \
norm_##SUF(T_ z, const T_ *k, const int mode)                                          \
{                                                                                      \
    return mode == 2 ? FMA_##SUF(z, k[0], k[1]) : z * k[0] + k[1];                     \
}                                                                                      \
static inline __attribute__((always_inline)) vec_##SUF                                 \
affine_##SUF(vec_##SUF z, const T_ *k, const int mode)                                 \
{                                                                                      \
    if (mode == 0) return z;                                                           \
    vec_##SUF xn;                                                                      \
    for (int j = 0; j < VN_##SUF; j++) xn[j] = norm_##SUF(z[j], k, mode);              \
    return xn * k[2] + k[3];  /* two roundings: TDBatchNorm's mul and add */           \
}                                                                                      \
/* nv (1..WIDE) vectors side by side, m neurons in all: the first nv - 1 full, the last \
 * holding the rest; lif_forward's counted blocks: one vector's T-step chain alone     \
 * leaves the core idle between its dependent operations (T = 16, planes of 20 or 40:  \
 * 1.8 -> 1.1 ns a neuron-step; at T = 4 the core overlaps the short chains itself). */ \
static inline __attribute__((always_inline)) void                                      \
pool_block_##SUF(int64_t m, const int nv, const T_ *z, int64_t z_ts, T_ *sb, int64_t S, \
                 T_ *xs, T_ *us, int64_t N, int64_t T, const T_ *k, const int mode,    \
                 T_ lam, T_ vth, const int hard, const int has_xs, const int count,    \
                 T_ *own, int64_t *nchg)                                               \
{                                                                                      \
    vec_##SUF u[WIDE], s[WIDE], nsb[WIDE], x, ct, one = (T_)1 - (vec_##SUF){0};        \
    int64_t mk[WIDE];                                                                  \
    mask_##SUF live[WIDE], changes = {0};  /* per lane: < WIDE T changes (T < 2^29) */ \
    _Pragma("GCC unroll 4")  /* WIDE */                                                \
    for (int q = 0; q < nv; q++) {                                                     \
        int64_t o = q * VN_##SUF;                                                      \
        mk[q] = q < nv - 1 ? VN_##SUF : m - o;  /* constants: nv and m are */          \
        for (int j = 0; j < VN_##SUF; j++) live[q][j] = -(j < mk[q]);                  \
        load_##SUF(&ct, z + o, mk[q]);                                                 \
        u[q] = affine_##SUF(ct, k, mode);                                              \
        x = u[q] - vth;                                                                \
        s[q] = __builtin_convertvector(-(x > 0), vec_##SUF);                           \
        nsb[q] = s[q];                                                                 \
        __builtin_memcpy(sb + o, &s[q], mk[q] * sizeof(T_));                           \
        if (has_xs) __builtin_memcpy(xs + o, &x, mk[q] * sizeof(T_));                  \
        if (us) __builtin_memcpy(us + o, &u[q], mk[q] * sizeof(T_));  /* not x + vth */ \
    }                                                                                  \
    for (int64_t t = 1; t < T; t++) {                                                  \
        _Pragma("GCC unroll 4")  /* WIDE */                                            \
        for (int q = 0; q < nv; q++) {                                                 \
            int64_t o = q * VN_##SUF;                                                  \
            load_##SUF(&ct, z + t * z_ts + o, mk[q]);  /* lanes past mk: 0 */          \
            ct = affine_##SUF(ct, k, mode);                                            \
            /* lif_step's expressions: the same roundings */                           \
            vec_##SUF v = hard == 2 ? lam * u[q] + ct - vth * s[q]                     \
                        : hard ? lam * u[q] * (one - s[q]) + ct                        \
                               : lam * (u[q] - vth * s[q]) + ct;                       \
            if (count) changes -= (v != u[q]) & live[q];  /* -1 where u changed */     \
            u[q] = v;                                                                  \
            x = u[q] - vth;                                                            \
            s[q] = __builtin_convertvector(-(x > 0), vec_##SUF);                       \
            if (count) nsb[q] += s[q];                                                 \
            __builtin_memcpy(sb + t * S + o, &s[q], mk[q] * sizeof(T_));               \
            if (has_xs) __builtin_memcpy(xs + t * N + o, &x, mk[q] * sizeof(T_));      \
            if (us) __builtin_memcpy(us + t * N + o, &u[q], mk[q] * sizeof(T_));       \
        }                                                                              \
    }                                                                                  \
    if (count) {  /* the LIF's own spikes, before pooling; padded lanes left out */    \
        int64_t n = 0;                                                                 \
        _Pragma("GCC unroll 4")  /* WIDE */                                            \
        for (int q = 0; q < nv; q++)                                                   \
            for (int64_t j = 0; j < mk[q]; j++) own[q * VN_##SUF + j] += nsb[q][j];    \
        for (int j = 0; j < VN_##SUF; j++) n += changes[j];                            \
        *nchg += n;                                                                    \
    }                                                                                  \
}                                                                                      \
/* the plane in blocks of WIDE vectors, then vector by vector, then the rest (m < VN): \
 * every call with a constant m, so that each copy is a few moves (a copy of a runtime \
 * size is a memcpy call per step: on planes of 10 the last two neurons cost as much   \
 * as the other eight). */                                                             \
static inline __attribute__((always_inline)) void                                      \
pool_plane_##SUF(const T_ *z, int64_t z_ts, T_ *sb, int64_t S, T_ *xs, T_ *us, int64_t N, \
                 int64_t T, const T_ *k, const int mode, T_ lam, T_ vth,               \
                 const int hard, const int has_xs, const int count, T_ *own,           \
                 int64_t *nchg)                                                        \
{                                                                                      \
    int64_t i = 0;                                                                     \
    for (; i + WIDE * VN_##SUF <= S; i += WIDE * VN_##SUF)                             \
        POOL_BLOCK(SUF, WIDE * VN_##SUF, WIDE)                                         \
    for (; i + VN_##SUF <= S; i += VN_##SUF)                                           \
        POOL_BLOCK(SUF, VN_##SUF, 1)                                                   \
    if (VN_##SUF > 4)  /* wide vectors (lif_pool_forward_f32w): the rest by fours */   \
        for (; i + 4 <= S; i += 4)                                                     \
            POOL_BLOCK(SUF, VN_##SUF > 4 ? 4 : 1, 1)                                   \
    if (S - i == 1) { POOL_BLOCK(SUF, 1, 1) }                                          \
    else if (S - i == 2) { POOL_BLOCK(SUF, VN_##SUF > 2 ? 2 : 1, 1) }  /* VN 4 only */ \
    else if (S - i == 3) { POOL_BLOCK(SUF, VN_##SUF > 3 ? 3 : 1, 1) }                  \
}                                                                                      \
/* pooled[t * ps + o] = (the sum of window o's values of plane sb, step t at sb +      \
 * t * sts, added in row-major order from 0: avg_pool2d's CPU loop) / div, times mul   \
 * if mul != 0; windows kh x kw, kernel = stride, floor. Inlined with constant kh, kw  \
 * where they are common: the loop of runtime sizes, a division per window, took as    \
 * long as the LIF itself on planes of 20 (perf). */                                   \
static inline __attribute__((always_inline)) void                                      \
pool_windows_##SUF(const T_ *sb, int64_t sts, T_ *pooled, int64_t ps, int64_t T,       \
                   int64_t H, int64_t W, const int64_t kh, const int64_t kw, T_ div,   \
                   T_ mul)                                                             \
{                                                                                      \
    int64_t Ho = H / kh, Wo = W / kw;                                                  \
    for (int64_t t = 0; t < T; t++)                                                    \
        for (int64_t oi = 0; oi < Ho; oi++) {                                          \
            const T_ *r0 = sb + t * sts + oi * kh * W;                                 \
            T_ *out = pooled + t * ps + oi * Wo;                                       \
            for (int64_t oj = 0; oj < Wo; oj++) {                                      \
                T_ acc = 0;                                                            \
                for (int64_t a = 0; a < kh; a++)                                       \
                    for (int64_t b = 0; b < kw; b++) acc += r0[a * W + oj * kw + b];   \
                out[oj] = acc / div;                                                   \
            }                                                                          \
            if (mul != 0) for (int64_t oj = 0; oj < Wo; oj++) out[oj] *= mul;          \
        }                                                                              \
}                                                                                      \
/* G consecutive planes of a row each (H = 1, kw | W, no counts) as one plane of G S neurons: \
 * in memory they follow one another in z, x, u and the pooled output, and no window    \
 * straddles two of them. Planes of 10 took 2.3 ns a neuron against 0.75 for planes of  \
 * 20 (three short vector chains and a window loop per plane). With an affine, c is     \
 * made first into cb, lane by lane with each neuron's coefficients (lanes: 4 rows of   \
 * (C + G) W, channel c's four repeated W times, wrapping past C so a group reads them  \
 * in one run): affine_'s expressions, the same numbers; the LIF then reads c. */      \
static inline __attribute__((always_inline)) void                                      \
pool_group_##SUF(const T_ *z, int64_t z_ts, const T_ *lanes, int64_t C, int mode,      \
                 T_ *pooled, T_ *xs, T_ *us, T_ *sb, T_ *cb, int64_t T, int64_t N,     \
                 int64_t p0, int64_t np_, int64_t W, int64_t kw, int64_t ps, T_ div,   \
                 T_ mul, T_ lam, T_ vth, int hard, int64_t L)                          \
{                                                                                      \
    int64_t SG = np_ * W;                                                              \
    const T_ *zp = z + p0 * W;                                                         \
    int64_t zts = z_ts;                                                                \
    if (mode) {                                                                        \
        const T_ *k0 = lanes + (p0 % C) * W, *k1 = k0 + L, *k2 = k1 + L, *k3 = k2 + L; \
        for (int64_t t = 0; t < T; t++) {                                              \
            const T_ *restrict zt = z + t * z_ts + p0 * W;                             \
            T_ *restrict ct = cb + t * SG;                                             \
            if (mode == 2)                                                             \
                for (int64_t i = 0; i < SG; i++) ct[i] = FMA_##SUF(zt[i], k0[i], k1[i]) * k2[i] + k3[i]; \
            else                                                                       \
                for (int64_t i = 0; i < SG; i++) ct[i] = (zt[i] * k0[i] + k1[i]) * k2[i] + k3[i]; \
        }                                                                              \
        zp = cb, zts = SG;                                                             \
    }                                                                                  \
    T_ *xp = xs ? xs + p0 * W : 0, *up = us ? us + p0 * W : 0;                         \
    if (hard == 2) pool_plane_##SUF(zp, zts, sb, SG, xp, up, N, T, 0, 0, lam, vth, 2, xs != 0, 0, 0, 0); \
    else if (hard) pool_plane_##SUF(zp, zts, sb, SG, xp, up, N, T, 0, 0, lam, vth, 1, xs != 0, 0, 0, 0); \
    else pool_plane_##SUF(zp, zts, sb, SG, xp, up, N, T, 0, 0, lam, vth, 0, xs != 0, 0, 0, 0); \
    T_ *out = pooled + p0 * (W / kw);                                                  \
    if (kw == 2) pool_windows_##SUF(sb, SG, out, ps, T, 1, SG, 1, 2, div, mul);        \
    else if (kw == 3) pool_windows_##SUF(sb, SG, out, ps, T, 1, SG, 1, 3, div, mul);   \
    else pool_windows_##SUF(sb, SG, out, ps, T, 1, SG, 1, kw, div, mul);               \
}                                                                                      \
FMA_CLONES void lif_pool_forward_##SUF(const T_ *z, int64_t z_ts, const T_ *coef, int64_t C,      \
                            int mode, T_ *pooled, T_ *xs, T_ *us, T_ *sbuf, T_ *nspk,  \
                            int64_t *nchg, int64_t T,                                  \
                            int64_t P, int64_t H, int64_t W, int64_t kh, int64_t kw,   \
                            T_ div, T_ mul, T_ lam, T_ vth, int hard, int64_t G,       \
                            T_ *cbuf, int nthreads)                                    \
{                                                                                      \
    int64_t S = H * W, N = P * S, Ho = H / kh, Wo = W / kw, So = Ho * Wo;              \
    if (T < 1) return;                                                                 \
    if (G > 1) {  /* the caller checked H = kh = 1, W % kw = 0, no counts; buffers T G S, \
                     and with an affine cbuf: nthreads T G S, then lanes 4 (C + G) W */ \
        int64_t L = (C + G) * W;                                                       \
        T_ *lanes = mode ? cbuf + nthreads * T * G * S : 0;                            \
        if (mode)                                                                      \
            for (int64_t c = 0; c < C + G; c++)                                        \
                for (int j = 0; j < 4; j++)                                            \
                    for (int64_t i = 0; i < W; i++) lanes[j * L + c * W + i] = coef[4 * (c % C) + j]; \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")             \
        for (int64_t p0 = 0; p0 < P; p0 += G)                                          \
            pool_group_##SUF(z, z_ts, lanes, C, mode, pooled, xs, us, sbuf + THREAD() * T * G * S, \
                             mode ? cbuf + THREAD() * T * G * S : 0, T, N, p0,        \
                             P - p0 < G ? P - p0 : G, W, kw, P * So, div, mul, lam, vth, hard, L); \
        return;                                                                        \
    }                                                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t p = 0; p < P; p++) {                                                  \
        T_ *sb = sbuf + THREAD() * T * S;                                              \
        const T_ *k = coef ? coef + 4 * (p % C) : 0, *zp = z + p * S;                  \
        T_ *xp = xs ? xs + p * S : 0, *up = us ? us + p * S : 0;                       \
        /* this thread's spike sums of the plane's units (channel p % C of C x S) */    \
        T_ *own = nspk ? nspk + THREAD() * C * S + (p % C) * S : 0;                    \
        int64_t *nc = nchg ? nchg + THREAD() : 0;                                      \
        /* constant flags: one specialised loop per combination */                     \
        if (nspk) { POOL_MODES(SUF, 1) } else { POOL_MODES(SUF, 0) }                   \
        POOL_WINDOWS(SUF, sb, S, pooled + p * So)                                      \
    }                                                                                  \
}                                                                                      \
/* bwd_step of GSG's soft_nodecay reset, u = lam*u + c - vth*s: the threshold's term is \
 * not decayed, so b = -vth (soft: -lam*vth); a = lam as soft. */                      \
static inline __attribute__((always_inline)) void nodecay_bwd_step_##SUF(int64_t len, const T_ *restrict go, const T_ *restrict g, \
                                   T_ *restrict gun, T_ *restrict gsl, T_ lam, T_ vth) \
{                                                                                      \
    for (int64_t i = 0; i < len; i++) {                                                \
        T_ gs = go[i] - vth * gun[i];                                                  \
        gsl[i] = gs;                                                                   \
        gun[i] = gs * g[i] + lam * gun[i];                                             \
    }                                                                                  \
}                                                                                      \
/* the BN backward's two per-plane sums over one step of a chunk: sum gc, sum gc * xn,  \
 * xn the normalised z of the forward */                                               \
static inline __attribute__((always_inline)) void                                      \
bn_sums_##SUF(const T_ *gc, const T_ *z, const T_ *k, const int mode, int64_t len,     \
              double *s0, double *s1)                                                  \
{                                                                                      \
    for (int64_t i = 0; i < len; i++) {                                                \
        *s0 += gc[i];                                                                  \
        *s1 += (double)gc[i] * norm_##SUF(z[i], k, mode);                              \
    }                                                                                  \
}                                                                                      \
/* plane q's window gradients, each once per step as avg_pool's backward rounds it:    \
 * gw[1 + t So + o] = (gp * mul if mul != 0) / div; gw[0] = 0 for neurons in no window */ \
static inline __attribute__((always_inline)) void                                      \
window_grads_##SUF(T_ *gw, const T_ *gp, int64_t T, int64_t P, int64_t So, int64_t q,  \
                   T_ div, T_ mul)                                                     \
{                                                                                      \
    gw[0] = 0;                                                                         \
    for (int64_t t = 0; t < T; t++)                                                    \
        for (int64_t o = 0; o < So; o++) {                                             \
            T_ gy = gp[t * P * So + q * So + o];                                       \
            gw[1 + t * So + o] = (mul != 0 ? gy * mul : gy) / div;                     \
        }                                                                              \
}                                                                                      \
FMA_CLONES void lif_pool_backward_##SUF(const T_ *gp, const T_ *g, const T_ *xs, const T_ *gext, \
                             T_ *gu_out, T_ *gs_out, T_ *carry, const T_ *z, int64_t z_ts, \
                             const T_ *coef, int64_t C, int mode, double *sums, T_ *gbuf,  \
                             const int64_t *window,                                    \
                             int64_t T, int64_t P, int64_t H, int64_t W, int64_t kh,   \
                             int64_t kw, T_ div, T_ mul, T_ lam, T_ vth, int hard,     \
                             int nthreads, const T_ *dp, double *gpsum)                \
{                                                                                      \
    int64_t S = H * W, N = P * S, Ho = H / kh, Wo = W / kw, So = Ho * Wo;              \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t p = 0; p < P; p++) {                                                  \
        unsigned csr = subnormals_off();  /* per thread: the loop runs on each */      \
        const T_ *k = coef ? coef + 4 * (p % C) : 0;                                   \
        T_ *gw = gbuf + THREAD() * (T * So + 1);  /* [0]: 0, for neurons in no window */ \
        double s0 = 0, s1 = 0, sp = 0;                                                 \
        window_grads_##SUF(gw, gp, T, P, So, p, div, mul);                             \
        for (int64_t i0 = 0; i0 < S; i0 += CHUNK) {                                    \
            int64_t len = S - i0 < CHUNK ? S - i0 : CHUNK, n0 = p * S + i0;            \
            T_ gun[CHUNK], gsl[CHUNK], gol[CHUNK], gpl[CHUNK];                         \
            const int64_t *at = window + i0;                                           \
            for (int64_t i = 0; i < len; i++) gun[i] = carry[n0 + i];                  \
            if (dp) for (int64_t i = 0; i < len; i++) gpl[i] = 0;                      \
            for (int64_t t = T - 1; t >= 0; t--) {                                     \
                const T_ *gwt = gw + t * So;                                           \
                for (int64_t i = 0; i < len; i++) gol[i] = at[i] ? gwt[at[i]] : gw[0];  \
                if (hard == 2)                                                         \
                    nodecay_bwd_step_##SUF(len, gol, g + t * N + n0, gun, gsl, lam, vth); \
                else bwd_step_##SUF(len, gol, g + t * N + n0, xs + t * N + n0, gun, gsl, \
                                    lam, vth, hard);                                   \
                if (gext) for (int64_t i = 0; i < len; i++) gun[i] += gext[t * N + n0 + i]; \
                for (int64_t i = 0; i < len; i++) gu_out[t * N + n0 + i] = gun[i];     \
                if (gs_out) for (int64_t i = 0; i < len; i++) gs_out[t * N + n0 + i] = gsl[i]; \
                /* the shape parameter's gradient, sum gs dp, per lane over the steps */ \
                if (dp) for (int64_t i = 0; i < len; i++) gpl[i] += gsl[i] * dp[t * N + n0 + i]; \
                if (mode) bn_sums_##SUF(gun, z + t * z_ts + n0, k, mode, len, &s0, &s1); \
            }                                                                          \
            for (int64_t i = 0; i < len; i++) carry[n0 + i] = gun[i];                  \
            if (dp) for (int64_t i = 0; i < len; i++) sp += gpl[i];                    \
        }                                                                              \
        if (mode) { sums[2 * p] += s0; sums[2 * p + 1] += s1; }                        \
        if (dp) gpsum[p] += sp;                                                        \
        subnormals_restore(csr);                                                       \
    }                                                                                  \
}                                                                                      \
/* tdBN's input gradient from that of c, in place: gc = kk0 gc + kk1 xn + kk2 per       \
 * channel (kk: C x 3), over R x C planes of S (z time-major, contiguous). */          \
FMA_CLONES void bn_input_grad_##SUF(T_ *gc, const T_ *z, const T_ *coef, const T_ *kk, int64_t C, \
                         int mode, int64_t R, int64_t S, int nthreads)                 \
{                                                                                      \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t p = 0; p < R * C; p++) {                                              \
        unsigned csr = subnormals_off();  /* per thread: the loop runs on each */      \
        const T_ *k = coef + 4 * (p % C), *q = kk + 3 * (p % C);                       \
        for (int64_t i = p * S; i < (p + 1) * S; i++)                                  \
            gc[i] = q[0] * gc[i] + q[1] * norm_##SUF(z[i], k, mode) + q[2];            \
        subnormals_restore(csr);                                                       \
    }                                                                                  \
}

/* hwsim's per-call input counts (NeuroBench's convention: a call is one step over the
 * batch) in one pass over x (steps, rows, units), one step per thread:
 *   nz[t,u] = #{r : x[t,r,u] != 0},  sums[t,u] = sum_r x[t,r,u]  (accumulated in x's
 *   type, as torch's x.sum(1); stored as double),  binary[t] = every x[t,.,.] in {-1, 0, 1}
 *   (one byte, 0 or 1: a torch bool).
 * Branch-free with an integer flag, so that the loop vectorises without fast-math.
 * Vectorised across units, so each unit's sum adds its rows in order whatever the vector
 * width: an AVX2 clone where the CPU has it (chosen at load time) gives the same numbers. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define COUNTS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define COUNTS_CLONES
#endif
#define DEFINE_COUNTS(T_, SUF, ABS_)                                                \
COUNTS_CLONES void call_counts_##SUF(const T_ *x, int64_t steps, int64_t rows, int64_t units,        \
                       double *nz, double *sums, uint8_t *binary, int nthreads)         \
{                                                                                      \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t t = 0; t < steps; t++) {                                              \
        int32_t notbin = 0;                                                            \
        for (int64_t u0 = 0; u0 < units; u0 += CHUNK) {                                \
            int64_t len = units - u0 < CHUNK ? units - u0 : CHUNK;                     \
            T_ n[CHUNK], sm[CHUNK];                                                    \
            for (int64_t u = 0; u < len; u++) { n[u] = 0; sm[u] = 0; }                 \
            for (int64_t r = 0; r < rows; r++) {                                       \
                const T_ *xr = x + (t * rows + r) * units + u0;                        \
                for (int64_t u = 0; u < len; u++) {                                    \
                    T_ v = xr[u], a = ABS_(v);                                         \
                    n[u] += (T_)(v != 0);                                              \
                    sm[u] += v;                                                        \
                    notbin |= (a != 0) & (a != 1);                                     \
                }                                                                      \
            }                                                                          \
            for (int64_t u = 0; u < len; u++) {                                        \
                nz[t * units + u0 + u] = n[u];                                         \
                sums[t * units + u0 + u] = sm[u];                                      \
            }                                                                          \
        }                                                                              \
        binary[t] = !notbin;                                                           \
    }                                                                                  \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
DEFINE_POOLED(float, f32)
DEFINE_POOLED(double, f64)
/* The pooled passes once more with 16-lane float vectors, compiled for AVX-512 (F, VL, DQ,
 * BW) and FMA, taken by _kernel.py's forward where wide_available() says the CPU has
 * them (the FDG's AVX-512 synapses, local_rows3 and delta_conv, ask it too): WIDE x 16
 * neurons per block instead of WIDE x 4. Each lane's operations are the narrow pass's (the
 * same numbers); the narrow types stay the baseline (see VN_f32). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,fma")
#define VN_f32w 16
typedef float vec_f32w __attribute__((vector_size(VN_f32w * sizeof(float))));
typedef int32_t mask_f32w __attribute__((vector_size(VN_f32w * sizeof(int32_t))));
#define FMA_f32w __builtin_fmaf
#undef FMA_CLONES
#define FMA_CLONES  /* this section is compiled for one target */
DEFINE_KERNELS(float, f32w)
DEFINE_POOLED(float, f32w)
#undef FMA_CLONES
#define FMA_CLONES __attribute__((target_clones("fma", "default")))
#pragma GCC pop_options
int wide_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
}
#else
int wide_available(void) { return 0; }
#endif
DEFINE_COUNTS(float, f32, __builtin_fabsf)
DEFINE_COUNTS(double, f64, __builtin_fabs)

/* ====================== training statistics (methods/dspike.py, FDG) ======================
 * Per channel c of z (N, C, S) contiguous: mean and biased variance over N x S with
 * torch.batch_norm_update_stats' arithmetic (its contiguous path): sum of z in double,
 * mean = (T_)(sum / count); var_sum of the T_ products (z - mean) * (z - mean) in double,
 * var = (T_)var_sum / (T_)count. Only the order of the double sums differs: one running
 * sum per position (c, s) over n, then per channel over s, instead of torch's one running
 * sum per channel. A float32 result can differ from torch's only where the exact sum lies
 * within the double's rounding of a float's rounding boundary (about 2^-29 of an ulp
 * apart). Memory is read in order, n outer, in tiles of the (C S) row whose running sums
 * stay in L1; the adds of a row are independent, so they vectorise (convert to double and
 * add, 8 lanes with AVX-512), and BN_ROWS rows are added to a register in turn, n in order,
 * between one load and one store of the running sums (the same sums). Torch reads channel
 * by channel, stride C x S, one dependent add per element, and this kernel's first version
 * 4 dependent adds per run of S: for 256 x 128 x 20 floats, one thread, 0.24 ms against
 * 0.38 (and torch's 0.84); 256 x 128 x 10: 0.10 against torch's 0.50. Rows of four and the
 * AVX-512 clone: 256 x 32 x 20 0.051 -> 0.034 ms, 256 x 608 x 20 (12 MB, past L2) 1.06 ->
 * 0.96. Both passes run per tile of whole channels (BN_TILE positions at most, and rows of
 * BN_L2 bytes at most), so the second pass reads the tile's rows from L2, not memory:
 * 256 x 608 x 20 0.93 -> 0.80 ms. acc: C S doubles of scratch; mrow: C S floats, each
 * position's channel mean (so that the second pass vectorises too). */
#define BN_TILE 2048
#define BN_L2 (1 << 20)  /* bytes of a tile's rows kept for the second pass (half a 2 MiB L2) */
#define BN_ROWS 4  /* rows n added to a register per load and store of the running sums, in order */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BN_CLONES
#endif
#define DEFINE_BN_STATS(T_, SUF)                                                       \
BN_CLONES void bn_stats_##SUF(const T_ *z, int64_t N, int64_t C, int64_t S, T_ *mean,  \
                              T_ *var, double *acc, T_ *mrow)                          \
{                                                                                      \
    int64_t count = N * S, CS = C * S;                                                 \
    /* channels per tile: their sums stay in L1, their N rows in L2 between the passes */ \
    int64_t tc = BN_TILE / S, l2 = N > 0 ? BN_L2 / ((int64_t)sizeof(T_) * N * S) : tc; \
    tc = tc < l2 ? tc : l2;                                                            \
    tc = tc < 1 ? 1 : tc;                                                              \
    for (int64_t c0 = 0; c0 < C; c0 += tc) {                                           \
        int64_t c1 = C - c0 < tc ? C : c0 + tc, j0 = c0 * S, len = (c1 - c0) * S;      \
        double *restrict a = acc + j0;                                                 \
        const T_ *restrict m = mrow + j0;                                              \
        for (int pass = 0; pass < 2; pass++) {                                         \
            for (int64_t j = 0; j < len; j++) a[j] = 0;                                \
            int64_t n = 0;                                                             \
            for (; n + BN_ROWS <= N; n += BN_ROWS) {                                   \
                const T_ *restrict x0 = z + n * CS + j0, *restrict x1 = x0 + CS;       \
                const T_ *restrict x2 = x1 + CS, *restrict x3 = x2 + CS;               \
                if (pass == 0)                                                         \
                    for (int64_t j = 0; j < len; j++)                                  \
                        a[j] = a[j] + (double)x0[j] + (double)x1[j] + (double)x2[j] + (double)x3[j]; \
                else                                                                   \
                    for (int64_t j = 0; j < len; j++) {                                \
                        T_ d0 = x0[j] - m[j], d1 = x1[j] - m[j];                       \
                        T_ d2 = x2[j] - m[j], d3 = x3[j] - m[j];                       \
                        a[j] = a[j] + (double)(T_)(d0 * d0) + (double)(T_)(d1 * d1)    \
                               + (double)(T_)(d2 * d2) + (double)(T_)(d3 * d3);        \
                    }                                                                  \
            }                                                                          \
            for (; n < N; n++) {                                                       \
                const T_ *restrict x = z + n * CS + j0;                                \
                if (pass == 0)                                                         \
                    for (int64_t j = 0; j < len; j++) a[j] += (double)x[j];            \
                else                                                                   \
                    for (int64_t j = 0; j < len; j++) {                                \
                        T_ d = x[j] - m[j];                                            \
                        a[j] += (double)(T_)(d * d);                                   \
                    }                                                                  \
            }                                                                          \
            for (int64_t c = c0; c < c1; c++) {                                        \
                double sum = 0;                                                        \
                for (int64_t s = 0; s < S; s++) sum += acc[c * S + s];                 \
                if (pass == 0) {                                                       \
                    mean[c] = (T_)(sum / (double)count);                               \
                    for (int64_t s = 0; s < S; s++) mrow[c * S + s] = mean[c];         \
                } else                                                                 \
                    var[c] = (T_)sum / (T_)count;                                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}
DEFINE_BN_STATS(float, f32)  /* float64 keeps torch's call: there the sums' order shows */
/* fusion._bn_coefficients' rows from the statistics, with its torch expressions' roundings:
 * invstd = (float)(1 / sqrt((double)var + eps)), coef[c] = (invstd, 0 - mean invstd,
 * (float)scale weight, bias), float products (torch casts a Python scalar to the tensor's
 * type); one call where torch took ten small ones per tdBN of the FDG. */
void bn_coefficients_f32(const float *mean, const float *var, const float *weight, const float *bias,
                         double scale, double eps, int64_t C, float *coef, float *invstd)
{
    for (int64_t c = 0; c < C; c++) {
        float inv = (float)(1.0 / sqrt((double)var[c] + eps));
        invstd[c] = inv;
        coef[4 * c] = inv;
        coef[4 * c + 1] = 0.0f - mean[c] * inv;
        coef[4 * c + 2] = (float)scale * weight[c];
        coef[4 * c + 3] = bias[c];
    }
}

/* ======================= soft histogram (methods/psg.py, PDA) =======================
 * Linear binning of the rows of v (R, M) on K centres c0 + i*h, as psg.soft_histogram
 * computes it with torch ops (same arithmetic in T_, so each value's bin and fraction
 * are torch's bit for bit):
 *   raw = (v - c0)/h,  pos = clamp(raw, 0, K-1),  i = min(floor(pos), K-2),  f = pos - i
 *   counts[r, i] += 1 - f,  counts[r, i+1] += f
 * forward: one pass over v; per thread (ws: nthreads x 2 x R x K doubles, zeroed by the
 *   caller) the number of values in bin i and the sum of their f, in LANES interleaved
 *   copies (a run of values in one bin would otherwise chain every add on the last);
 *   then counts[r, i] = n[i] - sf[i] + sf[i-1] in double.
 * backward: d counts[r, .] / d v = (grad[r, i+1] - grad[r, i]) * d pos / d v, with
 *   d pos / d v = 1/h where raw == pos (torch's clamp passes the gradient there), else 0;
 *   one pass writing gv (R, M). */
#define SH_LANES 4
#define SH_BLOCK 256   /* values whose bins are computed in one vectorised loop */
#define SH_CHUNK 4096  /* values per task of the parallel loops */
/* an AVX2 clone where the CPU has it (chosen at load time): 8 float lanes for the bins'
 * division and clamps instead of SSE2's 4; IEEE operations, so the same bins and fractions */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SH_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SH_CLONES
#endif
#define DEFINE_SOFT_HIST(T_, SUF)                                                      \
/* bins i and fractions f of len <= SH_BLOCK values; in[j] = raw == pos (gradient passes). \
 * Branch-free and apart from the scatter, so that it vectorises (the division included). */ \
static inline __attribute__((always_inline)) void                                      \
sh_bins_##SUF(const T_ *restrict v, int64_t len, T_ c0, T_ h, T_ kmax, int32_t kmax2,  \
              int32_t *restrict idx, T_ *restrict frac, T_ *restrict in)               \
{                                                                                      \
    for (int64_t j = 0; j < len; j++) {                                                \
        T_ r = (v[j] - c0) / h;                                                        \
        T_ p = r > 0 ? r : (T_)0;                                                      \
        p = p < kmax ? p : kmax;                                                       \
        int32_t i = (int32_t)p;             /* p >= 0: truncation is floor */          \
        i = i < kmax2 ? i : kmax2;                                                     \
        i = i > 0 ? i : 0;                  /* < 0 only for NaN: stay in bounds */     \
        idx[j] = i;                                                                    \
        frac[j] = p - (T_)i;                                                           \
        if (in) in[j] = r == p ? (T_)1 : (T_)0;                                        \
    }                                                                                  \
}                                                                                      \
                                                                                       \
SH_CLONES void soft_hist_forward_##SUF(const T_ *v, int64_t R, int64_t M, T_ c0, T_ h, int64_t k, \
                             double *ws, double *counts, int nthreads)                 \
{                                                                                      \
    T_ kmax = (T_)(k - 1);                                                             \
    int64_t nchunks = (M + SH_CHUNK - 1) / SH_CHUNK;                                   \
    _Pragma("omp parallel num_threads(nthreads)")                                      \
    {                                                                                  \
        double *n = ws + (int64_t)THREAD() * 2 * R * k, *sf = n + R * k;              \
        /* per lane and bin (count, sum of f) side by side: one cache line per update */ \
        double lnf[SH_LANES][k][2];                                                    \
        int32_t idx[SH_BLOCK];                                                         \
        T_ frac[SH_BLOCK];                                                             \
        _Pragma("omp for schedule(static)")                                            \
        for (int64_t q = 0; q < R * nchunks; q++) {                                    \
            int64_t r = q / nchunks, j0 = (q % nchunks) * SH_CHUNK;                    \
            int64_t j1 = j0 + SH_CHUNK < M ? j0 + SH_CHUNK : M;                        \
            for (int a = 0; a < SH_LANES; a++)                                         \
                for (int64_t i = 0; i < k; i++) { lnf[a][i][0] = 0; lnf[a][i][1] = 0; } \
            for (int64_t b = j0; b < j1; b += SH_BLOCK) {                              \
                int64_t len = j1 - b < SH_BLOCK ? j1 - b : SH_BLOCK;                   \
                sh_bins_##SUF(v + r * M + b, len, c0, h, kmax, (int32_t)(k - 2), idx, frac, 0); \
                /* SH_LANES interleaved copies: a run of values in one bin would  \
                 * otherwise chain every add on the previous one; value j in lane  \
                 * j % SH_LANES, unrolled (the same order: PDA's sums bit for bit) */ \
                int64_t j = 0;                                                         \
                for (; j + SH_LANES <= len; j += SH_LANES)                             \
                    for (int a = 0; a < SH_LANES; a++) {                               \
                        double *c2 = lnf[a][idx[j + a]];                               \
                        c2[0] += 1.0; c2[1] += (double)frac[j + a];                    \
                    }                                                                  \
                for (; j < len; j++) {                                                 \
                    double *c2 = lnf[j % SH_LANES][idx[j]];                            \
                    c2[0] += 1.0; c2[1] += (double)frac[j];                            \
                }                                                                      \
            }                                                                          \
            for (int a = 0; a < SH_LANES; a++)                                         \
                for (int64_t i = 0; i < k; i++) {                                      \
                    n[r * k + i] += lnf[a][i][0];                                      \
                    sf[r * k + i] += lnf[a][i][1];                                     \
                }                                                                      \
        }                                                                              \
    }                                                                                  \
    for (int64_t r = 0; r < R; r++)                                                    \
        for (int64_t i = 0; i < k; i++) {                                              \
            double nn = 0, s = 0, sp = 0;                                              \
            for (int th = 0; th < nthreads; th++) {                                    \
                const double *w = ws + (int64_t)th * 2 * R * k;                        \
                nn += w[r * k + i];                                                    \
                s += w[R * k + r * k + i];                                             \
                if (i > 0) sp += w[R * k + r * k + i - 1];                             \
            }                                                                          \
            counts[r * k + i] = (nn - s) + sp;                                         \
        }                                                                              \
}                                                                                      \
                                                                                       \
SH_CLONES void soft_hist_backward_##SUF(const T_ *v, int64_t R, int64_t M, T_ c0, T_ h, int64_t k, \
                              const T_ *grad, T_ *gv, int nthreads)                    \
{                                                                                      \
    T_ kmax = (T_)(k - 1), slope = (T_)1 / h;                                          \
    int64_t nchunks = (M + SH_CHUNK - 1) / SH_CHUNK;                                   \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t q = 0; q < R * nchunks; q++) {                                        \
        int64_t r = q / nchunks, j0 = (q % nchunks) * SH_CHUNK;                        \
        int64_t j1 = j0 + SH_CHUNK < M ? j0 + SH_CHUNK : M;                            \
        int32_t idx[SH_BLOCK];                                                         \
        T_ frac[SH_BLOCK], in[SH_BLOCK];                                               \
        T_ step[k];                     /* d counts / d f: +1 at bin i+1, -1 at bin i */ \
        for (int64_t i = 0; i + 1 < k; i++) step[i] = grad[r * k + i + 1] - grad[r * k + i]; \
        step[k - 1] = 0;                                                               \
        for (int64_t b = j0; b < j1; b += SH_BLOCK) {                                  \
            int64_t len = j1 - b < SH_BLOCK ? j1 - b : SH_BLOCK;                       \
            sh_bins_##SUF(v + r * M + b, len, c0, h, kmax, (int32_t)(k - 2), idx, frac, in); \
            T_ *out = gv + r * M + b;                                                  \
            for (int64_t j = 0; j < len; j++) out[j] = step[idx[j]] * slope * in[j];   \
        }                                                                              \
    }                                                                                  \
}

DEFINE_SOFT_HIST(float, f32)
DEFINE_SOFT_HIST(double, f64)

/* The LIF forward that records u for the PDA loss (fused.py, membrane=True): the same
 * recurrence and rounding as the forward above (hard: u = (s ? 0 : lam*u) + c, soft:
 * u = (s ? lam*(u - vth) : lam*u) + c, s = u - vth > 0), writing spikes and u instead
 * of x, so that the recorded u is lif_sequence's bit for bit (x + vth is not). A
 * separate function: the forward above is being changed elsewhere, and this one is
 * only as fast as PDA needs (plain loops that the compiler vectorises). */
#define DEFINE_LIF_MEMBRANE(T_, SUF)                                                   \
void lif_forward_membrane_##SUF(const T_ *c, int64_t c_ts, T_ *out, T_ *us, int64_t T, \
                                int64_t N, T_ lam, T_ vth, int hard, int nthreads)     \
{                                                                                      \
    const int64_t vn = VN_##SUF, nchunks = (N + CHUNK - 1) / CHUNK;                    \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t q = 0; q < nchunks; q++) {                                            \
        int64_t n0 = q * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        vec_##SUF u[CHUNK / VN_##SUF], one = (vec_##SUF){0} + (T_)1;                   \
        mask_##SUF spk[CHUNK / VN_##SUF];  /* lanes -1 where the neuron spiked */      \
        for (int64_t t = 0; t < T; t++) {                                              \
            const T_ *ct = c + t * c_ts + n0;                                          \
            T_ *ot = out + t * N + n0, *ut = us + t * N + n0;                          \
            for (int64_t v = 0; v * vn < len; v++) {                                   \
                int64_t m = len - v * vn < vn ? len - v * vn : vn;                     \
                vec_##SUF cv = (vec_##SUF){0}, s;                                      \
                if (m == vn) __builtin_memcpy(&cv, ct + v * vn, sizeof cv);  /* inlined */ \
                else __builtin_memcpy(&cv, ct + v * vn, m * sizeof(T_));               \
                if (t == 0) u[v] = cv;                                                 \
                else {  /* both sides computed, then selected by the spike mask */     \
                    vec_##SUF decayed = lam * u[v], reset = hard ? (vec_##SUF){0}     \
                                                                 : lam * (u[v] - vth); \
                    u[v] = (vec_##SUF)(((mask_##SUF)reset & spk[v])                    \
                                       | ((mask_##SUF)decayed & ~spk[v])) + cv;        \
                }                                                                      \
                spk[v] = (mask_##SUF)(u[v] - vth > 0);                                 \
                s = (vec_##SUF)((mask_##SUF)one & spk[v]);                             \
                if (m == vn) {                                                         \
                    __builtin_memcpy(ut + v * vn, &u[v], sizeof s);                    \
                    __builtin_memcpy(ot + v * vn, &s, sizeof s);                       \
                } else {                                                               \
                    __builtin_memcpy(ut + v * vn, &u[v], m * sizeof(T_));              \
                    __builtin_memcpy(ot + v * vn, &s, m * sizeof(T_));                 \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}

DEFINE_LIF_MEMBRANE(float, f32)
DEFINE_LIF_MEMBRANE(double, f64)

/* ===================== ASGL's dual-mode LIF with tdBN and pooling =====================
 * (snn2hw/core/fusion.py, a DualModeValue in the run): lif_pool_forward's planes and
 * affine with asgl_forward's step, and lif_pool_backward's windows with asgl_backward's
 * step, so that each number is the unfused run's (tdBN, FusedLIF's dual-mode kernel,
 * avg_pool) bit for bit:
 * forward:  per plane p (one thread), per chunk of its neurons and step t: c = the affine
 *           of z (as lif_pool_forward), then asgl_fwd_step (s written to rs, its
 *           uniforms from keys as asgl_forward's, x to xs); then each window's values summed in row-major order in T_ and
 *           divided by div (times mul if non-zero): torch's CPU avg_pool2d loop (avg_pool1d
 *           is avg_pool2d on H = 1), now with non-binary s.
 * backward: each window's gradient (gp * mul if mul != 0) / div as avg_pool's backward,
 *           asgl_bwd_step over the whole T (gp_out: gs * dp per element, summed by the
 *           caller as torch sums it), gu written to gu_out (may be xs: each step's x is
 *           read first), and with a tdBN the per-plane sums of lif_pool_backward. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")  /* as the ASGL section: its steps vectorise */
#endif
#define DEFINE_DUAL_MODE_POOLED(T_, SUF)                                               \
FMA_CLONES void asgl_pool_forward_##SUF(const T_ *z, int64_t z_ts, const T_ *coef,     \
                            int64_t C, int bnm, T_ *pooled, T_ *xs, const int64_t *keys, \
                            T_ *rs, int64_t T,                                         \
                            int64_t P, int64_t H, int64_t W, int64_t kh, int64_t kw,   \
                            T_ div, T_ mul, T_ lam, T_ vth, int hard, T_ alpha, T_ p,  \
                            int mode, int nthreads)                                    \
{                                                                                      \
    int64_t S = H * W, N = P * S, Ho = H / kh, Wo = W / kw, So = Ho * Wo;              \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t q = 0; q < P; q++) {                                                  \
        const T_ *k = coef ? coef + 4 * (q % C) : 0;                                   \
        for (int64_t i0 = 0; i0 < S; i0 += CHUNK) {                                    \
            int64_t len = S - i0 < CHUNK ? S - i0 : CHUNK, n0 = q * S + i0;            \
            T_ u[CHUNK], s[CHUNK], cb[CHUNK];                                          \
            for (int64_t t = 0; t < T; t++) {                                          \
                const T_ *zt = z + t * z_ts + n0, *ct = cb;                            \
                T_ *st = rs + t * N + n0, *xt = xs ? xs + t * N + n0 : 0;              \
                uint64_t key = keys ? (uint64_t)keys[t] : 0;                           \
                if (bnm) for (int64_t i = 0; i < len; i++)  /* affine_ lane by lane */  \
                    cb[i] = norm_##SUF(zt[i], k, bnm) * k[2] + k[3];                  \
                else ct = zt;                                                          \
                ASGL_FWD(SUF, t == 0)  /* reads mode: the dual mode */                 \
            }                                                                          \
        }                                                                              \
        POOL_WINDOWS(SUF, rs + q * S, N, pooled + q * So)  /* as avg_pool2d's loop */  \
    }                                                                                  \
}                                                                                      \
FMA_CLONES void asgl_pool_backward_##SUF(const T_ *gp, const T_ *xs, const T_ *ss,     \
                             T_ *gu_out, T_ *gp_out, const T_ *z, int64_t z_ts,        \
                             const T_ *coef, int64_t C, int mode, double *sums,        \
                             T_ *gbuf, const int64_t *window, int64_t T, int64_t P,    \
                             int64_t H, int64_t W, int64_t kh, int64_t kw, T_ div,     \
                             T_ mul, T_ lam, T_ vth, T_ nlam, T_ nlamvth, int hard,    \
                             T_ alpha, int nthreads)                                   \
{                                                                                      \
    int64_t S = H * W, N = P * S, Ho = H / kh, Wo = W / kw, So = Ho * Wo;              \
    T_ half = (T_)0.5 * alpha, inv = (T_)1 / alpha, a2 = alpha * alpha;                \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t q = 0; q < P; q++) {                                                  \
        unsigned csr = subnormals_off();  /* per thread: the loop runs on each */      \
        const T_ *k = coef ? coef + 4 * (q % C) : 0;                                   \
        T_ *gw = gbuf + THREAD() * (T * So + 1);  /* [0]: 0, for neurons in no window */ \
        double s0 = 0, s1 = 0;                                                         \
        window_grads_##SUF(gw, gp, T, P, So, q, div, mul);                             \
        for (int64_t i0 = 0; i0 < S; i0 += CHUNK) {                                    \
            int64_t len = S - i0 < CHUNK ? S - i0 : CHUNK, n0 = q * S + i0;            \
            T_ gun[CHUNK], gol[CHUNK], gul[CHUNK];                                     \
            const int64_t *at = window + i0;                                           \
            for (int64_t i = 0; i < len; i++) gun[i] = 0;                              \
            for (int64_t t = T - 1; t >= 0; t--) {                                     \
                const T_ *gwt = gw + t * So, *got = gol;                               \
                const T_ *xt = xs + t * N + n0, *st = ss + t * N + n0;                 \
                T_ *gut = gul, *gpt = gp_out ? gp_out + t * N + n0 : 0;                \
                for (int64_t i = 0; i < len; i++) gol[i] = at[i] ? gwt[at[i]] : gw[0]; \
                ASGL_BWD(SUF)                                                          \
                /* after the step read x: gu_out may be xs */                         \
                for (int64_t i = 0; i < len; i++) gu_out[t * N + n0 + i] = gul[i];     \
                if (mode) bn_sums_##SUF(gul, z + t * z_ts + n0, k, mode, len, &s0, &s1); \
            }                                                                          \
        }                                                                              \
        if (mode) { sums[2 * q] += s0; sums[2 * q + 1] += s1; }                        \
        subnormals_restore(csr);                                                       \
    }                                                                                  \
}
DEFINE_DUAL_MODE_POOLED(float, f32)
DEFINE_DUAL_MODE_POOLED(double, f64)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* ====================== sech^2 surrogate derivatives (GSG's, Dspike's) ======================
 * out[i] = |x[i]| <= window ? scale * q / ((1 + q) (1 + q)) : 0,  q = exp(-k |x[i]|), which is
 * scale / 4 * sech^2(k x / 2) (1 - tanh^2(z) = 4 q / (1 + q)^2 with q = e^{-2|z|}):
 *   GsgTanh.grad  a beta (1 - tanh^2(beta x)):   k = 2 beta, scale = 4 a beta, no window;
 *   Dspike.grad   b sech^2(b x / 2 V) / (2 tanh(b/2)) / (2 V):  k = b / V, scale = b / (tanh(b/2) V), window V.
 * One pass where torch takes five (GSG) or eight (Dspike): 0.41-0.49 -> 0.15 ms for GSG on
 * 4 x 64 x 32 x 40 values. float32: exp by the classic reduction (n = round(y / ln 2), r = y - n ln 2
 * with ln 2 in two parts, then Cephes' degree-6 minimax polynomial for e^r on |r| <= ln 2 / 2,
 * times 2^n set in the exponent bits), branch-free so that the loop vectorises (AVX-512 and AVX2
 * clones where the CPU has them); q = 0 where -k|x| < -86 (q < 4.5e-38, the smallest normal float
 * is 1.2e-38): no subnormal value is made (see subnormals_off). float64: libm's exp, no cut. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SECH2_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SECH2_CLONES
#endif
#include <string.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")  /* the clamp and window as selects: the loop vectorises */
#endif
SECH2_CLONES void sech2_grad_f32(const float *x, float *out, int64_t n, float k, float scale, float window,
                                 int nthreads)
{
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        int64_t len = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (int64_t i = 0; i < len; i++) {
            float ax = __builtin_fabsf(x[i0 + i]), y = -k * ax;
            int32_t keep = -((y >= -86.0f) & (ax <= window));   /* all ones where q is kept */
            y = y < -86.0f ? -86.0f : y;                         /* the polynomial's range */
            float t = y * 1.44269504088896341f + 12582912.0f;    /* 1.5 * 2^23: rounds to an integer */
            float nf = t - 12582912.0f;
            int32_t bits, ni;
            memcpy(&bits, &t, sizeof bits);
            ni = bits - 0x4B400000;                              /* that integer, from t's mantissa */
            float r = y - nf * 0.693359375f;                     /* ln 2 = 0.693359375 - 2.12194440e-4 */
            r = r - nf * -2.12194440e-4f;
            float p = 1.9875691500e-4f;
            p = p * r + 1.3981999507e-3f;
            p = p * r + 8.3334519073e-3f;
            p = p * r + 4.1665795894e-2f;
            p = p * r + 1.6666665459e-1f;
            p = p * r + 5.0000001201e-1f;
            p = p * (r * r) + r + 1.0f;
            int32_t eb = ((ni + 127) << 23) & keep;              /* 2^n (n >= -125 here), or 0 */
            float two_n;
            memcpy(&two_n, &eb, sizeof two_n);
            float q = p * two_n, d = 1.0f + q;
            out[i0 + i] = scale * q / (d * d);
        }
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
void sech2_grad_f64(const double *x, double *out, int64_t n, double k, double scale, double window, int nthreads)
{
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t i = 0; i < n; i++) {
        double ax = __builtin_fabs(x[i]), q = ax <= window ? exp(-k * ax) : 0.0, d = 1.0 + q;
        out[i] = scale * q / (d * d);
    }
}

/* ====================== the FDG's channel-local synapse (methods/dspike.py, _ChannelLocal) ======================
 * out[n, p, c] = base[n, c] + conv(z[n, p], w[p, c]): the layer after W1's copies, for copy p
 * whose change reaches it through one input channel o_p only (w[p, c] = the layer's weight
 * [c, o_p], kh x kw); z (N, P, Hi, Wi), w (P, C, kh, kw), base (N, C, Ho, Wo), out
 * (N, P, C, Ho, Wo), all contiguous; zero padding, stride, dilation as the layer's (1-d: Hi = Ho = kh = 1).
 * Each output sums its taps in order (a, b) from 0, then adds base: its numbers do not depend
 * on how many copies a call holds. torch ran this as a grouped convolution (one input channel
 * per group, which oneDNN runs ~30x below its dense rate) and a broadcast add: 1.4 + 0.67 ms
 * per chunk of the mnist1d conv net's FDG (4 copies of 64 samples x 4 steps, 32 x 20 outputs). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOCAL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOCAL_CLONES
#endif
/* one output row of M values: acc = sum over the taps in order from 0, then base + acc */
#define LOCAL_ROW(T_, TAPS)                                                            \
    for (int64_t m = 0; m < M; m++) {                                                  \
        T_ acc = 0;                                                                    \
        _Pragma("GCC unroll 16")                                                       \
        for (int64_t t = 0; t < TAPS; t++) acc += wc[t] * col[t * M + m];              \
        oc[m] = bc[m] + acc;                                                           \
    }
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
/* the lanes of a 16-lane step with `left` values to go: all, or the first `left` */
static inline __mmask16 lanes16(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}
/* float, three taps: the C rows of one copy and sample in 16-lane steps, the last one
 * masked. GCC's loop ran 16 lanes and then the rest one by one: on rows of 20, the four
 * left over cost as much as the sixteen. The same operations per output (acc = 0 + w0 x0,
 * + w1 x1, + w2 x2, then base + acc), so the same numbers as LOCAL_ROW. */
__attribute__((target("avx512f"))) static void local_rows3_f32_avx512(const float *col, const float *wc,
                                                                      const float *bc, float *oc, int64_t C,
                                                                      int64_t M)
{
    for (int64_t c = 0; c < C; c++, wc += 3, bc += M, oc += M) {
        __m512 w0 = _mm512_set1_ps(wc[0]), w1 = _mm512_set1_ps(wc[1]), w2 = _mm512_set1_ps(wc[2]);
        for (int64_t m = 0; m < M; m += 16) {
            __mmask16 k = lanes16(M - m);
            __m512 acc = _mm512_add_ps(_mm512_setzero_ps(), _mm512_mul_ps(w0, _mm512_maskz_loadu_ps(k, col + m)));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(w1, _mm512_maskz_loadu_ps(k, col + M + m)));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(w2, _mm512_maskz_loadu_ps(k, col + 2 * M + m)));
            _mm512_mask_storeu_ps(oc + m, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, bc + m), acc));
        }
    }
}
#else
static void local_rows3_f32_avx512(const float *col, const float *wc, const float *bc, float *oc, int64_t C,
                                   int64_t M) { (void)col; (void)wc; (void)bc; (void)oc; (void)C; (void)M; }
#endif
#define DEFINE_CHANNEL_LOCAL(T_, SUF)                                                  \
LOCAL_CLONES void channel_local_conv_##SUF(const T_ *restrict z, const T_ *restrict w, \
                              const T_ *restrict base, T_ *restrict out, T_ *restrict cols, \
                              int64_t N, int64_t P, int64_t C, int64_t Hi, int64_t Wi, \
                              int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh, \
                              int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, \
                              int nthreads)                                            \
{                                                                                      \
    int64_t M = Ho * Wo, taps = kh * kw;                                               \
    int fast = sizeof(T_) == sizeof(float) && taps == 3 && wide_available();           \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t np = 0; np < N * P; np++) {                                           \
        int64_t n = np / P, p = np % P;                                                \
        const T_ *zp = z + np * Hi * Wi;                                               \
        T_ *col = cols + THREAD() * taps * M;  /* tap t's input of each output, 0 in the padding */ \
        for (int64_t a = 0; a < kh; a++)                                               \
            for (int64_t b = 0; b < kw; b++)                                           \
                for (int64_t i = 0; i < Ho; i++) {                                     \
                    int64_t hi = i * sh - ph + a * dh;                                 \
                    T_ *cr = col + (a * kw + b) * M + i * Wo;                          \
                    for (int64_t j = 0; j < Wo; j++) {                                 \
                        int64_t wi = j * sw - pw + b * dw;                             \
                        cr[j] = hi >= 0 && hi < Hi && wi >= 0 && wi < Wi ? zp[hi * Wi + wi] : 0; \
                    }                                                                  \
                }                                                                      \
        if (fast) {                                                                    \
            local_rows3_f32_avx512((const float *)col, (const float *)(w + p * C * 3),     \
                                   (const float *)(base + n * C * M), (float *)(out + np * C * M), C, M); \
            continue;                                                                  \
        }                                                                              \
        for (int64_t c = 0; c < C; c++) {                                              \
            const T_ *wc = w + (p * C + c) * taps, *bc = base + (n * C + c) * M;       \
            T_ *oc = out + (np * C + c) * M;                                           \
            if (taps == 3) { LOCAL_ROW(T_, 3) }  /* constant taps: the sum unrolled */      \
            else if (taps == 9) { LOCAL_ROW(T_, 9) }                                     \
            else { LOCAL_ROW(T_, taps) }                                                 \
        }                                                                              \
    }                                                                                  \
}
DEFINE_CHANNEL_LOCAL(float, f32)
DEFINE_CHANNEL_LOCAL(double, f64)

/* ====================== the FDG's later synapses: the unperturbed pass plus the copies' change ======================
 * out[n] = base_out[n / P] + conv(x[n] - base_in[n / P]) for a synapse after the channel-local
 * one (methods/dspike.py, _ChannelLocal._later): copy row n = (sample r, copy p) sees the
 * unperturbed network's input base_in[r] but for a few spikes (2.2% of pool2's outputs on the
 * mnist1d conv net's FDG), so its output is the unperturbed output plus the change's
 * convolution, one weight column per changed input and tap. The convolution is linear, so
 * these are the full copy's numbers up to rounding (as _ChannelLocal's). x (N, Ci, Si),
 * base_in (N / P, Ci, Si), base_t (N / P, So, Co) (the unperturbed output, transposed),
 * wt (Ci, K, Co) (the weight, transposed), table (Si, K): the output position input
 * position i reaches through tap k (-1: none), out (N, Co, So), acc threads x So x Co,
 * all contiguous. Each output starts from base and adds d x w in the order (ci, i, k): its
 * numbers do not depend on how many copies a call holds. oneDNN's dense convolution of the
 * copies took a third of the FDG (2.7-2.8 ms per chunk of 17 copies of 64 samples x 4 steps). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* float on AVX-512: the changed inputs found 16 at a time (a compare and a mask, whose set
 * bits are the few to add), the weight columns added 16 channels a step, and the transposed
 * store as gathers (idx[f]: where output f sits in acc). The same operations per output as
 * the plain loop below (acc = base, then + d x w in the order (ci, i, k)): the same numbers. */
__attribute__((target("avx512f"))) static void delta_conv_f32_avx512(
    const float *x, const float *base_in, const float *base_t, const float *wt, const int64_t *table,
    float *out, float *acc, const int32_t *idx, const int32_t *rows, int64_t n, int64_t P, int64_t Ci,
    int64_t Si, int64_t Co, int64_t So, int64_t K)
{
    int64_t r = n / P, F = Ci * Si, A = So * Co, cv = (Co + 15) / 16;
    __mmask16 tail = lanes16(Co - 16 * (cv - 1));  /* the last step of a row of Co */
    const float *xn = x + n * F, *bn = base_in + r * F, *bt = base_t + r * A;
    for (int64_t f = 0; f < A; f += 16) {
        __mmask16 m = lanes16(A - f);
        _mm512_mask_storeu_ps(acc + f, m, _mm512_maskz_loadu_ps(m, bt + f));
    }
    for (int64_t f0 = 0; f0 < F; f0 += 16) {
        __mmask16 m = lanes16(F - f0);
        __m512 d16 = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xn + f0), _mm512_maskz_loadu_ps(m, bn + f0));
        unsigned changed = _mm512_mask_cmp_ps_mask(m, d16, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        while (changed) {
            int64_t f = f0 + __builtin_ctz(changed);
            changed &= changed - 1;
            int64_t ci = (int64_t)rows[f], i = f - ci * Si;  /* rows[f] = f / Si: no division here */
            __m512 d = _mm512_set1_ps(xn[f] - bn[f]);
            for (int64_t k = 0; k < K; k++) {
                int64_t o = table[i * K + k];
                if (o < 0) continue;
                float *a = acc + o * Co;
                const float *w = wt + (ci * K + k) * Co;
                for (int64_t v = 0; v < cv; v++) {
                    __mmask16 mv = v + 1 < cv ? (__mmask16)0xFFFF : tail;
                    __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mv, a + 16 * v),
                                               _mm512_mul_ps(d, _mm512_maskz_loadu_ps(mv, w + 16 * v)));
                    _mm512_mask_storeu_ps(a + 16 * v, mv, sum);
                }
            }
        }
    }
    float *on = out + n * A;
    for (int64_t f = 0; f < A; f += 16) {
        __mmask16 m = lanes16(A - f);
        __m512i at = _mm512_maskz_loadu_epi32(m, idx + f);
        _mm512_mask_storeu_ps(on + f, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, at, acc, 4));
    }
}
#else
static void delta_conv_f32_avx512(const float *x, const float *base_in, const float *base_t, const float *wt,
                                  const int64_t *table, float *out, float *acc, const int32_t *idx,
                                  const int32_t *rows, int64_t n,
                                  int64_t P, int64_t Ci, int64_t Si, int64_t Co, int64_t So, int64_t K)
{
    (void)x; (void)base_in; (void)base_t; (void)wt; (void)table; (void)out; (void)acc; (void)idx; (void)rows;
    (void)n; (void)P; (void)Ci; (void)Si; (void)Co; (void)So; (void)K;
}
#endif
#define DEFINE_DELTA_CONV(T_, SUF)                                                     \
LOCAL_CLONES void delta_conv_##SUF(const T_ *restrict x, const T_ *restrict base_in,   \
                                   const T_ *restrict base_t, const T_ *restrict wt,   \
                                   const int64_t *restrict table, const int32_t *restrict idx, \
                                   const int32_t *restrict rows, T_ *restrict out,     \
                                   T_ *restrict accs, int64_t N, int64_t P, int64_t Ci, \
                                   int64_t Si, int64_t Co, int64_t So, int64_t K, int nthreads) \
{                                                                                      \
    int fast = sizeof(T_) == sizeof(float) && wide_available() && So * Co < (1 << 30) \
               && Ci * Si < (1 << 30);  /* idx and rows are int32 */                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t n = 0; n < N; n++) {                                                  \
        T_ *acc = accs + THREAD() * So * Co;                                           \
        if (fast) {                                                                    \
            delta_conv_f32_avx512((const float *)x, (const float *)base_in, (const float *)base_t, \
                                  (const float *)wt, table, (float *)out, (float *)acc, idx, rows, n, P, Ci, \
                                  Si, Co, So, K);                                      \
            continue;                                                                  \
        }                                                                              \
        int64_t r = n / P;                                                             \
        memcpy(acc, base_t + r * So * Co, (size_t)(So * Co) * sizeof(T_));            \
        const T_ *xn = x + n * Ci * Si, *bn = base_in + r * Ci * Si;                   \
        for (int64_t ci = 0; ci < Ci; ci++)                                            \
            for (int64_t i = 0; i < Si; i++) {                                         \
                T_ d = xn[ci * Si + i] - bn[ci * Si + i];                              \
                if (d == 0) continue;                                                  \
                for (int64_t k = 0; k < K; k++) {                                      \
                    int64_t o = table[i * K + k];                                      \
                    if (o < 0) continue;                                               \
                    T_ *a = acc + o * Co;                                              \
                    const T_ *w = wt + (ci * K + k) * Co;                              \
                    for (int64_t co = 0; co < Co; co++) a[co] += d * w[co];            \
                }                                                                      \
            }                                                                          \
        T_ *on = out + n * Co * So;                                                    \
        for (int64_t co = 0; co < Co; co++)                                            \
            for (int64_t o = 0; o < So; o++) on[co * So + o] = acc[o * Co + co];       \
    }                                                                                  \
}
DEFINE_DELTA_CONV(float, f32)
DEFINE_DELTA_CONV(double, f64)

/* ====================== PSG's arctan derivatives (surrogate.PsgArctan.grads) ======================
 * g = 1 / t, dp = printed ? 1 / t : (2p x) / t, t = (p x)^2 + 1: PsgArctan.grads' expressions
 * with their roundings (torch's mul, square as x * x, add, reciprocal and div are each one IEEE
 * operation, and no contraction here), so the same bits, in one pass where torch took six
 * (0.88 ms per 4 x 64 x 32 x 40 block against the triangle's 0.18). p2 = 2p (exact). */
#define DEFINE_PSG_ARCTAN(T_, SUF)                                                     \
SECH2_CLONES void psg_arctan_grads_##SUF(const T_ *restrict x, T_ *restrict g, T_ *restrict dp, \
                                         int64_t n, T_ p, T_ p2, int printed, int nthreads) \
{                                                                                      \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                                        \
        int64_t len = n - i0 < CHUNK ? n - i0 : CHUNK;                                 \
        for (int64_t i = i0; i < i0 + len; i++) {                                      \
            T_ px = p * x[i], t = px * px + (T_)1;                                     \
            g[i] = (T_)1 / t;                                                          \
            dp[i] = printed ? (T_)1 / t : (p2 * x[i]) / t;                             \
        }                                                                              \
    }                                                                                  \
}
DEFINE_PSG_ARCTAN(float, f32)
DEFINE_PSG_ARCTAN(double, f64)
