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
 *           a sample), nchg[th] += #{(t >= 1, n) : u[t, n] != u[t-1, n]}
 * backward: gs = go + b*gu',  gu = gs*g + a*gu'   (gu' = gu of the next step)
 *           hard a = lam*(1-s), b = -lam*u;  soft a = lam, b = -lam*vth
 *           over a block of steps: carry holds gu' of the step after the block
 *           (zeros after the last step) and is left holding gu of its first
 *           step; gu_out may be xs itself (each x is read before gu replaces it);
 *           gext, if given, is a gradient reaching u from outside (recorded u).
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD() omp_get_thread_num()
#else
#define THREAD() 0
#endif

#define CHUNK 512

#define DEFINE_KERNELS(T_, SUF)                                                        \
void lif_forward_##SUF(const T_ *c, int64_t c_ts, T_ *out, T_ *xs, T_ *nspk,           \
                       int64_t *nchg, int64_t units, int64_t T, int64_t N, T_ lam,     \
                       T_ vth, int hard, int nthreads)                                 \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    int count = nspk != 0;                                                             \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ u[CHUNK], sp[CHUNK], ns[CHUNK];                                             \
        int32_t nc[CHUNK];                                                             \
        for (int64_t i = 0; i < len; i++) { u[i] = 0; sp[i] = 0; ns[i] = 0; nc[i] = 0; } \
        for (int64_t t = 0; t < T; t++) {                                              \
            const T_ *ct = c + t * c_ts + n0;                                          \
            T_ *ot = out ? out + t * N + n0 : 0;                                       \
            /* lif_step's own expressions: the same roundings, branch-free */          \
            if (t == 0) for (int64_t i = 0; i < len; i++) u[i] = ct[i];                \
            else if (count && hard) for (int64_t i = 0; i < len; i++) {                \
                T_ v = lam * u[i] * ((T_)1 - sp[i]) + ct[i];                           \
                nc[i] += v != u[i];                                                    \
                u[i] = v;                                                              \
            } else if (count) for (int64_t i = 0; i < len; i++) {                      \
                T_ v = lam * (u[i] - vth * sp[i]) + ct[i];                             \
                nc[i] += v != u[i];                                                    \
                u[i] = v;                                                              \
            } else if (hard) for (int64_t i = 0; i < len; i++)                         \
                u[i] = lam * u[i] * ((T_)1 - sp[i]) + ct[i];                           \
            else for (int64_t i = 0; i < len; i++)                                     \
                u[i] = lam * (u[i] - vth * sp[i]) + ct[i];                             \
            for (int64_t i = 0; i < len; i++) sp[i] = u[i] - vth > 0 ? (T_)1 : (T_)0;  \
            if (count) for (int64_t i = 0; i < len; i++) ns[i] += sp[i];               \
            if (out) for (int64_t i = 0; i < len; i++) ot[i] = sp[i];                  \
            if (xs) for (int64_t i = 0; i < len; i++) xs[t * N + n0 + i] = u[i] - vth; \
        }                                                                              \
        if (count) {                                                                   \
            T_ *own = nspk + THREAD() * units;                                          \
            int64_t changes = 0;                                                       \
            for (int64_t i = 0; i < len; i++) changes += nc[i];                        \
            /* runs of consecutive units: n0 + i is unit (n0 + i) % units */            \
            for (int64_t i = 0, f = n0 % units, run; i < len; i += run, f = 0) {       \
                run = units - f < len - i ? units - f : len - i;                       \
                for (int64_t j = 0; j < run; j++) own[f + j] += ns[i + j];             \
            }                                                                          \
            nchg[THREAD()] += changes;                                                 \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* One backward step on len neurons; restrict: the arrays do not overlap. */          \
static void bwd_step_##SUF(int64_t len, const T_ *restrict go, const T_ *restrict g,   \
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
    }                                                                                  \
}

/* hwsim's per-call input counts (NeuroBench's convention: a call is one step over the
 * batch) in one pass over x (steps, rows, units), one step per thread:
 *   nz[t,u] = #{r : x[t,r,u] != 0},  sums[t,u] = sum_r x[t,r,u]  (accumulated in x's
 *   type, as torch's x.sum(1); stored as double),  binary[t] = every x[t,.,.] in {-1, 0, 1}.
 * Branch-free with an integer flag, so that the loop vectorises without fast-math. */
#define DEFINE_COUNTS(T_, SUF, ABS_)                                                \
void call_counts_##SUF(const T_ *x, int64_t steps, int64_t rows, int64_t units,        \
                       double *nz, double *sums, int32_t *binary, int nthreads)         \
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
DEFINE_COUNTS(float, f32, __builtin_fabsf)
DEFINE_COUNTS(double, f64, __builtin_fabs)
