//! 2-D convolution whose forward pass and both backward passes are matrix products over
//! batch × space.
//!
//! Candle's CPU `conv2d` runs one small product per image (and its backward goes through
//! `conv_transpose2d` and a second convolution). Here the batch is cut into blocks of whole
//! images, and each block is unfolded from a channels-last copy (im2col,
//! `cols[b·oh·ow][kh·kw·c]`: every tap a copy of `c` contiguous values), and
//! - forward: `y[b·p][co] = cols · Wᵀ`,
//! - input gradient: `dcols = dy · W`, folded back (col2im, a scatter-add),
//! - weight gradient: `dWᵀ = Σ colsᵀ · dy` over the blocks (the unfold is recomputed, not
//!   kept).
//!
//! A block holds as many images as fit its unfolded input in 512 KB (6 of the ODE-Net block's
//! 6×6 images: a 216×64×585 product; one image of the 26×26 downsampling conv: 169×64×1024),
//! so that the unfold is written and read by the product while in cache. Blocks run in
//! parallel, each product on its own thread. Against one product over the whole batch this
//! was 1.1–1.5× faster on a 2-core Zen 3 (fwd+bwd, 128×64×26×26 → 64, 4×4 stride 2:
//! 135–166 → 86–115 ms; the timings on that machine vary by ±30% from run to run).
//!
//! A convolution with at most 16 values per unfolded row (a first layer on one-channel
//! images) is bound by memory that way, and runs the direct kernels of `direct` instead (its
//! forward pass and weight gradient; the input gradient stays a product).
//!
//! These orientations are the fast ones for the `gemm` crate on the ODE-Net block's shapes
//! (measured on a 2-core Sapphire Rapids, AVX-512: forward ~295 GFLOP/s against ~165 for
//! `W · cols` with pixel-major columns; weight gradient ~138 per thread against ~77).

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use std::mem::MaybeUninit;

use crate::gemm::{matmul_add_serial, matmul_serial, MatRef};
use crate::pool;
use crate::transpose::transpose;
use crate::util::{with_slices2, with_slices3};

mod direct;
// CUDA's path, run on CPU storage by its tests.
#[cfg(any(test, feature = "cuda"))]
pub(crate) mod unfolded;

/// 2-D convolution, differentiable, with Candle's `Tensor::conv2d` arguments and semantics
/// (cross-correlation, no bias; add one with `broadcast_add`).
///
/// For f32 and f64 with `groups == 1`, this runs the batched im2col kernels of this module on
/// the CPU and, with the `cuda` feature, one unfolding and one cuBLAS product over the batch
/// per pass on CUDA (`unfolded`: its input gradient is a product where Candle's is a direct
/// `conv_transpose2d` kernel; `NODE_CUDA_KERNELS_OFF=conv` turns it off); otherwise it calls
/// Candle's `conv2d`, so it can be used unconditionally.
///
/// # Shapes
/// `x: [B, C, H, W]`, `kernel: [C_out, C, kh, kw]` → `[B, C_out, H', W']` with
/// `H' = (H + 2·padding − dilation·(kh − 1) − 1) / stride + 1` (likewise `W'`).
///
/// # Errors
/// Mismatched ranks, channels or dtypes, a zero stride or dilation, and a kernel larger than
/// the padded input.
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    match own_params(&[x, kernel], padding, stride, dilation, groups, None)? {
        Some(params) => x.apply_op2(kernel, Conv2d(params)),
        None => x.conv2d(kernel, padding, stride, dilation, groups),
    }
}

/// [`conv2d`] plus a per-output-channel `bias` (`[C_out]`), fused into the same kernels on the
/// CPU and on CUDA: the bias is added while the product is rearranged to `[B, C_out, H', W']`,
/// and its gradient is a sum over the output gradient's batch and space.
///
/// # Errors
/// Those of [`conv2d`], and a bias that is not `[C_out]` of the input's dtype.
pub fn conv2d_bias(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    check_bias(kernel, bias)?;
    match own_params(&[x, kernel, bias], padding, stride, dilation, groups, None)? {
        Some(params) => x.apply_op3(kernel, bias, Conv2dBias(params)),
        None => add_bias(x.conv2d(kernel, padding, stride, dilation, groups)?, bias),
    }
}

/// The convolution of `x` with a constant channel of value `t` put in front of its channels,
/// `conv2d(cat([t, x], 1), kernel) (+ bias)`, without building the concatenation: the time
/// channel is written while the input is unfolded, and its gradient is not computed. This is
/// torchdiffeq's `ConcatConv2d`, the layer through which an ODE-Net's vector field depends on
/// `t`.
///
/// The kernels of [`conv2d`] and [`conv2d_bias`] run it where theirs apply (f32 and f64 on
/// the CPU and CUDA); elsewhere it builds the concatenation and calls Candle's `conv2d`.
/// `t` gets no gradient: it is a number, not a tensor.
///
/// # Shapes
/// `x: [B, C, H, W]`, `kernel: [C_out, C + 1, kh, kw]` (input channel 0 the time's),
/// `bias: [C_out]` → `[B, C_out, H', W']` as [`conv2d`]'s.
///
/// # Errors
/// Those of [`conv2d`] and [`conv2d_bias`]; a kernel without the time channel.
pub fn conv2d_time(
    x: &Tensor,
    t: f64,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    if let Some(bias) = bias {
        check_bias(kernel, bias)?;
    }
    let mut tensors = vec![x, kernel];
    tensors.extend(bias);
    match (
        own_params(&tensors, padding, stride, dilation, 1, Some(t))?,
        bias,
    ) {
        (Some(params), None) => x.apply_op2(kernel, Conv2d(params)),
        (Some(params), Some(bias)) => x.apply_op3(kernel, bias, Conv2dBias(params)),
        (None, _) => {
            let (b, _, h, w) = x.dims4()?;
            let time = Tensor::full(t, (b, 1, h, w), x.device())?.to_dtype(x.dtype())?;
            let y = Tensor::cat(&[&time, x], 1)?.conv2d(kernel, padding, stride, dilation, 1)?;
            match bias {
                Some(bias) => add_bias(y, bias),
                None => Ok(y),
            }
        }
    }
}

/// A bias of `[C_out]` and the kernel's dtype, or an error.
fn check_bias(kernel: &Tensor, bias: &Tensor) -> Result<()> {
    let co = kernel.dims().first().copied().unwrap_or(0);
    if bias.dims() != [co] || bias.dtype() != kernel.dtype() {
        candle_core::bail!(
            "conv2d: bias is {:?} {:?}, expected [{co}] {:?}",
            bias.dims(),
            bias.dtype(),
            kernel.dtype()
        );
    }
    Ok(())
}

/// `y + bias` over the channels of `[B, C_out, H', W']`.
fn add_bias(y: Tensor, bias: &Tensor) -> Result<Tensor> {
    y.broadcast_add(&bias.reshape((1, bias.elem_count(), 1, 1))?)
}

/// The kernel parameters when this module's kernels apply to `tensors` (`[x, kernel, ..]`: all
/// on the CPU, or all on CUDA with the `cuda` feature; f32 or f64; `groups == 1`), after
/// validating shapes and dtypes so that no kernel runs on bad input; `None` where Candle's op
/// is to be used.
fn own_params(
    tensors: &[&Tensor],
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
    time: Option<f64>,
) -> Result<Option<Params>> {
    let (x, kernel) = (tensors[0], tensors[1]);
    let params = Params {
        padding,
        stride,
        dilation,
        time,
    };
    // The sizes are checked for every dtype and device, also where Candle's convolution runs
    // (it panics on a zero stride or a kernel larger than the padded input), group by group.
    if groups == 0 || x.dims().get(1).is_some_and(|&c| c % groups != 0) {
        candle_core::bail!("conv2d: {groups} groups for input {:?}", x.dims());
    }
    let per_group: Vec<usize> = x
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 1 { d / groups } else { d })
        .collect();
    Geometry::new(&per_group, kernel.dims(), params)?;
    let dev = x.device();
    let fast = (dev.is_cpu()
        || (cfg!(feature = "cuda") && dev.is_cuda() && crate::util::own_cuda_kernel("conv")))
        && tensors.iter().all(|t| t.device().same_device(dev))
        && groups == 1
        && matches!(x.dtype(), DType::F32 | DType::F64);
    if !fast {
        return Ok(None);
    }
    if x.dtype() != kernel.dtype() {
        candle_core::bail!(
            "conv2d: input is {:?} but kernel is {:?}",
            x.dtype(),
            kernel.dtype()
        );
    }
    Ok(Some(params))
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) padding: usize,
    pub(crate) stride: usize,
    pub(crate) dilation: usize,
    /// The value of a constant channel put in front of the input's ([`conv2d_time`]), if any:
    /// the kernel then has one channel more than the input.
    pub(crate) time: Option<f64>,
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) b: usize,
    /// The kernel's input channels: the input's, and the time channel when there is one.
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) co: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) p: Params,
}

impl Geometry {
    fn new(x: &[usize], k: &[usize], p: Params) -> Result<Self> {
        let (&[b, c, h, w], &[co, ck, kh, kw]) = (x, k) else {
            candle_core::bail!("conv2d: input {x:?} and kernel {k:?} must both have rank 4");
        };
        let lead = usize::from(p.time.is_some());
        if c + lead != ck {
            let time = if lead == 1 {
                " and the time channel"
            } else {
                ""
            };
            candle_core::bail!(
                "conv2d: input has {c} channels{time} but kernel {k:?} expects {ck}"
            );
        }
        if c == 0 || co == 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "conv2d: input {x:?} and kernel {k:?} must have no empty axis but the batch"
            );
        }
        if p.stride == 0 || p.dilation == 0 {
            candle_core::bail!("conv2d: stride and dilation must be positive");
        }
        let out = |size: usize, kernel: usize| -> Result<usize> {
            let span = p.dilation * (kernel.max(1) - 1) + 1;
            if kernel == 0 || size + 2 * p.padding < span {
                candle_core::bail!(
                    "conv2d: kernel {k:?} (dilation {}) does not fit input {x:?} with padding {}",
                    p.dilation,
                    p.padding
                );
            }
            Ok((size + 2 * p.padding - span) / p.stride + 1)
        };
        Ok(Self {
            b,
            c: ck,
            h,
            w,
            co,
            kh,
            kw,
            oh: out(h, kh)?,
            ow: out(w, kw)?,
            p,
        })
    }

    /// Rows of the unfolded input: `c·kh·kw`.
    pub(crate) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The input's channels: the kernel's, less the time channel when there is one.
    pub(crate) fn xc(&self) -> usize {
        self.c - usize::from(self.p.time.is_some())
    }

    /// Values per input image.
    fn x_image(&self) -> usize {
        self.xc() * self.h * self.w
    }

    /// `self` if `l` has the output's shape, else an error naming `op`.
    fn check_output(self, l: &Layout, op: &str) -> Result<Self> {
        if l.dims() != [self.b, self.co, self.oh, self.ow] {
            candle_core::bail!("{op}: gradient shape {:?}", l.dims());
        }
        Ok(self)
    }

    /// Output pixels per image.
    pub(crate) fn pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// Input coordinate hit by output coordinate `o` at kernel tap `t`, if inside the image.
    #[inline]
    fn source(&self, o: usize, t: usize, size: usize) -> Option<usize> {
        (o * self.p.stride + t * self.p.dilation)
            .checked_sub(self.p.padding)
            .filter(|&i| i < size)
    }
}

/// `[N][A][B]` → `[N][B][A]` (NCHW ↔ NHWC with `A, B` = `C, H·W`), parallel over `N` or on
/// the calling thread.
fn swap_inner<T: WithDType>(v: &[T], a: usize, b: usize, parallel: bool) -> Vec<T> {
    let mut out = uninit(v.len());
    swap_inner_into(v, a, b, &mut out, parallel);
    // SAFETY: `swap_inner_into` wrote all `v.len()` elements.
    unsafe { assume_init(out) }
}

/// [`swap_inner`] into `out` (`v.len()` elements, every one written), on the calling thread
/// unless `parallel`.
fn swap_inner_into<T: WithDType>(
    v: &[T],
    a: usize,
    b: usize,
    out: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    assert_eq!(v.len(), out.len(), "swap_inner: output length");
    assert_eq!(v.len() % (a * b).max(1), 0, "swap_inner: ragged input");
    assert!(a * b > 0 || v.is_empty(), "swap_inner: ragged input");
    if v.is_empty() {
        return;
    }
    pool::chunks_mut(out, a * b, parallel, |i, o| {
        transpose(&v[i * a * b..][..a * b], b, a, b, o, a)
    });
}

/// An uninitialised buffer of `len` elements, to be written in full by the caller.
fn uninit<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every element of `v` must have been written.
unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// The batch cut into blocks of whole images, for the products to run block by block: a
/// block's unfolded input (`pixels·k` values per image) is sized to stay in the cache while
/// its product reads it (512 KB, one image at least: the L2 of a Zen 3 core, a quarter of a
/// Sapphire Rapids core's). There are as many blocks per thread for every thread, and the
/// images are shared out evenly (`b / count` or one more each), so that the threads finish
/// together (the ResNet's 6×6 convs: 22 blocks of 5 or 6 images on 2 threads, where blocks of
/// 6 and a last one of 2 gave one thread 66 images and the other 62).
#[derive(Clone, Copy, Debug)]
struct Blocks {
    images: usize,
    count: usize,
}

impl Blocks {
    fn new<T>(g: &Geometry) -> Self {
        const BLOCK_BYTES: usize = 512 << 10;
        let per_image = (g.pixels() * g.k() * std::mem::size_of::<T>()).max(1);
        let max = (BLOCK_BYTES / per_image).max(1);
        let threads = pool::threads();
        let per_thread = g.b.div_ceil(threads);
        Self {
            images: g.b,
            count: (threads * per_thread.div_ceil(max)).min(g.b),
        }
    }

    /// Where block `i` starts, in images (`i ≤ count`; block `count` starts at the end).
    fn start(&self, i: usize) -> usize {
        i * self.images / self.count.max(1)
    }

    /// The blocks' starts, in `unit`s per image, the end included: the bounds of
    /// [`pool::split_mut`].
    fn bounds(&self, unit: usize) -> Vec<usize> {
        (0..=self.count).map(|i| self.start(i) * unit).collect()
    }
}

/// Unfolds `images` channels-last images (`xh`, `[images][H][W][C]`) into `cols`, one row
/// per output pixel:
/// `cols[(b, oy, ox)][(i, j, c)] = x[b, c, oy·s + i·d − p, ox·s + j·d − p]`, 0 outside the
/// image; every tap is a copy of `C` contiguous values.
///
/// Rows are `ld ≥ k` apart; the `ld − k` padding entries at the end of each row are zero.
fn im2col<T: WithDType>(xh: &[T], g: &Geometry, ld: usize, cols: &mut [MaybeUninit<T>]) {
    let (k, pixels) = (g.k(), g.pixels());
    let image = g.h * g.w * g.c;
    if cols.is_empty() || image == 0 {
        return;
    }
    for (rows, x) in cols.chunks_mut(pixels * ld).zip(xh.chunks(image)) {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let (row, pad) = rows[(oy * g.ow + ox) * ld..][..ld].split_at_mut(k);
                pad.iter_mut().for_each(|d| {
                    d.write(T::zero());
                });
                for (tap, dst) in row.chunks_mut(g.c).enumerate() {
                    let (i, j) = (tap / g.kw, tap % g.kw);
                    match (g.source(oy, i, g.h), g.source(ox, j, g.w)) {
                        (Some(iy), Some(ix)) => {
                            let src = &x[(iy * g.w + ix) * g.c..][..g.c];
                            dst.iter_mut().zip(src).for_each(|(d, s)| {
                                d.write(*s);
                            });
                        }
                        _ => dst.iter_mut().for_each(|d| {
                            d.write(T::zero());
                        }),
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums every entry of `cols` (rows `k` apart) into the input
/// pixel it came from, in `xh` (channels-last images, zeroed by the caller).
fn col2im<T: WithDType>(cols: &[T], g: &Geometry, xh: &mut [T]) {
    let (k, pixels) = (g.k(), g.pixels());
    let image = g.h * g.w * g.c;
    if xh.is_empty() || k == 0 {
        return;
    }
    for (x, rows) in xh.chunks_mut(image).zip(cols.chunks(pixels * k)) {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let row = &rows[(oy * g.ow + ox) * k..][..k];
                for i in 0..g.kh {
                    let Some(iy) = g.source(oy, i, g.h) else {
                        continue;
                    };
                    for j in 0..g.kw {
                        if let Some(ix) = g.source(ox, j, g.w) {
                            let src = &row[(i * g.kw + j) * g.c..][..g.c];
                            let dst = &mut x[(iy * g.w + ix) * g.c..][..g.c];
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
                        }
                    }
                }
            }
        }
    }
}

/// The kernel `[co][c][i][j]` as `[co][(i, j, c)]`, the column order of [`im2col`].
fn kernel_taps_last<T: WithDType>(kernel: &[T], g: &Geometry) -> Vec<T> {
    swap_inner(kernel, g.c, g.kh * g.kw, true)
}

/// Images NCHW (`x`) to channels-last with the kernel's `g.c` channels: with a time channel,
/// `[images][H·W][t, x…]`.
fn channels_last<T: WithDType>(x: &[T], g: &Geometry) -> Vec<T> {
    let hw = g.h * g.w;
    let Some(t) = g.p.time else {
        return swap_inner(x, g.c, hw, false);
    };
    let (t, xc) = (T::from_f64(t), g.xc());
    let mut out = uninit(x.len() / xc * g.c);
    for (src, dst) in x.chunks(xc * hw).zip(out.chunks_mut(hw * g.c)) {
        // dst[p][1 + c] = src[c][p]
        transpose(src, hw, xc, hw, &mut dst[1..], g.c);
        dst.iter_mut().step_by(g.c).for_each(|d| {
            d.write(t);
        });
    }
    // SAFETY: every pixel's `g.c` values were written: the time, then the transposed channels.
    unsafe { assume_init(out) }
}

/// The inverse of [`channels_last`] into `out` (`[images][xc][H·W]`, written in full): the
/// time channel, when there is one, is dropped.
fn channels_first_into<T: WithDType>(xh: &[T], g: &Geometry, out: &mut [MaybeUninit<T>]) {
    let hw = g.h * g.w;
    if g.p.time.is_none() {
        return swap_inner_into(xh, hw, g.c, out, false);
    }
    let xc = g.xc();
    assert_eq!(
        xh.len() / g.c,
        out.len() / xc,
        "channels_first_into: lengths"
    );
    for (src, dst) in xh.chunks(hw * g.c).zip(out.chunks_mut(xc * hw)) {
        // dst[c][p] = src[p][1 + c]
        transpose(&src[1..], g.c, hw, xc, dst, hw);
    }
}

/// A block of images unfolded: the images NCHW (`x`) to channels-last, then to rows `ld`
/// apart. Returns the rows (`images·pixels·ld` values).
fn unfold_block<T: WithDType>(x: &[T], g: &Geometry, ld: usize) -> Vec<T> {
    let xh = channels_last(x, g);
    let images = x.len() / g.x_image();
    let mut cols = uninit(images * g.pixels() * ld);
    im2col(&xh, g, ld, &mut cols);
    // SAFETY: `im2col` wrote every row in full (values, zeros, padding).
    unsafe { assume_init(cols) }
}

// The batch is cut into blocks of whole images (`Blocks`), in parallel over blocks,
// each block's product on its own thread: a block's unfolded input is written and read
// while in cache, and the NCHW ↔ rows rearrangements happen block by block.

/// A new buffer of `b` images of `out_image` values, filled block by block in parallel:
/// `f(out, src)` gets one block's images of the output (uninitialised, to be written in full)
/// and of `src` (`src_image` values per image).
fn per_block<T: WithDType>(
    g: &Geometry,
    out_image: usize,
    src: &[T],
    src_image: usize,
    f: impl Fn(&mut [MaybeUninit<T>], &[T]) + Sync,
) -> Vec<T> {
    // `Geometry::new` rejected empty images and channels: only the batch can be empty.
    assert!(src_image > 0, "conv2d: empty image");
    let mut out = uninit(g.b * out_image);
    if !out.is_empty() {
        let blocks = Blocks::new::<T>(g);
        pool::split_mut(&mut out, &blocks.bounds(out_image), true, |i, out| {
            let first = blocks.start(i);
            f(
                out,
                &src[first * src_image..][..out.len() / out_image * src_image],
            )
        });
    }
    // SAFETY: the blocks cover `out` (or it is empty), and `f` writes each block in full.
    unsafe { assume_init(out) }
}

fn forward<T: WithDType>(x: &[T], kernel: &[T], bias: Option<&[T]>, g: &Geometry) -> Vec<T> {
    if direct::suits(g) {
        return direct::forward(x, kernel, bias, g);
    }
    let (k, pixels) = (g.k(), g.pixels());
    let in_image = g.x_image();
    let kernel = kernel_taps_last(kernel, g);
    per_block(g, g.co * pixels, x, in_image, |y, x| {
        let rows = (x.len() / in_image) * pixels;
        let cols = unfold_block(x, g, k);
        // prod[b·p][co] = cols[b·p][k] · Wᵀ[k][co]
        let mut prod = matmul_serial(
            rows,
            g.co,
            k,
            MatRef::new(&cols, k, 1),
            MatRef::new(&kernel, 1, k),
        );
        if let Some(bias) = bias {
            prod.chunks_mut(g.co)
                .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += *b));
        }
        swap_inner_into(&prod, pixels, g.co, y, false);
    })
}

fn backward_input<T: WithDType>(dy: &[T], kernel: &[T], g: &Geometry) -> Vec<T> {
    let (k, pixels) = (g.k(), g.pixels());
    let out_image = g.co * pixels;
    let kernel = kernel_taps_last(kernel, g);
    per_block(g, g.x_image(), dy, out_image, |dx, dy| {
        let images = dy.len() / out_image;
        let rows = images * pixels;
        // The block's output gradient as rows `[images·pixels][co]`.
        let dyr = swap_inner(dy, g.co, pixels, false);
        let mut dxh = vec![T::zero(); images * g.h * g.w * g.c];
        if k > 0 && g.co > 0 {
            // dcols[b·p][k] = dy[b·p][co] · W[co][k]
            let dcols = matmul_serial(
                rows,
                k,
                g.co,
                MatRef::new(&dyr, g.co, 1),
                MatRef::new(&kernel, k, 1),
            );
            col2im(&dcols, g, &mut dxh);
        }
        channels_first_into(&dxh, g, dx);
    })
}

fn backward_kernel<T: WithDType>(x: &[T], dy: &[T], g: &Geometry) -> Vec<T> {
    if direct::suits(g) {
        return direct::backward_kernel(x, dy, g);
    }
    let (k, pixels) = (g.k(), g.pixels());
    let (in_image, out_image) = (g.x_image(), g.co * pixels);
    let mut dw = vec![T::zero(); g.co * k];
    if dw.is_empty() || in_image == 0 || out_image == 0 {
        return dw;
    }
    // The product below reads `cols` down its columns, `ld` apart: a row length that is a
    // multiple of 256 bytes maps those reads onto few cache sets (measured on the whole
    // batch at once: 64×1024×21632 at 86 GFLOP/s, 128 with one cache line of padding per
    // row; 64×576×4608: 135 → 156).
    let ld = if (k * std::mem::size_of::<T>()).is_multiple_of(256) {
        k + 64 / std::mem::size_of::<T>()
    } else {
        k
    };
    let blocks = Blocks::new::<T>(g);
    // dWᵀ[k][co] = Σ over blocks of colsᵀ[k][b·p] · dy[b·p][co]. The blocks are cut into
    // as many fixed runs of consecutive blocks as there are threads, each summed in order
    // (by whichever thread takes it), and the runs' sums are added in order: the same bits
    // every time (for a given thread count), so that a resumed training run repeats a
    // straight one exactly. (Rayon's `fold` would sum in whatever order work stealing split
    // the blocks.)
    let runs = pool::threads().min(blocks.count);
    let partials = pool::map(runs, true, |r| {
        let mut acc = vec![T::zero(); k * g.co];
        for i in r * blocks.count / runs..(r + 1) * blocks.count / runs {
            let (first, end) = (blocks.start(i), blocks.start(i + 1));
            let x = &x[first * in_image..end * in_image];
            let dy = &dy[first * out_image..end * out_image];
            let rows = (end - first) * pixels;
            let cols = unfold_block(x, g, ld);
            // The block's output gradient as rows `[images·pixels][co]`.
            let dyr = swap_inner(dy, g.co, pixels, false);
            matmul_add_serial(
                &mut acc,
                k,
                g.co,
                rows,
                MatRef::new(&cols, 1, ld),
                MatRef::new(&dyr, g.co, 1),
            );
        }
        acc
    });
    let mut dwt = vec![T::zero(); k * g.co];
    for part in &partials {
        dwt.iter_mut().zip(part).for_each(|(a, b)| *a += *b);
    }
    // [(i, j, c)][co] → [co][c][(i, j)]
    let taps = g.kh * g.kw;
    for (t, rows) in dwt.chunks(g.c * g.co).enumerate() {
        for (c, row) in rows.chunks(g.co).enumerate() {
            for (co, v) in row.iter().enumerate() {
                dw[(co * g.c + c) * taps + t] = *v;
            }
        }
    }
    dw
}

/// The differentiable op on `(x, kernel)`.
struct Conv2d(Params);

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "node-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.0)?;
        let out = with_slices2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |x, w| forward(x, w, None, &g),
            |x, w| forward(x, w, None, &g),
        )?;
        Ok((out, (g.b, g.co, g.oh, g.ow).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.0)?;
        let y = unfolded::forward(s1, l1, s2, l2, None, &g)?;
        Ok((y, (g.b, g.co, g.oh, g.ow).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        input_and_kernel_grads(self.0, x, kernel, grad)
    }
}

/// The gradients of the inputs that need one (`track_op`): a network's first convolution
/// needs none for the images, which saves a product and a col2im as large as the forward.
fn input_and_kernel_grads(
    params: Params,
    x: &Tensor,
    kernel: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = if x.track_op() {
        Some(grad.apply_op2_no_bwd(
            kernel,
            &BackwardInput {
                params,
                x_dims: x.dims4()?,
            },
        )?)
    } else {
        None
    };
    let dk = if kernel.track_op() {
        Some(x.apply_op2_no_bwd(
            grad,
            &BackwardKernel {
                params,
                k_dims: kernel.dims4()?,
            },
        )?)
    } else {
        None
    };
    Ok((dx, dk))
}

/// The differentiable op on `(x, kernel, bias)`.
struct Conv2dBias(Params);

impl CustomOp3 for Conv2dBias {
    fn name(&self) -> &'static str {
        "node-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.0)?;
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, b| forward(x, w, Some(b), &g),
            |x, w, b| forward(x, w, Some(b), &g),
        )?;
        Ok((out, (g.b, g.co, g.oh, g.ow).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.0)?;
        let y = unfolded::forward(s1, l1, s2, l2, Some((s3, l3)), &g)?;
        Ok((y, (g.b, g.co, g.oh, g.ow).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dk) = input_and_kernel_grads(self.0, x, kernel, grad)?;
        if !bias.track_op() {
            return Ok((dx, dk, None));
        }
        // Σ over batch and space. On the CPU the contiguous last axis first (Candle's fast
        // path there); on CUDA both axes in one reduction (one launch instead of two).
        let (b, co, h, w) = grad.dims4()?;
        let g = grad.reshape((b, co, h * w))?;
        let db = if grad.device().is_cuda() {
            g.sum((0, 2))?
        } else {
            g.sum(2)?.sum(0)?
        };
        Ok((dx, dk, Some(db)))
    }
}

/// `dx` from `(dy, kernel)`.
struct BackwardInput {
    params: Params,
    x_dims: (usize, usize, usize, usize),
}

impl BackwardInput {
    /// The convolution's sizes from `(dy, kernel)`'s layouts, the gradient's shape checked.
    fn geometry(&self, ldy: &Layout, lk: &Layout) -> Result<Geometry> {
        let (b, c, h, w) = self.x_dims;
        let g = Geometry::new(&[b, c, h, w], lk.dims(), self.params)?;
        g.check_output(ldy, self.name())
    }
}

impl CustomOp2 for BackwardInput {
    fn name(&self) -> &'static str {
        "node-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let out = with_slices2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |dy, k| backward_input(dy, k, &g),
            |dy, k| backward_input(dy, k, &g),
        )?;
        Ok((out, self.x_dims.into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dx = unfolded::backward_input(s1, l1, s2, l2, &g)?;
        Ok((dx, self.x_dims.into()))
    }
}

/// `dkernel` from `(x, dy)`.
struct BackwardKernel {
    params: Params,
    k_dims: (usize, usize, usize, usize),
}

impl BackwardKernel {
    /// The convolution's sizes from `(x, dy)`'s layouts, the gradient's shape checked.
    fn geometry(&self, lx: &Layout, ldy: &Layout) -> Result<Geometry> {
        let (co, c, kh, kw) = self.k_dims;
        let g = Geometry::new(lx.dims(), &[co, c, kh, kw], self.params)?;
        g.check_output(ldy, self.name())
    }
}

impl CustomOp2 for BackwardKernel {
    fn name(&self) -> &'static str {
        "node-conv2d-backward-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let out = with_slices2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |x, dy| backward_kernel(x, dy, &g),
            |x, dy| backward_kernel(x, dy, &g),
        )?;
        Ok((out, self.k_dims.into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let dk = unfolded::backward_kernel(s1, l1, s2, l2, &g)?;
        Ok((dk, self.k_dims.into()))
    }
}
