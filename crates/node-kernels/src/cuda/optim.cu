// SGD's in-place updates on CUDA (see `optim.rs`): the momentum buffer's and the parameter's,
// each one grid-stride pass over contiguous data. Compiled at run time with NVRTC, without
// fused multiply-adds, so that the roundings are those of Candle's op-by-op arithmetic.

#define NODE_GRID_STRIDE(i, n)                                                               \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// b ← b·μ + (g + p·λ), or b·μ + g without weight decay.
template <typename T>
__device__ void sgd_update(unsigned long long n, T mu, T wd, int decay, T *b, const T *g,
                           const T *p) {
    NODE_GRID_STRIDE(i, n) {
        b[i] = decay ? b[i] * mu + (g[i] + p[i] * wd) : b[i] * mu + g[i];
    }
}

// p ← p − (d + p·λ)·lr, or p − d·lr without weight decay.
template <typename T>
__device__ void sgd_descend(unsigned long long n, T lr, T wd, int decay, T *p, const T *d) {
    NODE_GRID_STRIDE(i, n) {
        p[i] = decay ? p[i] - (d[i] + p[i] * wd) * lr : p[i] - d[i] * lr;
    }
}

#define NODE_OPTIM_KERNELS(T, SUFFIX)                                                        \
    extern "C" __global__ void node_sgd_update_##SUFFIX(unsigned long long n, T mu, T wd,   \
                                                        int decay, T *b, const T *g,        \
                                                        const T *p) {                       \
        sgd_update<T>(n, mu, wd, decay, b, g, p);                                            \
    }                                                                                        \
    extern "C" __global__ void node_sgd_descend_##SUFFIX(unsigned long long n, T lr, T wd,  \
                                                         int decay, T *p, const T *d) {     \
        sgd_descend<T>(n, lr, wd, decay, p, d);                                              \
    }

NODE_OPTIM_KERNELS(float, f32)
NODE_OPTIM_KERNELS(double, f64)
