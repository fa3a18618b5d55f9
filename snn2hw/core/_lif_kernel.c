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
 * forward:  hard  u = (s ? 0 : lam*u) + c        soft  u = lam*(s ? u - vth : u) + c
 *           x = u - vth,  s = x > 0,  out = s,  xs = x (kept for backward)
 * backward: gs = go + b*gu',  gu = gs*g + a*gu'   (gu' = gu of the next step)
 *           hard a = lam*(1-s), b = -lam*u;  soft a = lam, b = -lam*vth
 */
#include <stdint.h>

#define CHUNK 512

#define DEFINE_KERNELS(T_, SUF)                                                        \
void lif_forward_##SUF(const T_ *c, int64_t c_ts, T_ *out, T_ *xs, int64_t T,          \
                       int64_t N, T_ lam, T_ vth, int hard, int nthreads)              \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ u[CHUNK], sp[CHUNK];                                                        \
        for (int64_t i = 0; i < len; i++) { u[i] = 0; sp[i] = 0; }                     \
        for (int64_t t = 0; t < T; t++) {                                              \
            const T_ *ct = c + t * c_ts + n0;                                          \
            T_ *ot = out + t * N + n0;                                                 \
            T_ *xt = xs ? xs + t * N + n0 : 0;                                         \
            for (int64_t i = 0; i < len; i++) {                                        \
                T_ un;                                                                 \
                if (t == 0) un = ct[i];                                                \
                else if (hard) { T_ m = lam * u[i]; un = (sp[i] != 0 ? (T_)0 : m) + ct[i]; } \
                else { T_ m = sp[i] != 0 ? u[i] - vth : u[i]; un = lam * m + ct[i]; }  \
                T_ x = un - vth;                                                       \
                u[i] = un;                                                             \
                sp[i] = x > 0 ? (T_)1 : (T_)0;                                         \
                ot[i] = sp[i];                                                         \
                if (xt) xt[i] = x;                                                     \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
                                                                                       \
void lif_backward_##SUF(const T_ *go, int64_t go_ts, const T_ *g, const T_ *xs,        \
                        T_ *gu_out, T_ *gs_out, int64_t T, int64_t N, T_ lam, T_ vth,  \
                        int hard, int nthreads)                                        \
{                                                                                      \
    int64_t nchunks = (N + CHUNK - 1) / CHUNK;                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                 \
    for (int64_t k = 0; k < nchunks; k++) {                                            \
        int64_t n0 = k * CHUNK, len = N - n0 < CHUNK ? N - n0 : CHUNK;                 \
        T_ gun[CHUNK];                                                                 \
        for (int64_t i = 0; i < len; i++) gun[i] = 0;                                  \
        for (int64_t t = T - 1; t >= 0; t--) {                                         \
            const T_ *got = go + t * go_ts + n0, *gt = g + t * N + n0;                 \
            const T_ *xt = xs + t * N + n0;                                            \
            T_ *gut = gu_out + t * N + n0;                                             \
            T_ *gst = gs_out ? gs_out + t * N + n0 : 0;                                \
            for (int64_t i = 0; i < len; i++) {                                        \
                T_ a, b;                                                               \
                if (hard) { a = xt[i] > 0 ? (T_)0 : lam; b = -lam * (xt[i] + vth); }   \
                else { a = lam; b = -lam * vth; }                                      \
                T_ gs = got[i] + b * gun[i];                                           \
                T_ gu = gs * gt[i] + a * gun[i];                                       \
                gun[i] = gu;                                                           \
                gut[i] = gu;                                                           \
                if (gst) gst[i] = gs;                                                  \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
