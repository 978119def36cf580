//! Strided matrix products on the `gemm` crate (the one Candle's CPU backend uses), threaded
//! only where threads pay, on Candle's CPU thread pool (see `pool`).
//!
//! Candle hands every product to all Rayon threads. On the 2-core development machine the
//! `gemm` crate reaches ~110 GFLOP/s on one thread and ~210 on two for products of 8M
//! multiply-adds and more, but two threads are *slower* below ~4M (1024×50×50: 87 vs 74
//! GFLOP/s; 128³: 107 vs 69). A product with a long inner dimension and a small output (a
//! convolution's weight gradient, 64×585×4608) parallelizes badly inside `gemm` (119
//! GFLOP/s on two threads): it is split along `k` instead, one half per thread, and summed.
//! Other large products are cut into one band of output rows (or columns) per thread, each
//! a one-thread `gemm`.

use candle_core::WithDType;

use crate::pool::{self, Shared};

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
    let threads = pool::threads();
    let work = m * n * k;
    if threads == 1 || work < PARALLEL_MIN_WORK {
        return overwrite(m, n, k, lhs, rhs);
    }
    if k >= 4 * m.max(n) {
        // Split k: each half on its own thread, then summed.
        let k1 = k / 2;
        let mut halves = pool::map(2, true, |h| match h {
            0 => overwrite(m, n, k1, lhs, rhs),
            _ => overwrite(m, n, k - k1, lhs.offset(0, k1), rhs.offset(k1, 0)),
        });
        let other = halves.pop().expect("two halves");
        let mut dst = halves.pop().expect("two halves");
        dst.iter_mut().zip(&other).for_each(|(d, o)| *d += *o);
        return dst;
    }
    // Split the longer side of the output into one part per thread.
    let mut dst = Vec::<T>::with_capacity(m * n);
    let (parts, side) = (threads, m.max(n));
    let step = side.div_ceil(parts);
    let base = Shared::new(dst.as_mut_ptr());
    pool::for_each(side.div_ceil(step), true, |p| {
        let (lo, len) = (p * step, step.min(side - p * step));
        // SAFETY: part `p` writes rows (or columns) `lo..lo + len` of the `m×n` destination
        // only, which no other part touches; the views were checked in bounds above.
        unsafe {
            if m >= n {
                raw(len, n, k, base.at(lo * n), n, lhs.offset(lo, 0), rhs, false);
            } else {
                raw(m, len, k, base.at(lo), n, lhs, rhs.offset(0, lo), false);
            }
        }
    });
    // SAFETY: the parts cover every row (or column) of the destination, each written in full
    // by `gemm` (`read_dst = false`, m, n, k > 0: `work` is not 0).
    unsafe { dst.set_len(m * n) };
    dst
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
    overwrite(m, n, k, lhs, rhs)
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
    // SAFETY: `dst` holds the `m·n` initialised elements read and written; views checked.
    unsafe { raw(m, n, k, dst.as_mut_ptr(), n, lhs, rhs, true) };
}

/// The product into a new buffer, written once by `gemm` (no zero-fill first).
fn overwrite<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::zero(); m * n];
    }
    let mut dst = Vec::<T>::with_capacity(m * n);
    // SAFETY: `dst` has room for the `m·n` elements written; the callers checked the views.
    unsafe { raw(m, n, k, dst.as_mut_ptr(), n, lhs, rhs, false) };
    // SAFETY: with `read_dst = false` gemm writes every element of the m×n destination
    // (m, n, k > 0), and the views were checked in bounds by `matmul`.
    unsafe { dst.set_len(m * n) };
    dst
}

/// `dst[m×n] (+)= lhs · rhs` by `gemm` on the calling thread (`dst` rows `dst_rs` apart).
///
/// # Safety
/// `dst` must address `m` rows of `n` writable elements, `dst_rs` apart, that alias nothing
/// else while this runs (and are initialised when `accumulate` reads them), and the views
/// must hold every element they address (`MatRef::check`).
#[allow(clippy::too_many_arguments)]
unsafe fn raw<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
) {
    // SAFETY: the caller's contract above.
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
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threaded paths (output rows split, columns split, inner dimension split and summed)
    /// give the exact product: small integers, so every sum is exact in f64.
    #[test]
    fn threaded_products_are_exact() {
        let value = |i: usize, salt: usize| ((i * 7 + salt * 13) % 7) as f64 - 3.0;
        // (m, n, k), each ≥ PARALLEL_MIN_WORK multiply-adds: rows, columns, then k split.
        for (m, n, k) in [(301, 41, 400), (41, 301, 400), (19, 23, 12_007)] {
            assert!(m * n * k >= PARALLEL_MIN_WORK);
            let a: Vec<f64> = (0..m * k).map(|i| value(i, 1)).collect();
            // The right-hand side column-major (`cs = k`), as the kernels' transposed views.
            let b: Vec<f64> = (0..k * n).map(|i| value(i, 2)).collect();
            let (lhs, rhs) = (MatRef::new(&a, k, 1), MatRef::new(&b, 1, k));
            let got = matmul(m, n, k, lhs, rhs);
            let serial = matmul_serial(m, n, k, lhs, rhs);
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum()
                })
                .collect();
            assert_eq!(got, want, "{m}x{n}x{k}");
            assert_eq!(serial, want, "{m}x{n}x{k} serial");
        }
    }
}
