// Checks the concatenation kernel of crates/node-solvers/src/fused/fused.cu on a CPU (see
// cuda_on_cpu.h): parts of any lengths, empty ones among them, end to end, equal to the plain
// concatenation, f32 and f64, 1 to 16 parts per launch, with the grid `fused/cuda.rs` launches
// (⌈n/256⌉ blocks) and with fewer blocks than elements need (the grid-stride loop, where a
// thread crosses parts), and a second launch writing after the first, as the Rust side does
// past 16 parts. Run by scripts/check-cuda-kernels.sh.
#include "cuda_on_cpu.h"
#include "../../crates/node-solvers/src/fused/fused.cu"

#include <cstdio>
#include <random>

static int failures = 0;

template <typename T>
static void check(const std::vector<size_t> &lens, unsigned grid_cap,
                  void (*kernel)(const NodeConcatParts, T *, unsigned long long)) {
    std::mt19937 rng(unsigned(lens.size() * 1000 + grid_cap));
    std::normal_distribution<double> normal(0.0, 3.0);
    std::vector<std::vector<T>> xs;
    std::vector<T> want;
    for (size_t len : lens) {
        std::vector<T> x(len);
        for (auto &v : x) v = T(normal(rng));
        want.insert(want.end(), x.begin(), x.end());
        xs.push_back(std::move(x));
    }
    std::vector<T> out(want.size(), T(12345));
    // Launches of up to 16 non-empty parts each, as fused/cuda.rs splits them.
    size_t at = 0, k = 0;
    while (k < xs.size()) {
        NodeConcatParts p{};
        unsigned long long len = 0;
        int slot = 0;
        for (; k < xs.size() && slot < NODE_CONCAT_MAX_PARTS; ++k) {
            if (xs[k].empty()) continue;  // the Rust side gives empty parts no slot
            len += xs[k].size();
            p.x[slot] = xs[k].data();
            p.end[slot] = len;
            ++slot;
        }
        if (len == 0) break;
        unsigned grid = unsigned((len + 255) / 256);
        if (grid_cap && grid > grid_cap) grid = grid_cap;
        T *dst = out.data() + at;
        emu::launch(grid, 256, [&] { kernel(p, dst, len); });
        at += len;
    }
    size_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(out[i] == want[i]) && bad++ < 3)
            std::printf("  [%zu]: %.17g, want %.17g\n", i, double(out[i]), double(want[i]));
    failures += bad != 0 || at != want.size();
    std::printf("%s parts=%zu n=%zu grid cap=%u: %s\n", sizeof(T) == 4 ? "f32" : "f64",
                lens.size(), want.size(), grid_cap, bad || at != want.size() ? "FAILED" : "ok");
}

int main() {
    // The adjoint's shape: y and a, then parameters from 64 to 36864 elements.
    const std::vector<size_t> adjoint = {4608, 4608, 64, 64, 36864, 64, 64, 64, 36864, 64, 64, 64};
    const std::vector<std::vector<size_t>> cases = {
        {1},
        {0, 5, 0, 3, 0},
        {300, 1, 257, 0, 1000},
        adjoint,
        // 20 non-empty parts and 3 empty ones: a second launch after the first 16.
        {7, 0, 513, 2, 9, 64, 1, 1, 300, 0, 33, 4, 5, 6, 7, 8, 9, 10, 0, 11, 12, 13, 700},
    };
    for (const auto &lens : cases)
        for (unsigned cap : {0u, 1u, 3u}) {
            check<float>(lens, cap, node_concat_f32);
            check<double>(lens, cap, node_concat_f64);
        }
    std::printf(failures ? "FAILED: %d cases\n" : "all matched\n", failures);
    return failures ? 1 : 0;
}
