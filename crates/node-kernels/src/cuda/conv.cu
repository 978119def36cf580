// The convolution's data movement on CUDA, around cuBLAS products (see `conv/unfolded.rs`):
// unfolding the input (im2col), its adjoint (col2im: summing the unfolded gradient back into
// the input's pixels), and the product's rows rearranged to NCHW with the bias added.
// Compiled at run time with NVRTC (see `cuda.rs`); f32 and f64.
//
// Every kernel writes each output element from one thread (a grid-stride loop over the
// output, 64-bit indices): col2im gathers the taps that reach a pixel, in a fixed order,
// instead of scattering with atomics, so its sums are the same on every run.
//
// The unfolded layout is Candle's: `cols[(b, oy, ox)][(c, i, j)]`, so a kernel
// `[co][c][i][j]` is its product's other operand as it lies in memory.

// With `lead` = 1, the unfolded input has a constant channel `time` in front of the input's
// `c − 1` (an ODE-Net's time-dependent convolution, `conv2d_time`): `c` counts the kernel's
// channels, the time's included.
struct NodeConvGeom {
    unsigned long long b, c, h, w;     // batch, kernel channels, input height and width
    unsigned long long co, kh, kw;     // kernel
    unsigned long long oh, ow;         // output
    unsigned long long pad, stride, dil;
    unsigned long long xs[4];          // the input's strides (im2col), in elements
    unsigned long long lead;           // 1 with a time channel, else 0
    double time;                       // its value
};

#define NODE_GRID_STRIDE(i, n)                                                               \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// cols[(b, oy, ox)][(c, i, j)] = x[b, c, oy·s + i·d − p, ox·s + j·d − p], 0 outside the image;
// `x` with the strides `g.xs`. With a time channel, channel 0 is `g.time` inside the image and
// channel c > 0 is the input's c − 1.
template <typename T>
__device__ void im2col(const NodeConvGeom g, const T *x, T *cols) {
    const unsigned long long k = g.c * g.kh * g.kw;
    const unsigned long long n = g.b * g.oh * g.ow * k;
    NODE_GRID_STRIDE(e, n) {
        unsigned long long t = e % k, row = e / k;
        const unsigned long long j = t % g.kw;
        t /= g.kw;
        const unsigned long long i = t % g.kh, c = t / g.kh;
        const unsigned long long ox = row % g.ow;
        row /= g.ow;
        const unsigned long long oy = row % g.oh, b = row / g.oh;
        const long long iy = (long long)(oy * g.stride + i * g.dil) - (long long)g.pad;
        const long long ix = (long long)(ox * g.stride + j * g.dil) - (long long)g.pad;
        T v = T(0);
        if (iy >= 0 && iy < (long long)g.h && ix >= 0 && ix < (long long)g.w)
            v = c < g.lead ? T(g.time)
                           : x[b * g.xs[0] + (c - g.lead) * g.xs[1] +
                               (unsigned long long)iy * g.xs[2] +
                               (unsigned long long)ix * g.xs[3]];
        cols[e] = v;
    }
}

// The adjoint of im2col: dx[b, c, y, x] = Σ over the taps (i, j) and output pixels (oy, ox)
// with oy·s + i·d − p = y and ox·s + j·d − p = x of dcols[(b, oy, ox)][(c + lead, i, j)],
// summed in the order i, then j (the time channel's entries are skipped: it has no
// gradient). `dcols` and `dx` contiguous.
template <typename T>
__device__ void col2im(const NodeConvGeom g, const T *dcols, T *dx) {
    const unsigned long long k = g.c * g.kh * g.kw, xc = g.c - g.lead;
    const unsigned long long n = g.b * xc * g.h * g.w;
    NODE_GRID_STRIDE(e, n) {
        unsigned long long t = e;
        const long long x = (long long)(t % g.w);
        t /= g.w;
        const long long y = (long long)(t % g.h);
        t /= g.h;
        const unsigned long long c = t % xc + g.lead, b = t / xc;
        T acc = T(0);
        for (unsigned long long i = 0; i < g.kh; ++i) {
            const long long ty = y + (long long)g.pad - (long long)(i * g.dil);
            if (ty < 0 || ty % (long long)g.stride != 0) continue;
            const unsigned long long oy = (unsigned long long)ty / g.stride;
            if (oy >= g.oh) continue;
            for (unsigned long long j = 0; j < g.kw; ++j) {
                const long long tx = x + (long long)g.pad - (long long)(j * g.dil);
                if (tx < 0 || tx % (long long)g.stride != 0) continue;
                const unsigned long long ox = (unsigned long long)tx / g.stride;
                if (ox >= g.ow) continue;
                acc += dcols[((b * g.oh + oy) * g.ow + ox) * k + (c * g.kh + i) * g.kw + j];
            }
        }
        dx[e] = acc;
    }
}

// y[b, co, p] = rows[(b, p)][co] (+ bias[co]): the product's rows as NCHW. Contiguous.
template <typename T, bool BIAS>
__device__ void rows_to_nchw(const NodeConvGeom g, const T *rows, const T *bias, T *y) {
    const unsigned long long p = g.oh * g.ow;
    const unsigned long long n = g.b * g.co * p;
    NODE_GRID_STRIDE(e, n) {
        const unsigned long long q = e % p, t = e / p;
        const unsigned long long o = t % g.co, b = t / g.co;
        const T v = rows[(b * p + q) * g.co + o];
        y[e] = BIAS ? v + bias[o] : v;
    }
}

#define NODE_CONV_KERNELS(T, SUFFIX)                                                         \
    extern "C" __global__ void node_im2col_##SUFFIX(const NodeConvGeom g, const T *x,        \
                                                    T *cols) {                              \
        im2col<T>(g, x, cols);                                                               \
    }                                                                                        \
    extern "C" __global__ void node_col2im_##SUFFIX(const NodeConvGeom g, const T *dcols,    \
                                                    T *dx) {                                \
        col2im<T>(g, dcols, dx);                                                             \
    }                                                                                        \
    extern "C" __global__ void node_rows_to_nchw_##SUFFIX(const NodeConvGeom g,             \
                                                          const T *rows, T *y) {            \
        rows_to_nchw<T, false>(g, rows, nullptr, y);                                         \
    }                                                                                        \
    extern "C" __global__ void node_rows_to_nchw_bias_##SUFFIX(                              \
        const NodeConvGeom g, const T *rows, const T *bias, T *y) {                          \
        rows_to_nchw<T, true>(g, rows, bias, y);                                             \
    }

NODE_CONV_KERNELS(float, f32)
NODE_CONV_KERNELS(double, f64)
