// Checks crates/node-kernels/src/cuda/optim.cu on a CPU (see cuda_on_cpu.h): SGD's in-place
// updates must equal, bit for bit, the op-by-op arithmetic Candle's ops do (`affine` then
// `add`, each rounded): the momentum buffer's update and the parameter's descent, with and
// without weight decay, f32 and f64, with the grid `cuda/optim.rs` launches (⌈n/256⌉ blocks)
// and with fewer blocks than the elements need (the grid-stride loop). Compiled like NVRTC is
// told to (no contraction: -ffp-contract=off). Run by scripts/check-cuda-kernels.sh.
#include "cuda_on_cpu.h"
#include "../../crates/node-kernels/src/cuda/optim.cu"

#include <cstdio>
#include <random>

static int failures = 0;

template <typename T>
static void check(unsigned long long n, bool decay, unsigned grid,
                  void (*update)(unsigned long long, T, T, int, T *, const T *, const T *),
                  void (*descend)(unsigned long long, T, T, int, T *, const T *)) {
    std::mt19937 rng(unsigned(n * 10 + decay));
    std::normal_distribution<double> normal(0.0, 2.0);
    std::vector<T> b(n), g(n), p(n);
    for (auto *v : {&b, &g, &p})
        for (auto &x : *v) x = T(normal(rng));
    const T mu = T(0.9), wd = decay ? T(5e-4) : T(0), lr = T(0.1);
    // Candle's ops: affine(x, m, 0) = x·m + 0, then add / sub.
    std::vector<T> b_want(n), p_want(n), p_plain(n);
    for (unsigned long long i = 0; i < n; ++i) {
        const T d = decay ? T(g[i] + T(p[i] * wd + T(0))) : g[i];
        b_want[i] = T(T(b[i] * mu + T(0)) + d);
        p_want[i] = T(p[i] - T(b_want[i] * lr + T(0)));
        p_plain[i] = T(p[i] - T(d * lr + T(0)));
    }
    std::vector<T> b1(b), p1(p), p2(p);
    emu::launch(grid, 256, [&] { update(n, mu, wd, decay, b1.data(), g.data(), p.data()); });
    emu::launch(grid, 256, [&] { descend(n, lr, T(0), 0, p1.data(), b1.data()); });
    emu::launch(grid, 256, [&] { descend(n, lr, wd, decay, p2.data(), g.data()); });
    size_t bad = 0;
    for (unsigned long long i = 0; i < n; ++i) {
        const bool ok = b1[i] == b_want[i] && p1[i] == p_want[i] && p2[i] == p_plain[i];
        if (!ok && bad++ < 3)
            std::printf("  [%llu]: buffer %.17g / %.17g, parameter %.17g / %.17g, plain %.17g / %.17g\n",
                        i, double(b1[i]), double(b_want[i]), double(p1[i]), double(p_want[i]),
                        double(p2[i]), double(p_plain[i]));
    }
    failures += bad != 0;
    std::printf("%s n=%llu decay=%d grid=%u: %s\n", sizeof(T) == 4 ? "f32" : "f64", n, decay,
                grid, bad ? "FAILED" : "ok");
}

int main() {
    struct Case { unsigned long long n; unsigned grid; };
    const Case cases[] = {{1, 1}, {576, 3}, {4097, 17}, {4097, 2}, {100000, 5}};
    for (const Case &k : cases)
        for (bool decay : {false, true}) {
            check<float>(k.n, decay, k.grid, node_sgd_update_f32, node_sgd_descend_f32);
            check<double>(k.n, decay, k.grid, node_sgd_update_f64, node_sgd_descend_f64);
        }
    std::printf(failures ? "FAILED: %d cases\n" : "all matched\n", failures);
    return failures ? 1 : 0;
}
