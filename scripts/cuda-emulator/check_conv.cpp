// Checks crates/node-kernels/src/cuda/conv.cu on a CPU (see cuda_on_cpu.h) against references
// written the other way round: im2col against the unfolding's definition (loops over output
// pixels and taps, the input read through its strides, here a layout with H and W swapped in
// memory), col2im against the scatter it is the adjoint of (every unfolded entry added to
// the pixel it came from, in double), rows_to_nchw against the rearrangement. Geometries:
// the ODE-Net's 3×3 block and 4×4 stride-2 downsampling, stride 3 with dilation 2, padding
// larger than the kernel needs, non-square kernels, 1×1; with a time channel in front of the
// input's (`conv2d_time`: written by im2col, skipped by col2im); the launch grid of
// `cuda/conv.rs` and fewer blocks (the grid-stride loop). Run by scripts/check-cuda-kernels.sh.
#include "cuda_on_cpu.h"
#include "../../crates/node-kernels/src/cuda/conv.cu"

#include <cstdio>
#include <random>

static int failures = 0;

struct Case {
    unsigned long long b, c, h, w, co, kh, kw, pad, stride, dil;
    unsigned long long lead = 0;  // 1: a time channel (counted in c)
};

static NodeConvGeom geometry(const Case &k) {
    NodeConvGeom g{};
    g.b = k.b, g.c = k.c, g.h = k.h, g.w = k.w, g.co = k.co, g.kh = k.kh, g.kw = k.kw;
    g.pad = k.pad, g.stride = k.stride, g.dil = k.dil;
    g.lead = k.lead, g.time = k.lead ? -0.8125 : 0.0;
    g.oh = (k.h + 2 * k.pad - k.dil * (k.kh - 1) - 1) / k.stride + 1;
    g.ow = (k.w + 2 * k.pad - k.dil * (k.kw - 1) - 1) / k.stride + 1;
    // The input (c − lead channels) lies as [b][c][w][h]: strides of (b, c, y, x).
    g.xs[0] = (k.c - k.lead) * k.h * k.w, g.xs[1] = k.h * k.w, g.xs[2] = 1, g.xs[3] = k.h;
    return g;
}

static void report(const char *what, const Case &k, unsigned grid, size_t bad) {
    failures += bad != 0;
    std::printf("%s %llux%llux%llux%llu k%llux%llu p%llu s%llu d%llu%s grid=%u: %s\n", what, k.b,
                k.c, k.h, k.w, k.kh, k.kw, k.pad, k.stride, k.dil, k.lead ? " time" : "", grid,
                bad ? "FAILED" : "ok");
}

static unsigned blocks(unsigned long long n, bool full) {
    return full ? unsigned((n + 255) / 256) : unsigned(n % 3 + 1);
}

template <typename T>
static void check(const Case &k, bool full_grid,
                  void (*im2col_k)(const NodeConvGeom, const T *, T *),
                  void (*col2im_k)(const NodeConvGeom, const T *, T *),
                  void (*rows_k)(const NodeConvGeom, const T *, T *),
                  void (*rows_bias_k)(const NodeConvGeom, const T *, const T *, T *)) {
    const NodeConvGeom g = geometry(k);
    const unsigned long long kk = g.c * g.kh * g.kw, rows = g.b * g.oh * g.ow, xc = g.c - g.lead;
    std::mt19937 rng(unsigned(k.b * 1000 + k.h * 10 + k.stride));
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<T> x(g.b * xc * g.h * g.w);
    for (auto &v : x) v = T(normal(rng));
    const char *name = sizeof(T) == 4 ? "f32" : "f64";
    char what[64];

    // im2col: exact copies.
    std::vector<T> cols(rows * kk, T(12345));
    unsigned grid = blocks(cols.size(), full_grid);
    emu::launch(grid, 256, [&] { im2col_k(g, x.data(), cols.data()); });
    size_t bad = 0;
    for (unsigned long long b = 0; b < g.b; ++b)
        for (unsigned long long oy = 0; oy < g.oh; ++oy)
            for (unsigned long long ox = 0; ox < g.ow; ++ox)
                for (unsigned long long c = 0; c < g.c; ++c)
                    for (unsigned long long i = 0; i < g.kh; ++i)
                        for (unsigned long long j = 0; j < g.kw; ++j) {
                            const long long iy = (long long)(oy * g.stride + i * g.dil) - (long long)g.pad;
                            const long long ix = (long long)(ox * g.stride + j * g.dil) - (long long)g.pad;
                            const bool in = iy >= 0 && iy < (long long)g.h && ix >= 0 && ix < (long long)g.w;
                            const T want = !in ? T(0)
                                           : c < g.lead ? T(g.time)
                                           : x[b * g.xs[0] + (c - g.lead) * g.xs[1] + iy * g.xs[2] + ix * g.xs[3]];
                            const T got = cols[((b * g.oh + oy) * g.ow + ox) * kk + (c * g.kh + i) * g.kw + j];
                            bad += !(got == want);
                        }
    std::snprintf(what, sizeof what, "%s im2col", name);
    report(what, k, grid, bad);

    // col2im against the scatter, in double.
    std::vector<T> dcols(rows * kk), dx(x.size(), T(12345));
    for (auto &v : dcols) v = T(normal(rng));
    std::vector<double> want(x.size(), 0.0);
    for (unsigned long long r = 0; r < rows; ++r) {
        const unsigned long long ox = r % g.ow, oy = r / g.ow % g.oh, b = r / (g.ow * g.oh);
        for (unsigned long long t = 0; t < kk; ++t) {
            const unsigned long long j = t % g.kw, i = t / g.kw % g.kh, c = t / (g.kw * g.kh);
            const long long iy = (long long)(oy * g.stride + i * g.dil) - (long long)g.pad;
            const long long ix = (long long)(ox * g.stride + j * g.dil) - (long long)g.pad;
            if (c >= g.lead && iy >= 0 && iy < (long long)g.h && ix >= 0 && ix < (long long)g.w)
                want[((b * xc + c - g.lead) * g.h + iy) * g.w + ix] += double(dcols[r * kk + t]);
        }
    }
    grid = blocks(dx.size(), full_grid);
    emu::launch(grid, 256, [&] { col2im_k(g, dcols.data(), dx.data()); });
    // At most kh·kw terms per pixel, each of the order of 1.
    const double tol = (sizeof(T) == 4 ? 1e-6 : 1e-15) * double(g.kh * g.kw);
    bad = 0;
    for (size_t e = 0; e < dx.size(); ++e)
        if (!(std::fabs(double(dx[e]) - want[e]) <= tol) && bad++ < 3)
            std::printf("  dx[%zu]: got %.17g, want %.17g\n", e, double(dx[e]), want[e]);
    std::snprintf(what, sizeof what, "%s col2im", name);
    report(what, k, grid, bad);

    // rows_to_nchw, with and without a bias: exact.
    std::vector<T> prod(rows * g.co), bias(g.co), y(rows * g.co, T(12345)), yb(y);
    for (auto &v : prod) v = T(normal(rng));
    for (auto &v : bias) v = T(normal(rng));
    grid = blocks(y.size(), full_grid);
    emu::launch(grid, 256, [&] { rows_k(g, prod.data(), y.data()); });
    emu::launch(grid, 256, [&] { rows_bias_k(g, prod.data(), bias.data(), yb.data()); });
    bad = 0;
    const unsigned long long p = g.oh * g.ow;
    for (unsigned long long b = 0; b < g.b; ++b)
        for (unsigned long long o = 0; o < g.co; ++o)
            for (unsigned long long q = 0; q < p; ++q) {
                const T v = prod[(b * p + q) * g.co + o];
                const size_t e = (b * g.co + o) * p + q;
                bad += !(y[e] == v) + !(yb[e] == T(v + bias[o]));
            }
    std::snprintf(what, sizeof what, "%s rows_to_nchw", name);
    report(what, k, grid, bad);
}

int main() {
    const Case cases[] = {
        {2, 5, 6, 6, 4, 3, 3, 1, 1, 1},    // the ODE-Net block's 3×3 (fewer channels)
        {2, 3, 26, 26, 4, 4, 4, 1, 2, 1},  // its 4×4 stride-2 downsampling
        {1, 2, 9, 11, 3, 3, 3, 1, 3, 2},   // stride 3, dilation 2
        {1, 3, 7, 5, 5, 3, 2, 2, 1, 1},    // padding beyond the kernel's reach, 3×2 kernel
        {3, 5, 5, 5, 7, 1, 1, 0, 1, 1},    // 1×1
        {2, 1, 28, 28, 3, 3, 3, 0, 1, 1},  // a first layer on images
        {2, 5, 6, 6, 4, 3, 3, 1, 1, 1, 1}, // the ODE-Net's time-dependent 3×3 (4 channels + t)
        {1, 3, 9, 11, 3, 3, 3, 1, 3, 2, 1}, // stride 3, dilation 2, with a time channel
        {2, 2, 7, 5, 3, 3, 2, 2, 1, 1, 1},  // padding beyond the kernel, one channel + t
    };
    for (const Case &k : cases)
        for (bool full : {true, false}) {
            check<float>(k, full, node_im2col_f32, node_col2im_f32, node_rows_to_nchw_f32,
                         node_rows_to_nchw_bias_f32);
            check<double>(k, full, node_im2col_f64, node_col2im_f64, node_rows_to_nchw_f64,
                          node_rows_to_nchw_bias_f64);
        }
    std::printf(failures ? "FAILED: %d cases\n" : "all matched\n", failures);
    return failures ? 1 : 0;
}
