//! Strided matrix products on the `gemm` crate (the one Candle's CPU backend uses), threaded
//! only where threads pay.
//!
//! Candle hands every product to all Rayon threads. On the 2-core development machine the
//! `gemm` crate reaches ~110 GFLOP/s on one thread and ~210 on two for products of 8M
//! multiply-adds and more, but two threads are *slower* below ~4M (1024×50×50: 87 vs 74
//! GFLOP/s; 128³: 107 vs 69). A product with a long inner dimension and a small output (a
//! convolution's weight gradient, 64×585×4608) parallelizes badly inside `gemm` (119
//! GFLOP/s on two threads): it is split along `k` instead, one half per thread, and summed.

use candle_core::WithDType;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 22;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    pub fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "gemm: {what} view out of bounds");
        }
    }

    fn offset(&self, row: usize, col: usize) -> Self {
        Self {
            data: &self.data[row * self.rs + col * self.cs..],
            ..*self
        }
    }
}

/// `lhs[m×k] · rhs[k×n]`, row-major `m×n`.
pub(crate) fn matmul<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) -> Vec<T> {
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    let threads = rayon::current_num_threads();
    let work = m * n * k;
    if threads > 1 && work >= PARALLEL_MIN_WORK && k >= 4 * m.max(n) {
        // Split k: each half on its own thread, then summed.
        let k1 = k / 2;
        let (mut dst, other) = rayon::join(
            || overwrite(m, n, k1, lhs, rhs, false),
            || overwrite(m, n, k - k1, lhs.offset(0, k1), rhs.offset(k1, 0), false),
        );
        dst.iter_mut().zip(&other).for_each(|(d, o)| *d += *o);
        return dst;
    }
    overwrite(m, n, k, lhs, rhs, threads > 1 && work >= PARALLEL_MIN_WORK)
}

/// `lhs[m×k] · rhs[k×n]` on the calling thread only, row-major `m×n`: for callers that are
/// themselves parallel over blocks.
pub(crate) fn matmul_serial<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) -> Vec<T> {
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    overwrite(m, n, k, lhs, rhs, false)
}

/// `dst[m×n] += lhs[m×k] · rhs[k×n]` on the calling thread only (`dst` row-major, rows `n`
/// apart).
pub(crate) fn matmul_add_serial<T: WithDType>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) {
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    assert!(dst.len() >= m * n, "gemm: dst too small");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    raw(m, n, k, dst.as_mut_ptr(), n, lhs, rhs, true, false);
}

/// The product into a new buffer, written once by `gemm` (no zero-fill first).
fn overwrite<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    parallel: bool,
) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::zero(); m * n];
    }
    let mut dst = Vec::<T>::with_capacity(m * n);
    raw(m, n, k, dst.as_mut_ptr(), n, lhs, rhs, false, parallel);
    // SAFETY: with `read_dst = false` gemm writes every element of the m×n destination
    // (m, n, k > 0), and the views were checked in bounds by `matmul`.
    unsafe { dst.set_len(m * n) };
    dst
}

#[allow(clippy::too_many_arguments)]
fn raw<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    parallel: bool,
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller owns `m·dst_rs` writable elements at `dst` that alias nothing (and
    // initialised, when `accumulate` reads them); the callers checked that every element the
    // input views address is inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}
