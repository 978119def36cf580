// Checks crates/node-kernels/src/cuda/group_norm.cu on a CPU (see cuda_on_cpu.h) against a
// plain double-precision group norm, forward and backward, with and without the fused ReLU,
// for f32 and f64, at the three block sizes `cuda.rs` picks. Run by scripts/check-cuda-kernels.sh.
#include "cuda_on_cpu.h"
#include "../../crates/node-kernels/src/cuda/group_norm.cu"

#include <cstdio>
#include <random>

// As `block_size` in crates/node-kernels/src/cuda.rs.
static unsigned block_size(int len) { return len <= 256 ? 64 : len <= 2048 ? 128 : 256; }

static int failures = 0;

static void expect_close(const char *what, double got, double want, double tol) {
    if (!(std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want)))) {
        if (failures++ < 10) std::printf("  %s: got %.10g, want %.10g\n", what, got, want);
    }
}

template <typename T>
static void check(int batch, int channels, int s, int groups, bool relu, double tol,
                  void (*fwd)(const T *, const T *, const T *, T *, int, int, int, T, int),
                  void (*bwd)(const T *, const T *, const T *, const T *, T *, T *, int, int,
                              int, T, int),
                  void (*params)(const T *, T *, int, int, int)) {
    const int cg = channels / groups, len = cg * s, slices = batch * groups;
    const size_t n = (size_t)batch * channels * s;
    std::mt19937 rng(batch * 1000 + channels * 10 + s + relu);
    std::normal_distribution<double> normal(0.5, 2.0);
    std::vector<T> x(n), dy(n), w(channels), b(channels), y(n), dx(n), part(slices * cg * 2),
        dwb(2 * channels);
    for (auto &v : x) v = T(normal(rng));
    for (auto &v : dy) v = T(normal(rng));
    for (auto &v : w) v = T(normal(rng));
    for (auto &v : b) v = T(normal(rng) * 0.3);
    const T eps = T(1e-5);
    const unsigned block = block_size(len);
    emu::launch(slices, block, [&] {
        fwd(x.data(), w.data(), b.data(), y.data(), groups, cg, s, eps, relu);
    });
    emu::launch(slices, block, [&] {
        bwd(x.data(), w.data(), b.data(), dy.data(), dx.data(), part.data(), groups, cg, s, eps,
            relu);
    });
    emu::launch((channels + 127) / 128 * 1, 128, [&] {
        params(part.data(), dwb.data(), batch, groups, cg);
    });

    // The reference, in double.
    std::vector<double> dw(channels, 0.0), db(channels, 0.0);
    for (int sl = 0; sl < slices; ++sl) {
        const size_t o = (size_t)sl * len;
        const int c0 = (sl % groups) * cg;
        double mean = 0, var = 0;
        for (int i = 0; i < len; ++i) mean += x[o + i];
        mean /= len;
        for (int i = 0; i < len; ++i) var += (x[o + i] - mean) * (x[o + i] - mean);
        const double rstd = 1.0 / std::sqrt(var / len + double(eps));
        std::vector<double> g(len), xhat(len);
        double m1 = 0, m2 = 0;
        for (int i = 0; i < len; ++i) {
            const int c = c0 + i / s;
            xhat[i] = (x[o + i] - mean) * rstd;
            double yv = xhat[i] * w[c] + b[c];
            g[i] = dy[o + i];
            if (relu && !(yv > 0)) { yv = 0; g[i] = 0; }
            expect_close("y", y[o + i], yv, tol);
            m1 += w[c] * g[i];
            m2 += w[c] * g[i] * xhat[i];
            db[c] += g[i];
            dw[c] += g[i] * xhat[i];
        }
        m1 /= len;
        m2 /= len;
        for (int i = 0; i < len; ++i) {
            const int c = c0 + i / s;
            expect_close("dx", dx[o + i], rstd * (w[c] * g[i] - m1 - xhat[i] * m2), tol);
        }
    }
    for (int c = 0; c < channels; ++c) {
        expect_close("dweight", dwb[c], dw[c], tol);
        expect_close("dbias", dwb[channels + c], db[c], tol);
    }
    std::printf("%s B=%d C=%d S=%d groups=%d relu=%d block=%u: %s\n",
                sizeof(T) == 4 ? "f32" : "f64", batch, channels, s, groups, relu, block,
                failures ? "FAILED" : "ok");
}

int main() {
    struct Case { int batch, channels, s, groups; };
    // The ODE block's norm (batch 2), odd sizes, one channel per group, one group, and slices
    // of 1400 and 2600 elements (the 128- and 256-thread blocks).
    const Case cases[] = {{2, 64, 36, 32}, {2, 6, 21, 3}, {2, 5, 11, 5},
                          {1, 3, 33, 1},   {2, 4, 700, 2}, {1, 2, 1300, 1}};
    for (const Case &k : cases)
        for (bool relu : {false, true}) {
            check<float>(k.batch, k.channels, k.s, k.groups, relu, 2e-4, node_gn_fwd_f32,
                         node_gn_bwd_f32, node_gn_bwd_params_f32);
            check<double>(k.batch, k.channels, k.s, k.groups, relu, 1e-10, node_gn_fwd_f64,
                          node_gn_bwd_f64, node_gn_bwd_params_f64);
        }
    std::printf(failures ? "FAILED: %d mismatches\n" : "all matched\n", failures);
    return failures ? 1 : 0;
}
