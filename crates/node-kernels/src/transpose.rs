//! Out-of-place matrix transposition, the NCHW ↔ channels-last rearrangement around every
//! convolution.
//!
//! A scalar element-by-element transposition was 14% of a ResNet training step on a 2-core
//! Zen 3 (perf, 128×64×26×26 planes). For 4-byte elements (f32) on x86-64 with AVX, 8×8 blocks
//! are moved as eight 256-bit rows and transposed in registers (unpack, shuffle, and lane
//! permutes: pure bit moves), the ragged edges element by element.

use std::mem::MaybeUninit;

/// `dst[j·dst_rs + i] = src[i·src_rs + j]` for `i < rows`, `j < cols`.
///
/// # Panics
/// If either view is out of its slice's bounds.
pub(crate) fn transpose<T: Copy>(
    src: &[T],
    src_rs: usize,
    rows: usize,
    cols: usize,
    dst: &mut [MaybeUninit<T>],
    dst_rs: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    // Checked once here, so the loops below need no bounds checks.
    assert!((rows - 1) * src_rs + cols <= src.len());
    assert!((cols - 1) * dst_rs + rows <= dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<T>() == 4 && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present; the views were checked in bounds above; `T` is `Copy` and 4
        // bytes wide, so moving its bits as `f32` lanes (no arithmetic) copies it.
        unsafe {
            avx::transpose32(
                src.as_ptr().cast(),
                src_rs,
                rows,
                cols,
                dst.as_mut_ptr().cast(),
                dst_rs,
            )
        };
        return;
    }
    // SAFETY: every index is `i·src_rs + j` or `j·dst_rs + i` with `i < rows`, `j < cols`,
    // in bounds by the asserts above.
    unsafe {
        scalar(
            src.as_ptr(),
            src_rs,
            0..rows,
            0..cols,
            dst.as_mut_ptr(),
            dst_rs,
        )
    };
}

/// Element by element over `rows × cols`, in cache-sized tiles.
///
/// # Safety
/// Every `i·src_rs + j` must be readable at `src` and every `j·dst_rs + i` writable at `dst`,
/// for `i` in `rows`, `j` in `cols`.
unsafe fn scalar<T: Copy>(
    src: *const T,
    src_rs: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    dst: *mut MaybeUninit<T>,
    dst_rs: usize,
) {
    const TILE: usize = 16;
    for i0 in rows.clone().step_by(TILE) {
        for j0 in cols.clone().step_by(TILE) {
            for j in j0..(j0 + TILE).min(cols.end) {
                for i in i0..(i0 + TILE).min(rows.end) {
                    // SAFETY: by the caller's contract.
                    unsafe { (*dst.add(j * dst_rs + i)).write(*src.add(i * src_rs + j)) };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// [`super::transpose`] of 4-byte elements: 8×8 blocks in registers, the edges scalar.
    ///
    /// # Safety
    /// AVX must be available, and the views in bounds as [`super::scalar`] requires.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose32(
        src: *const f32,
        src_rs: usize,
        rows: usize,
        cols: usize,
        dst: *mut f32,
        dst_rs: usize,
    ) {
        let (rows8, cols8) = (rows / 8 * 8, cols / 8 * 8);
        // Blocks of 8 source rows, walked along the row in 8×8 blocks; a source row is
        // contiguous, and each block writes 8 destination rows of 32 bytes.
        for i0 in (0..rows8).step_by(8) {
            for j0 in (0..cols8).step_by(8) {
                // SAFETY: i0 + 8 ≤ rows and j0 + 8 ≤ cols: in bounds by the caller's contract.
                unsafe {
                    block8(
                        src.add(i0 * src_rs + j0),
                        src_rs,
                        dst.add(j0 * dst_rs + i0),
                        dst_rs,
                    )
                };
            }
        }
        let dst = dst.cast::<MaybeUninit<f32>>();
        // SAFETY: sub-ranges of `rows × cols`.
        unsafe {
            super::scalar(src, src_rs, 0..rows8, cols8..cols, dst, dst_rs);
            super::scalar(src, src_rs, rows8..rows, 0..cols, dst, dst_rs);
        }
    }

    /// One 8×8 block: `dst[j·dst_rs + i] = src[i·src_rs + j]`, `i, j < 8`.
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn block8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        // SAFETY: the caller guarantees 8 rows of 8 readable / writable elements.
        unsafe {
            let r = |i: usize| _mm256_loadu_ps(src.add(i * src_rs));
            let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
            // Interleave pairs of rows, then pairs of pairs: each 128-bit lane then holds a
            // 4×4 transposed quarter.
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            // Low lanes of rows 0–3 with low lanes of rows 4–7 (columns 0–3), then the high
            // lanes (columns 4–7).
            let w = |j: usize, v: __m256| _mm256_storeu_ps(dst.add(j * dst_rs), v);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape up to 19×19 (all the 8×8 block / edge combinations), with row strides
    /// longer than the rows, in f32 (the register path on x86) and f64 (scalar), against the
    /// definition; destination padding must stay untouched.
    #[test]
    fn transpose_matches_definition() {
        for rows in 1..20 {
            for cols in 1..20 {
                let (src_rs, dst_rs) = (cols + 3, rows + 2);
                let src: Vec<f32> = (0..rows * src_rs).map(|v| v as f32 + 0.5).collect();
                let mut dst = vec![MaybeUninit::new(-1.0f32); cols * dst_rs];
                transpose(&src, src_rs, rows, cols, &mut dst, dst_rs);
                let src64: Vec<f64> = src.iter().map(|&v| f64::from(v)).collect();
                let mut dst64 = vec![MaybeUninit::new(-1.0f64); cols * dst_rs];
                transpose(&src64, src_rs, rows, cols, &mut dst64, dst_rs);
                for j in 0..cols {
                    for i in 0..dst_rs {
                        // SAFETY: initialised above.
                        let (v, v64) = unsafe {
                            (
                                dst[j * dst_rs + i].assume_init(),
                                dst64[j * dst_rs + i].assume_init(),
                            )
                        };
                        let want = if i < rows { src[i * src_rs + j] } else { -1.0 };
                        assert_eq!(v, want, "{rows}x{cols} at ({i}, {j})");
                        assert_eq!(v64, f64::from(want), "f64 {rows}x{cols} at ({i}, {j})");
                    }
                }
            }
        }
    }
}
