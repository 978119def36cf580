// Checks crates/node-solvers/src/fused/fused.cu on a CPU (see cuda_on_cpu.h): `base + Σ w_j x_j`
// must equal, bit for bit, the sum taken term by term in the terms' order (what Candle's chain
// of `affine` and `add` computes), with and without a base, 1 to 16 terms, f32 and f64, with
// the grid `fused/cuda.rs` launches and with fewer blocks than elements need (the grid-stride
// loop), and a second launch going on in place from the first one's partial sum, as the Rust
// side does past 16 terms. Run by scripts/check-cuda-kernels.sh.
#include "cuda_on_cpu.h"
#include "../../crates/node-solvers/src/fused/fused.cu"

#include <cstdio>
#include <random>

static int failures = 0;

template <typename T, typename Terms>
static void check(size_t n, int n_terms, bool has_base, unsigned grid,
                  void (*kernel)(const Terms, int, T *, unsigned long long)) {
    std::mt19937 rng(unsigned(n * 100 + n_terms * 2 + has_base));
    std::normal_distribution<double> normal(0.0, 3.0);
    // 2·n_terms terms, so that a second launch continues from the first one's sums.
    const int total = 2 * n_terms;
    std::vector<std::vector<T>> xs(total, std::vector<T>(n));
    std::vector<T> base(n), ws(total), out(n, T(12345));
    for (auto &x : xs)
        for (auto &v : x) v = T(normal(rng));
    for (auto &v : base) v = T(normal(rng));
    for (auto &w : ws) w = T(normal(rng));
    for (int launch = 0; launch < 2; ++launch) {
        Terms t{};
        t.base = launch == 0 ? (has_base ? base.data() : nullptr) : out.data();
        for (int j = 0; j < n_terms; ++j) {
            t.x[j] = xs[launch * n_terms + j].data();
            t.w[j] = ws[launch * n_terms + j];
        }
        emu::launch(grid, 256, [&] { kernel(t, n_terms, out.data(), n); });
    }
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        T acc = xs[0][i] * ws[0];
        if (has_base) acc = base[i] + acc;
        for (int j = 1; j < total; ++j) acc = acc + xs[j][i] * ws[j];
        if (!(acc == out[i]) && bad++ < 3)
            std::printf("  [%zu]: got %.17g, want %.17g\n", i, double(out[i]), double(acc));
    }
    failures += bad != 0;
    std::printf("%s n=%zu terms=2x%d base=%d grid=%u: %s\n", sizeof(T) == 4 ? "f32" : "f64", n,
                n_terms, has_base, grid, bad ? "FAILED" : "ok");
}

int main() {
    // (elements, terms per launch, blocks): the grid of `fused/cuda.rs` (⌈n/256⌉), and fewer.
    struct Case { size_t n; int terms; unsigned grid; };
    const Case cases[] = {{1, 1, 1}, {300, 5, 2}, {1000, 16, 4}, {1000, 7, 1}, {2049, 3, 3}};
    for (const Case &k : cases)
        for (bool base : {true, false}) {
            check<float>(k.n, k.terms, base, k.grid, node_lincomb_f32);
            check<double>(k.n, k.terms, base, k.grid, node_lincomb_f64);
        }
    std::printf(failures ? "FAILED: %d cases\n" : "all matched\n", failures);
    return failures ? 1 : 0;
}
