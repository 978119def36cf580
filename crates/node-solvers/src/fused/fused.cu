// The solvers' fused kernels: Runge–Kutta stage combinations, `out = base + Σ_j w_j x_j`, in
// one pass over the output, and the concatenation of flat parts into one vector (the adjoint's
// augmented state), in one launch.
//
// Launched by node-solvers (`src/fused/cuda.rs`) and compiled at run time by NVRTC with
// fmad=false: each term is a product and then a sum, in the terms' order, as Candle's chain
// of `affine` and `add` kernels computes it, so the values are the chain's (only the sign of
// a zero can differ: Candle's `affine` adds +0).
//
// The pointers travel in one by-value struct (a few hundred bytes of kernel parameters), so a
// combination of up to NODE_LINCOMB_MAX_TERMS terms, or a concatenation of up to
// NODE_CONCAT_MAX_PARTS parts, is a single launch with no copy to the device first; the Rust
// side splits longer ones. `base` may be null.

#define NODE_LINCOMB_MAX_TERMS 16

struct NodeLincombF32 {
    const float *base;
    const float *x[NODE_LINCOMB_MAX_TERMS];
    float w[NODE_LINCOMB_MAX_TERMS];
};

struct NodeLincombF64 {
    const double *base;
    const double *x[NODE_LINCOMB_MAX_TERMS];
    double w[NODE_LINCOMB_MAX_TERMS];
};

template <typename T, typename Terms>
__device__ __forceinline__ void node_lincomb(const Terms &t, int n_terms, T *out,
                                             unsigned long long n) {
    const unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        T acc = t.x[0][i] * t.w[0];
        if (t.base) acc = t.base[i] + acc;
        for (int j = 1; j < n_terms; ++j) acc = acc + t.x[j][i] * t.w[j];
        out[i] = acc;
    }
}

extern "C" __global__ void node_lincomb_f32(const NodeLincombF32 terms, int n_terms, float *out,
                                            unsigned long long n) {
    node_lincomb<float>(terms, n_terms, out, n);
}

extern "C" __global__ void node_lincomb_f64(const NodeLincombF64 terms, int n_terms, double *out,
                                            unsigned long long n) {
    node_lincomb<double>(terms, n_terms, out, n);
}

#define NODE_CONCAT_MAX_PARTS 16

// Part k holds the elements [end[k-1], end[k]) of the output (end[-1] = 0), ends ascending,
// the last one `n`. A part of no elements (equal ends) is never read.
struct NodeConcatParts {
    const void *x[NODE_CONCAT_MAX_PARTS];
    unsigned long long end[NODE_CONCAT_MAX_PARTS];
};

template <typename T>
__device__ __forceinline__ void node_concat(const NodeConcatParts &p, T *out,
                                            unsigned long long n) {
    const unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    int k = 0;  // a thread's indices ascend, so its part index only moves forward
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        while (i >= p.end[k]) ++k;
        const unsigned long long start = k ? p.end[k - 1] : 0;
        out[i] = static_cast<const T *>(p.x[k])[i - start];
    }
}

extern "C" __global__ void node_concat_f32(const NodeConcatParts parts, float *out,
                                           unsigned long long n) {
    node_concat<float>(parts, out, n);
}

extern "C" __global__ void node_concat_f64(const NodeConcatParts parts, double *out,
                                           unsigned long long n) {
    node_concat<double>(parts, out, n);
}
