// A minimal CUDA emulator for checking kernels' logic on a CPU: every CUDA thread of a block
// is an OS thread; __syncthreads is a barrier over the block, __shfl_xor_sync exchanges values
// through a per-warp buffer between two barriers over the warp. Blocks run one after another
// (so `__shared__` can be a static). Enough for the kernels in crates/*/src/cuda/*.cu; not a
// timing model, and no check of memory-model subtleties beyond what the barriers order.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3_ { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3_ threadIdx, blockIdx;
inline dim3_ blockDim, gridDim;

namespace emu {
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<unsigned long long> lanes;  // one 8-byte slot per thread of the block

template <typename T>
T shfl_xor(T v, int offset) {
    const unsigned t = threadIdx.x, warp = t / 32, src = (t & ~31u) | ((t & 31u) ^ offset);
    std::memcpy(&lanes[t], &v, sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, &lanes[src], sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    return out;
}

// Runs `kernel` over a grid of `grid` blocks of `block` threads (block a multiple of 32).
inline void launch(unsigned grid, unsigned block, const std::function<void()> &kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    lanes.assign(block, 0);
    warp_barriers.clear();
    for (unsigned w = 0; w < block / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    block_barrier = std::make_unique<std::barrier<>>(block);
    for (unsigned b = 0; b < grid; ++b) {
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, b, t] {
                blockIdx.x = b;
                threadIdx.x = t;
                kernel();
            });
        for (auto &th : threads) th.join();
    }
}
}  // namespace emu

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __syncthreads() emu::block_barrier->arrive_and_wait()
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor(v, o)
using std::fma;
using std::sqrt;
