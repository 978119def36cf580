//! Direct convolution for a small unfolded row (`c·kh·kw` ≤ [`MAX_K`]), such as a network's
//! first convolution on one-channel images (MNIST's 1 → 64, 3×3: 9 values per row).
//!
//! There the batched im2col product of the parent module is bound by memory, not arithmetic:
//! a 128×1×28×28 → 64 forward wrote a 22 MB `[pixels][co]` product and then transposed it
//! to NCHW (6.9 ms on a 2-core Zen 3, for 0.1 GFLOP), and its weight gradient transposed the
//! 22 MB output gradient first. Here each NCHW output row is summed over all the taps in
//! registers (shifted rows of a zero-padded copy of the input) and stored once, and the
//! weight gradient reads the output gradient once, in NCHW. The input gradient of such a
//! convolution (rarely needed: the images need none) stays with the parent's product.
//!
//! The generic loops below are the reference (f64, strides, CPUs without AVX2); f32 at
//! stride 1 runs the same loops written in AVX2 + FMA intrinsics (`mod avx`): the compiler
//! unrolled the generic ones into scalar code, 3.5× slower than the im2col product.

use std::mem::MaybeUninit;

use candle_core::WithDType;

use super::{assume_init, uninit, Geometry};
use crate::pool;

/// The largest unfolded row (`c·kh·kw`) that takes the direct kernels.
pub(super) const MAX_K: usize = 16;

/// Whether `g` takes the direct kernels (which know no time channel).
pub(super) fn suits(g: &Geometry) -> bool {
    g.k() <= MAX_K && g.p.time.is_none()
}

/// Output columns computed per pass (32 f32: four AVX2 registers).
const CHUNK: usize = 32;

/// The input images zero-padded so that every tap of every output column of every
/// [`CHUNK`] reads inside its row: no edge cases in the loops.
struct Padded<T> {
    data: Vec<T>,
    /// Padded plane sizes.
    hp: usize,
    wp: usize,
}

impl<T: WithDType> Padded<T> {
    fn new(x: &[T], g: &Geometry) -> Self {
        let p = g.p.padding;
        let hp = g.h + 2 * p;
        let last = g.ow.div_ceil(CHUNK) * CHUNK - 1;
        let wp = (g.w + 2 * p).max(last * g.p.stride + (g.kw - 1) * g.p.dilation + 1);
        let mut data = vec![T::zero(); g.b * g.c * hp * wp];
        let plane = g.h * g.w;
        pool::chunks_mut(&mut data, g.c * hp * wp, true, |n, planes| {
            for (c, dst) in planes.chunks_mut(hp * wp).enumerate() {
                let src = &x[(n * g.c + c) * plane..][..plane];
                for (y, row) in src.chunks(g.w).enumerate() {
                    dst[(y + p) * wp + p..][..g.w].copy_from_slice(row);
                }
            }
        });
        Self { data, hp, wp }
    }

    /// Row `y` (padded coordinates) of plane `c` of image `n`.
    fn row(&self, g: &Geometry, n: usize, c: usize, y: usize) -> &[T] {
        &self.data[((n * g.c + c) * self.hp + y) * self.wp..][..self.wp]
    }
}

/// Reinterprets a `Vec<f32>` as `Vec<T>` where `T` is f32.
///
/// # Safety
/// `T` must be f32.
#[cfg(target_arch = "x86_64")]
unsafe fn retype<T>(v: Vec<f32>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the same type, by the caller's contract.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// `v` as f32 values.
///
/// # Safety
/// `T` must be f32.
#[cfg(target_arch = "x86_64")]
unsafe fn f32s<T>(v: &[T]) -> &[f32] {
    // SAFETY: the same type, by the caller's contract.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) }
}

/// Whether the AVX2 kernels take `g` with elements `T`.
#[cfg(target_arch = "x86_64")]
fn use_avx<T: WithDType>(g: &Geometry) -> bool {
    T::DTYPE == candle_core::DType::F32
        && g.p.stride == 1
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The forward pass, NCHW in and out: `y[n][co] = bias[co] + Σ_{c,i,j} w[co][c][i][j] ·
/// (x[n][c] shifted by tap (i, j))`, in parallel over images; each output row is summed over
/// every tap in registers, [`CHUNK`] columns at a time, and stored once.
pub(super) fn forward<T: WithDType>(
    x: &[T],
    kernel: &[T],
    bias: Option<&[T]>,
    g: &Geometry,
) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    if use_avx::<T>(g) {
        // SAFETY: `use_avx` checked that `T` is f32, and found AVX2 and FMA.
        unsafe {
            let (x, kernel, bias) = (f32s(x), f32s(kernel), bias.map(|b| f32s(b)));
            let y = per_image(x, g, |xp, n, yn| {
                avx::forward_image(xp, kernel, bias, g, n, yn)
            });
            return retype(y);
        }
    }
    per_image(x, g, |xp, n, yn| forward_image(xp, kernel, bias, g, n, yn))
}

/// The output, `f(padded input, n, output planes of image n)` in parallel over images.
fn per_image<T: WithDType>(
    x: &[T],
    g: &Geometry,
    f: impl Fn(&Padded<T>, usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let xp = Padded::new(x, g);
    let mut y = uninit(g.b * g.co * g.pixels());
    pool::chunks_mut(&mut y, g.co * g.pixels(), true, |n, yn| f(&xp, n, yn));
    // SAFETY: `f` writes every image's planes in full.
    unsafe { assume_init(y) }
}

/// Image `n` of [`forward`]: its `co` output planes into `yn`, written in full.
fn forward_image<T: WithDType>(
    xp: &Padded<T>,
    kernel: &[T],
    bias: Option<&[T]>,
    g: &Geometry,
    n: usize,
    yn: &mut [MaybeUninit<T>],
) {
    let (s, d) = (g.p.stride, g.p.dilation);
    for (co, plane) in yn.chunks_mut(g.pixels()).enumerate() {
        let w = &kernel[co * g.k()..][..g.k()];
        let b = bias.map_or(T::zero(), |b| b[co]);
        for (oy, out_row) in plane.chunks_mut(g.ow).enumerate() {
            for ox0 in (0..g.ow).step_by(CHUNK) {
                let mut acc = [b; CHUNK];
                for c in 0..g.c {
                    for i in 0..g.kh {
                        let row = xp.row(g, n, c, oy * s + i * d);
                        for j in 0..g.kw {
                            let w = w[(c * g.kh + i) * g.kw + j];
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a += w * row[(ox0 + l) * s + j * d];
                            }
                        }
                    }
                }
                for (o, a) in out_row[ox0..].iter_mut().zip(acc) {
                    o.write(a);
                }
            }
        }
    }
}

/// The weight gradient, `dw[co][c][i][j] = Σ_n Σ_{oy,ox} dy[n][co][oy][ox] · x[n][c][iy][ix]`,
/// in parallel over output channels, each channel's sums over the batch in order (in
/// partial sums across a row's columns), so the result does not depend on the thread count.
pub(super) fn backward_kernel<T: WithDType>(x: &[T], dy: &[T], g: &Geometry) -> Vec<T> {
    let k = g.k();
    if g.b == 0 {
        return vec![T::zero(); g.co * k];
    }
    #[cfg(target_arch = "x86_64")]
    if use_avx::<T>(g) {
        // SAFETY: `use_avx` checked that `T` is f32, and found AVX2 and FMA.
        unsafe {
            let (xp, dy) = (Padded::new(f32s(x), g), f32s(dy));
            let mut dw32 = vec![0f32; g.co * k];
            pool::chunks_mut(&mut dw32, k, true, |co, dw| {
                avx::kernel_grad_channel(&xp, dy, g, co, dw)
            });
            return retype(dw32);
        }
    }
    let xp = Padded::new(x, g);
    let mut dw = vec![T::zero(); g.co * k];
    pool::chunks_mut(&mut dw, k, true, |co, dw| {
        kernel_grad_channel(&xp, dy, g, co, dw)
    });
    dw
}

/// Output channel `co` of [`backward_kernel`]: its `c·kh·kw` weights' gradients into `dw`.
fn kernel_grad_channel<T: WithDType>(
    xp: &Padded<T>,
    dy: &[T],
    g: &Geometry,
    co: usize,
    dw: &mut [T],
) {
    let (s, d, plane_out) = (g.p.stride, g.p.dilation, g.pixels());
    let mut acc = vec![[T::zero(); CHUNK]; g.k()];
    for n in 0..g.b {
        let plane = &dy[(n * g.co + co) * plane_out..][..plane_out];
        for (oy, dy_row) in plane.chunks(g.ow).enumerate() {
            for ox0 in (0..g.ow).step_by(CHUNK) {
                // The row's gradient, zero past its end.
                let mut dyc = [T::zero(); CHUNK];
                dyc.iter_mut()
                    .zip(&dy_row[ox0..])
                    .for_each(|(a, b)| *a = *b);
                for c in 0..g.c {
                    for i in 0..g.kh {
                        let row = xp.row(g, n, c, oy * s + i * d);
                        for j in 0..g.kw {
                            let acc = &mut acc[(c * g.kh + i) * g.kw + j];
                            for (l, a) in acc.iter_mut().enumerate() {
                                *a += dyc[l] * row[(ox0 + l) * s + j * d];
                            }
                        }
                    }
                }
            }
        }
    }
    for (w, lanes) in dw.iter_mut().zip(&acc) {
        *w = lanes.iter().fold(T::zero(), |a, b| a + *b);
    }
}

/// [`forward_image`] and [`kernel_grad_channel`] for f32 at stride 1, in AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{Geometry, Padded, CHUNK};

    /// [`super::forward_image`], stride 1.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; the stride must be 1.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_image(
        xp: &Padded<f32>,
        kernel: &[f32],
        bias: Option<&[f32]>,
        g: &Geometry,
        n: usize,
        yn: &mut [MaybeUninit<f32>],
    ) {
        let d = g.p.dilation;
        let k = g.k();
        for (co, plane) in yn.chunks_mut(g.pixels()).enumerate() {
            let w = &kernel[co * k..][..k];
            let b = _mm256_set1_ps(bias.map_or(0.0, |b| b[co]));
            for (oy, out_row) in plane.chunks_mut(g.ow).enumerate() {
                for ox0 in (0..g.ow).step_by(CHUNK) {
                    let mut acc = [b; CHUNK / 8];
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            let row = xp.row(g, n, c, oy + i * d);
                            for j in 0..g.kw {
                                let w = _mm256_set1_ps(w[(c * g.kh + i) * g.kw + j]);
                                // In the padded row by construction of `Padded`.
                                let xs = &row[ox0 + j * d..][..CHUNK];
                                for (v, a) in acc.iter_mut().enumerate() {
                                    // SAFETY: 8 values from `xs[8v..]`, in bounds.
                                    let x = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * v)) };
                                    *a = _mm256_fmadd_ps(w, x, *a);
                                }
                            }
                        }
                    }
                    let mut out = [0f32; CHUNK];
                    for (v, a) in acc.iter().enumerate() {
                        // SAFETY: 8 values into `out[8v..]`, in bounds.
                        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *a) };
                    }
                    for (o, a) in out_row[ox0..].iter_mut().zip(out) {
                        o.write(a);
                    }
                }
            }
        }
    }

    /// [`super::kernel_grad_channel`], stride 1.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; the stride must be 1.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_grad_channel(
        xp: &Padded<f32>,
        dy: &[f32],
        g: &Geometry,
        co: usize,
        dw: &mut [f32],
    ) {
        let (d, plane_out) = (g.p.dilation, g.pixels());
        // One vector of partial sums per weight.
        let mut acc = vec![_mm256_setzero_ps(); g.k()];
        for n in 0..g.b {
            let plane = &dy[(n * g.co + co) * plane_out..][..plane_out];
            for (oy, dy_row) in plane.chunks(g.ow).enumerate() {
                for ox0 in (0..g.ow).step_by(CHUNK) {
                    // The row's gradient, zero past its end.
                    let mut dyc = [0f32; CHUNK];
                    dyc.iter_mut()
                        .zip(&dy_row[ox0..])
                        .for_each(|(a, b)| *a = *b);
                    // SAFETY: 8 values from `dyc[8v..]`, in bounds.
                    let dyv: [__m256; CHUNK / 8] = std::array::from_fn(|v| unsafe {
                        _mm256_loadu_ps(dyc.as_ptr().add(8 * v))
                    });
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            let row = xp.row(g, n, c, oy + i * d);
                            for j in 0..g.kw {
                                let xs = &row[ox0 + j * d..][..CHUNK];
                                let a = &mut acc[(c * g.kh + i) * g.kw + j];
                                for (v, dyv) in dyv.iter().enumerate() {
                                    // SAFETY: 8 values from `xs[8v..]`, in bounds.
                                    let x = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * v)) };
                                    *a = _mm256_fmadd_ps(*dyv, x, *a);
                                }
                            }
                        }
                    }
                }
            }
        }
        for (w, a) in dw.iter_mut().zip(&acc) {
            let mut lanes = [0f32; 8];
            // SAFETY: 8 values into `lanes`.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            *w = lanes.iter().sum();
        }
    }
}
