// ddpm's own CUDA kernels, compiled at run time by NVRTC (src/nn/kernels/cuda/nvrtc.rs) and
// compile-checked without a GPU by `nvcc --ptx` in .ci/cuda-check. No headers: bf16 is handled
// as its bits (unsigned short), so NVRTC needs no include path on the GPU machine.
//
// Element types: every `_f32` / `_bf16` pair is one template; statistics, reductions and the
// optimizer always run in f32. Each kernel's formula is in the doc comment of the Rust op that
// launches it.

typedef unsigned short bf16;

__device__ __forceinline__ float ld(const float *p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float *p, long long i, float v) { p[i] = v; }
// Round to nearest even, NaN kept quiet: what candle's (the `half` crate's) f32 -> bf16 does.
__device__ __forceinline__ void st(bf16 *p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (bf16)((u >> 16) | 0x0040u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `scratch` holds 32 floats of shared memory; the call ends with a barrier so it can be reused.
__device__ float block_sum(float v, float *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

__device__ __forceinline__ float sigmoidf(float z) { return 1.0f / (1.0f + __expf(-z)); }

// ---------------------------------------------------------------------------------- GroupNorm
// One block per (example, group): the group's cpg = C / G channels are contiguous (NCHW).
template <typename T>
__device__ void gn_fwd(const T *x, const float *gamma, const float *beta, T *y, float *stats,
                       int C, int HW, int G, float eps, int silu) {
    __shared__ float scratch[32];
    const int cpg = C / G, g = blockIdx.x % G;
    const long long n = (long long)cpg * HW;
    const long long base = (long long)blockIdx.x * n;
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += ld(x, base + i);
    const float mean = block_sum(s, scratch) / (float)n;
    float q = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        float d = ld(x, base + i) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_sum(q, scratch) / (float)n + eps);
    if (threadIdx.x == 0) {
        stats[2 * blockIdx.x] = mean;
        stats[2 * blockIdx.x + 1] = rstd;
    }
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        int c = g * cpg + (int)(i / HW);
        float a = rstd * gamma[c];
        float z = ld(x, base + i) * a + (beta[c] - mean * a);
        st(y, base + i, silu ? z * sigmoidf(z) : z);
    }
}

// dz = dy act'(z); per channel c: pdg[b, c] = sum dz xh, pdb[b, c] = sum dz (reduced over the
// batch by gn_param_grad); dx = rstd (gamma_c dz - mean(gamma dz) - xh mean(gamma dz xh)).
template <typename T>
__device__ void gn_bwd(const T *x, const T *dy, const float *gamma, const float *beta,
                       const float *stats, T *dx, float *pdg, float *pdb, int C, int HW, int G,
                       int silu) {
    __shared__ float scratch[32];
    const int cpg = C / G, b = blockIdx.x / G, g = blockIdx.x % G;
    const long long base = (long long)blockIdx.x * cpg * HW;
    const float mean = stats[2 * blockIdx.x], rstd = stats[2 * blockIdx.x + 1];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int ci = 0; ci < cpg; ci++) {
        const int c = g * cpg + ci;
        const float a = rstd * gamma[c], bb = beta[c] - mean * a;
        float s_dz = 0.0f, s_dzx = 0.0f;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) {
            long long k = base + (long long)ci * HW + i;
            float xv = ld(x, k), d = ld(dy, k);
            if (silu) {
                float z = xv * a + bb, sg = sigmoidf(z);
                d *= sg * (1.0f + z * (1.0f - sg));
            }
            s_dz += d;
            s_dzx += d * ((xv - mean) * rstd);
        }
        s_dz = block_sum(s_dz, scratch);
        s_dzx = block_sum(s_dzx, scratch);
        if (threadIdx.x == 0) {
            pdg[(long long)b * C + c] = s_dzx;
            pdb[(long long)b * C + c] = s_dz;
        }
        sum_g += s_dz * gamma[c];
        sum_gx += s_dzx * gamma[c];
    }
    const float n = (float)cpg * (float)HW, mg = sum_g / n, mgx = sum_gx / n;
    for (int ci = 0; ci < cpg; ci++) {
        const int c = g * cpg + ci;
        const float a = rstd * gamma[c], bb = beta[c] - mean * a;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) {
            long long k = base + (long long)ci * HW + i;
            float xv = ld(x, k), d = ld(dy, k);
            if (silu) {
                float z = xv * a + bb, sg = sigmoidf(z);
                d *= sg * (1.0f + z * (1.0f - sg));
            }
            float xh = (xv - mean) * rstd;
            st(dx, k, rstd * (gamma[c] * d - mg - xh * mgx));
        }
    }
}

// dgamma[c] = sum_b pdg[b, c], dbeta[c] = sum_b pdb[b, c], in batch order (deterministic).
extern "C" __global__ void gn_param_grad(const float *pdg, const float *pdb, float *dgamma,
                                         float *dbeta, int B, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sg = 0.0f, sb = 0.0f;
    for (int b = 0; b < B; b++) {
        sg += pdg[(long long)b * C + c];
        sb += pdb[(long long)b * C + c];
    }
    dgamma[c] = sg;
    dbeta[c] = sb;
}

// -------------------------------------------------------------------------------- Softmax
// One warp per row of n: y = exp(scale x - max) / sum, in f32.
template <typename T>
__device__ void softmax_fwd(const T *x, T *y, long long rows, int n, float scale) {
    long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const long long base = row * n;
    float m = __int_as_float(0xff800000);
    for (int i = lane; i < n; i += 32) m = fmaxf(m, scale * ld(x, base + i));
    m = warp_max(m);
    float s = 0.0f;
    for (int i = lane; i < n; i += 32) s += __expf(scale * ld(x, base + i) - m);
    s = warp_sum(s);
    const float inv = 1.0f / s;
    for (int i = lane; i < n; i += 32) st(y, base + i, __expf(scale * ld(x, base + i) - m) * inv);
}

// dx = scale y (dy - sum(dy y)) per row.
template <typename T>
__device__ void softmax_bwd(const T *y, const T *dy, T *dx, long long rows, int n, float scale) {
    long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const long long base = row * n;
    float dot = 0.0f;
    for (int i = lane; i < n; i += 32) dot += ld(dy, base + i) * ld(y, base + i);
    dot = warp_sum(dot);
    for (int i = lane; i < n; i += 32)
        st(dx, base + i, scale * ld(y, base + i) * (ld(dy, base + i) - dot));
}

// ------------------------------------------------------------------------ Convolution epilogue
// y[b, c, p] += bias[b sb + c sc] (+ r[b, c, p]): the conv bias, per example or broadcast
// (sb = 0), and an optional residual, in the pass that reads y once.
template <typename T>
__device__ void bias_add(T *y, const T *bias, const T *r, long long sb, long long sc, int C,
                         int HW, long long total) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long bc = i / HW;
        long long b = bc / C, c = bc % C;
        float v = ld(y, i) + ld(bias, b * sb + c * sc);
        if (r) v += ld(r, i);
        st(y, i, v);
    }
}

// db[row] = sum of dy over a row of HW (one row per (example, channel)); one warp per row.
template <typename T>
__device__ void row_sum(const T *dy, T *db, long long rows, int HW) {
    long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = 0.0f;
    for (int i = lane; i < HW; i += 32) s += ld(dy, row * HW + i);
    s = warp_sum(s);
    if (lane == 0) st(db, row, s);
}

// ----------------------------------------------------------------------- Nearest 2x upsampling
// y[plane, 2i + di, 2j + dj] = x[plane, i, j]; one thread per output value.
template <typename T>
__device__ void upsample2x(const T *x, T *y, int H, int W, long long total) {
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        long long plane = o / (4LL * H * W);
        int rem = (int)(o % (4LL * H * W)), oy = rem / (2 * W), ox = rem % (2 * W);
        y[o] = x[plane * H * W + (long long)(oy >> 1) * W + (ox >> 1)];
    }
}

// dx[plane, i, j] = sum of dy over the 2x2 block at (2i, 2j); one thread per input value.
template <typename T>
__device__ void downsum2x(const T *dy, T *dx, int H, int W, long long total) {
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        long long plane = o / ((long long)H * W);
        int rem = (int)(o % ((long long)H * W)), i = rem / W, j = rem % W;
        long long t = plane * 4LL * H * W + (long long)(2 * i) * (2 * W) + 2 * j;
        st(dx, o, (ld(dy, t) + ld(dy, t + 1)) + (ld(dy, t + 2 * W) + ld(dy, t + 2 * W + 1)));
    }
}

#define BOTH(name, params, args)                                                              \
    extern "C" __global__ void name##_f32 params(float) { name<float> args; }                 \
    extern "C" __global__ void name##_bf16 params(bf16) { name<bf16> args; }

#define GN_FWD(T) (const T *x, const float *gamma, const float *beta, T *y, float *stats, int C, \
                   int HW, int G, float eps, int silu)
BOTH(gn_fwd, GN_FWD, (x, gamma, beta, y, stats, C, HW, G, eps, silu))
#define GN_BWD(T) (const T *x, const T *dy, const float *gamma, const float *beta,             \
                   const float *stats, T *dx, float *pdg, float *pdb, int C, int HW, int G,    \
                   int silu)
BOTH(gn_bwd, GN_BWD, (x, dy, gamma, beta, stats, dx, pdg, pdb, C, HW, G, silu))
#define SM_FWD(T) (const T *x, T *y, long long rows, int n, float scale)
BOTH(softmax_fwd, SM_FWD, (x, y, rows, n, scale))
#define SM_BWD(T) (const T *y, const T *dy, T *dx, long long rows, int n, float scale)
BOTH(softmax_bwd, SM_BWD, (y, dy, dx, rows, n, scale))
#define BIAS_ADD(T) (T *y, const T *bias, const T *r, long long sb, long long sc, int C, int HW,  \
                     long long total)
BOTH(bias_add, BIAS_ADD, (y, bias, r, sb, sc, C, HW, total))
#define ROW_SUM(T) (const T *dy, T *db, long long rows, int HW)
BOTH(row_sum, ROW_SUM, (dy, db, rows, HW))
#define UP2(T) (const T *x, T *y, int H, int W, long long total)
BOTH(upsample2x, UP2, (x, y, H, W, total))
#define DOWN2(T) (const T *dy, T *dx, int H, int W, long long total)
BOTH(downsum2x, DOWN2, (dy, dx, H, W, total))

// ------------------------------------------------------------------- Multi-tensor optimizer
// Up to TABLE tensors per launch, passed by value (3,848 bytes of kernel parameters, under
// the 4 KiB every architecture takes); blockIdx.y picks the tensor, blocks stride over it.
// The arithmetic is written with _rn intrinsics so it is not contracted into FMAs: it then
// rounds exactly as ddpm's CPU AdamW and EMA (candle's elementwise f32 ops) do.
#define TABLE 96
struct Table {
    unsigned long long ptr[4][TABLE];
    long long numel[TABLE];
    int count;
    int pad;
};

// p <- p decay; m <- m b1 + g c1; v <- v b2 + (g g) c2; p <- p - (m / (sqrt(v) ibc2 + eps)) ss,
// with g = grad gscale; ptr = [p, g, m, v]. Coefficients are f32 roundings of the f64 values.
extern "C" __global__ void adamw_multi(Table t, float decay, float b1, float c1, float b2,
                                       float c2, float ibc2, float eps, float ss, float gscale) {
    int k = blockIdx.y;
    if (k >= t.count) return;
    float *p = (float *)t.ptr[0][k], *m = (float *)t.ptr[2][k], *v = (float *)t.ptr[3][k];
    const float *g = (const float *)t.ptr[1][k];
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < t.numel[k];
         i += (long long)gridDim.x * blockDim.x) {
        float gi = __fmul_rn(g[i], gscale);
        float pi = __fmul_rn(p[i], decay);
        float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(gi, c1));
        float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(gi, gi), c2));
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), ibc2), eps);
        p[i] = __fsub_rn(pi, __fmul_rn(__fdiv_rn(mi, denom), ss));
        m[i] = mi;
        v[i] = vi;
    }
}

// ema <- ema - (ema - p) c, or ema <- p when `copy`; ptr = [ema, p].
extern "C" __global__ void ema_multi(Table t, float c, int copy) {
    int k = blockIdx.y;
    if (k >= t.count) return;
    float *e = (float *)t.ptr[0][k];
    const float *p = (const float *)t.ptr[1][k];
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < t.numel[k];
         i += (long long)gridDim.x * blockDim.x)
        e[i] = copy ? p[i] : __fsub_rn(e[i], __fmul_rn(__fsub_rn(e[i], p[i]), c));
}

// partial[slot + k gridDim.x + blockIdx.x] = sum of g^2 over this block's share of tensor k.
extern "C" __global__ void sumsq_multi(Table t, float *partial, int slot) {
    __shared__ float scratch[32];
    int k = blockIdx.y;
    float s = 0.0f;
    if (k < t.count) {
        const float *g = (const float *)t.ptr[0][k];
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < t.numel[k];
             i += (long long)gridDim.x * blockDim.x)
            s += g[i] * g[i];
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0 && k < t.count) partial[slot + k * gridDim.x + blockIdx.x] = s;
}

// out[0] = sum of partial[0..n] in a fixed order (one block).
extern "C" __global__ void sum_all(const float *partial, int n, float *out) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// g <- g c; ptr = [g].
extern "C" __global__ void scale_multi(Table t, float c) {
    int k = blockIdx.y;
    if (k >= t.count) return;
    float *g = (float *)t.ptr[0][k];
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < t.numel[k];
         i += (long long)gridDim.x * blockDim.x)
        g[i] = __fmul_rn(g[i], c);
}
