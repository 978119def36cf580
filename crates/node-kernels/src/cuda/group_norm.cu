// Group normalization (optionally followed by a ReLU) on CUDA: one block per
// (sample, group) slice of `cg` channels × `s` positions, contiguous NCHW data.
// Compiled at run time with NVRTC (see `cuda.rs`); f32 and f64.
//
// Statistics are computed the same way in the forward and backward kernels (two passes,
// block sums in the data's precision), so the backward recomputes them bit for bit instead
// of storing them, and the fused ReLU's mask sees exactly the forward's values (the
// normalization is one explicit fma in both).

#define BLOCK 256

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of `v` over the block, returned to every thread. `sh` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // the previous call's readers are done with sh
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < (blockDim.x >> 5) ? sh[lane] : T(0);
        w = warp_sum(w);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    return sh[0];
}

// Mean and 1/σ of one slice (biased variance, eps added).
template <typename T>
__device__ void slice_stats(const T *x, int len, T eps, T *sh, T &mean, T &rstd) {
    T acc = 0;
    for (int i = threadIdx.x; i < len; i += blockDim.x) acc += x[i];
    mean = block_sum(acc, sh) / T(len);
    acc = 0;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        const T d = x[i] - mean;
        acc += d * d;
    }
    const T var = block_sum(acc, sh) / T(len);
    rstd = T(1) / sqrt(var + eps);
}

template <typename T>
__device__ __forceinline__ T normalize(T x, T mean, T scale, T shift) {
    return fma(x - mean, scale, shift);
}

template <typename T>
__device__ void gn_fwd(const T *x, const T *w, const T *b, T *y, int groups, int cg, int s,
                       T eps, int relu) {
    __shared__ T sh[32];
    const int slice = blockIdx.x, len = cg * s;
    const T *xs = x + (size_t)slice * len;
    T *ys = y + (size_t)slice * len;
    T mean, rstd;
    slice_stats(xs, len, eps, sh, mean, rstd);
    const int c0 = (slice % groups) * cg;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        const int c = c0 + i / s;
        T v = normalize(xs[i], mean, rstd * w[c], b[c]);
        if (relu && !(v > T(0))) v = v != v ? v : T(0);  // NaN stays NaN
        ys[i] = v;
    }
}

// dx of one slice, and per channel of the group (Σ dy, Σ dy·x̂) into part[slice][j][2].
// With relu, dy is masked where the norm's output was ≤ 0 (or NaN).
template <typename T>
__device__ void gn_bwd(const T *x, const T *w, const T *b, const T *dy, T *dx, T *part,
                       int groups, int cg, int s, T eps, int relu) {
    __shared__ T sh[32];
    const int slice = blockIdx.x, len = cg * s;
    const T *xs = x + (size_t)slice * len;
    const T *dys = dy + (size_t)slice * len;
    T *dxs = dx + (size_t)slice * len;
    T mean, rstd;
    slice_stats(xs, len, eps, sh, mean, rstd);
    const int c0 = (slice % groups) * cg;
    T m1 = 0, m2 = 0;  // Σ_j γ_j Σ dy, Σ_j γ_j Σ dy·x̂ over the slice
    for (int j = 0; j < cg; ++j) {
        const int c = c0 + j;
        const T scale = rstd * w[c];
        T a0 = 0, a1 = 0;
        for (int i = threadIdx.x; i < s; i += blockDim.x) {
            const T xv = xs[j * s + i];
            T g = dys[j * s + i];
            if (relu && !(normalize(xv, mean, scale, b[c]) > T(0))) g = T(0);
            a0 += g;
            a1 += g * (xv - mean);
        }
        const T s_dy = block_sum(a0, sh);
        const T s_dy_xhat = rstd * block_sum(a1, sh);
        if (threadIdx.x == 0) {
            part[((size_t)slice * cg + j) * 2] = s_dy;
            part[((size_t)slice * cg + j) * 2 + 1] = s_dy_xhat;
        }
        m1 += w[c] * s_dy;
        m2 += w[c] * s_dy_xhat;
    }
    m1 /= T(len);
    m2 /= T(len);
    // dx = σ⁻¹ (γ dy − m1 − x̂ m2) = dy·(σ⁻¹γ) + (x − μ)·(−σ⁻² m2) − σ⁻¹ m1
    const T bb = -rstd * rstd * m2, e = -rstd * m1;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        const int c = c0 + i / s;
        const T scale = rstd * w[c];
        const T xv = xs[i];
        T g = dys[i];
        if (relu && !(normalize(xv, mean, scale, b[c]) > T(0))) g = T(0);
        dxs[i] = g * scale + (xv - mean) * bb + e;
    }
}

// dγ, dβ: channel c sums part[n][c % cg] of the slices n·groups + c / cg over the batch.
template <typename T>
__device__ void gn_bwd_params(const T *part, T *dwb, int batch, int groups, int cg) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, channels = groups * cg;
    if (c >= channels) return;
    const int g = c / cg, j = c % cg;
    T dw = 0, db = 0;
    for (int n = 0; n < batch; ++n) {
        const size_t k = ((size_t)(n * groups + g) * cg + j) * 2;
        db += part[k];
        dw += part[k + 1];
    }
    dwb[c] = dw;
    dwb[channels + c] = db;
}

#define INSTANTIATE(T, NAME)                                                                 \
    extern "C" __global__ void __launch_bounds__(BLOCK)                                      \
        node_gn_fwd_##NAME(const T *x, const T *w, const T *b, T *y, int groups, int cg,     \
                           int s, T eps, int relu) {                                          \
        gn_fwd<T>(x, w, b, y, groups, cg, s, eps, relu);                                     \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK)                                      \
        node_gn_bwd_##NAME(const T *x, const T *w, const T *b, const T *dy, T *dx, T *part,  \
                           int groups, int cg, int s, T eps, int relu) {                      \
        gn_bwd<T>(x, w, b, dy, dx, part, groups, cg, s, eps, relu);                          \
    }                                                                                         \
    extern "C" __global__ void node_gn_bwd_params_##NAME(const T *part, T *dwb, int batch,   \
                                                         int groups, int cg) {               \
        gn_bwd_params<T>(part, dwb, batch, groups, cg);                                      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
