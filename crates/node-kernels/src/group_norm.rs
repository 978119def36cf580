//! Group normalization in one pass over the data forward and two backward.
//!
//! Candle's `GroupNorm` module is a chain of ten tensor ops (mean, subtract, square, mean,
//! divide, reshape, scale, shift, ...), each a pass over the data with broadcasting, and
//! autograd runs a backward for each: 14.8 ms forward + backward on the ODE-Net block's
//! `128×64×6×6` tensor against PyTorch's 0.5 ms. Here each `(image, group)` slice is
//! normalized by one kernel, with statistics accumulated in f64, and the backward pass
//! (summing in the input's precision in short blocks, the blocks in f64) computes all three
//! gradients together from
//! `dx = σ⁻¹ (γ·dy − mean(γ·dy) − x̂ · mean(γ·dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`, with each
//! slice's mean and `σ⁻¹` kept from the forward pass (16 bytes per slice; the same bits as
//! recomputing them, which it does when they are missing).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, StorageRef, Tensor, WithDType,
};
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use crate::pool;
use crate::util::{contiguous, with_slices3};

/// Slices smaller than this many elements in all are normalized on one thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// Group normalization (`torch.nn.functional.group_norm`), differentiable in `x`, `weight`
/// and `bias`: the channels of each sample are split into `groups` groups, each normalized to
/// zero mean and unit variance (biased variance, `eps` added), then scaled by `weight` and
/// shifted by `bias` per channel.
///
/// On the CPU, for f32 and f64, one fused kernel forward and one backward; on CUDA (with the
/// `cuda` feature), f32 and f64, one kernel launch forward and two backward (unless
/// `NODE_CUDA_KERNELS_OFF=group_norm`); elsewhere the same computation in Candle ops (as
/// `candle_nn::GroupNorm`).
///
/// # Shapes
/// `x: [B, C, *]` (rank ≥ 2), `weight` and `bias: [C]` → the shape of `x`.
///
/// # Errors
/// `C` not divisible by `groups`, `groups == 0`, a rank below 2, `weight` or `bias` not of
/// shape `[C]`, mismatched dtypes.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    apply(x, groups, weight, bias, eps, false)
}

/// `relu(group_norm(x, …))` as one op: the pair in every block of the MNIST models. On the
/// CPU the ReLU costs no pass of its own, forward or backward, and the autograd graph has one
/// node instead of two (Candle accumulates every node's gradient with a zero-fill and an
/// add). NaN stays NaN, and the ReLU's gradient is 0 where its input is ≤ 0, as
/// [`crate::relu`]. On CUDA, as [`group_norm`], with the ReLU in the same kernels; elsewhere
/// [`group_norm`] then Candle's `relu`.
///
/// # Errors
/// As [`group_norm`].
pub fn group_norm_relu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    apply(x, groups, weight, bias, eps, true)
}

fn apply(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 {
        candle_core::bail!("group_norm: input {dims:?} must be [B, C, ...]");
    }
    let c = dims[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("group_norm: {c} channels do not split into {groups} groups");
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [c] {
            candle_core::bail!("group_norm: {name} is {:?}, expected [{c}]", t.dims());
        }
        if t.dtype() != x.dtype() {
            candle_core::bail!(
                "group_norm: {name} is {:?} but the input is {:?}",
                t.dtype(),
                x.dtype()
            );
        }
    }
    let cpu = [x, weight, bias].iter().all(|t| t.device().is_cpu());
    let cuda = cfg!(feature = "cuda")
        && [x, weight, bias].iter().all(|t| t.device().is_cuda())
        && crate::util::own_cuda_kernel("group_norm");
    if (cpu || cuda) && matches!(x.dtype(), DType::F32 | DType::F64) {
        // The CUDA kernels read contiguous data (a no-op when it already is).
        let (x, weight, bias) = if cuda {
            (&x.contiguous()?, &weight.contiguous()?, &bias.contiguous()?)
        } else {
            (x, weight, bias)
        };
        x.apply_op3(
            weight,
            bias,
            GroupNorm {
                settings: Settings { groups, eps, relu },
                saved: OnceLock::new(),
            },
        )
    } else if relu {
        reference(x, groups, weight, bias, eps)?.relu()
    } else {
        reference(x, groups, weight, bias, eps)
    }
}

/// The computation in Candle ops, for the devices and dtypes without a kernel here.
fn reference(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let b = dims[0];
    let len = x.elem_count() / (b * groups).max(1);
    let internal = match x.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let xg = x.reshape((b, groups, len))?.to_dtype(internal)?;
    let centred = xg.broadcast_sub(&xg.mean_keepdim(2)?)?;
    let var = centred.sqr()?.mean_keepdim(2)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    let mut w_dims = vec![1; dims.len()];
    w_dims[1] = dims[1];
    normed
        .to_dtype(x.dtype())?
        .reshape(dims)?
        .broadcast_mul(&weight.reshape(w_dims.clone())?)?
        .broadcast_add(&bias.reshape(w_dims)?)
}

/// Sizes: `batch` samples of `groups` contiguous slices of `cg` channels × `s` positions.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub groups: usize,
    pub cg: usize,
    pub s: usize,
}

impl Geometry {
    /// For dims `[B, C, *]` that [`apply`] has checked.
    pub fn new(dims: &[usize], groups: usize) -> Self {
        let c = dims[1];
        Self {
            groups,
            cg: c / groups,
            s: dims[2..].iter().product(),
        }
    }

    pub fn slice_len(&self) -> usize {
        self.cg * self.s
    }
}

/// Lanes of the f64 sums below: independent accumulators, so the loops vectorize instead of
/// waiting on one serial chain of additions (which made the whole op latency-bound).
const LANES: usize = 8;

/// `Σ f(a[i], b[i])` over two equally long slices, accumulated in f64 in [`LANES`] lanes.
#[inline(always)]
fn lane_sum<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a, b) in ac.zip(bc) {
        for ((acc, a), b) in acc.iter_mut().zip(a).zip(b) {
            *acc += f(*a, *b);
        }
    }
    let tail: f64 = ar.iter().zip(br).map(|(a, b)| f(*a, *b)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Lanes of the backward pass's sums, which run in the input's precision (one AVX2 vector of
/// f32: with 16 lanes the per-channel reductions cost more than they saved at 36 positions).
const LANES_T: usize = 8;
/// Elements the backward pass sums in the input's precision before adding them to f64 totals:
/// an f32 lane then rounds at most 64 additions.
const BLOCK_T: usize = LANES_T * 64;

/// Two sums `Σ f(a[i], b[i])` in one pass: in [`LANES_T`] lanes of `T` over blocks of
/// [`BLOCK_T`] elements, the blocks' sums added in f64. (PyTorch sums these in f32 throughout.
/// Converting every product to f64, as the forward's statistics do, cost the backward pass
/// about a sixth of its time on the ODE block's 6×6 maps, measured as its share of a profile.)
#[inline(always)]
fn lane_sum2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> (T, T)) -> (f64, f64) {
    let (mut t0, mut t1) = (0.0f64, 0.0f64);
    for (a, b) in a.chunks(BLOCK_T).zip(b.chunks(BLOCK_T)) {
        let (mut acc0, mut acc1) = ([T::zero(); LANES_T], [T::zero(); LANES_T]);
        let (ac, bc) = (a.chunks_exact(LANES_T), b.chunks_exact(LANES_T));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (a, b) in ac.zip(bc) {
            for (((acc0, acc1), a), b) in acc0.iter_mut().zip(&mut acc1).zip(a).zip(b) {
                let (u, v) = f(*a, *b);
                *acc0 += u;
                *acc1 += v;
            }
        }
        for (i, (a, b)) in ar.iter().zip(br).enumerate() {
            let (u, v) = f(*a, *b);
            acc0[i] += u;
            acc1[i] += v;
        }
        t0 += acc0.iter().map(|v| v.to_f64()).sum::<f64>();
        t1 += acc1.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    (t0, t1)
}

/// Mean and `1/σ` of one slice, accumulated in f64 (two passes).
#[inline(always)]
fn stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = lane_sum(x, x, |v, _| v.to_f64()) / n;
    let var = lane_sum(x, x, |v, _| {
        let d = v.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// What every slice's kernel needs besides its data.
#[derive(Clone, Copy)]
struct Params<'a, T> {
    weight: &'a [T],
    bias: &'a [T],
    g: Geometry,
    eps: f64,
    relu: bool,
}

impl<'a, T> Params<'a, T> {
    fn new(weight: &'a [T], bias: &'a [T], g: Geometry, eps: f64, relu: bool) -> Self {
        Self {
            weight,
            bias,
            g,
            eps,
            relu,
        }
    }
}

/// Whether the CPU has AVX2 and FMA (the standard library caches the answer).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

// The per-slice kernels are written once, `#[inline(always)]`, and also compiled inside the
// `_avx2` wrappers below (`target_feature`), where their loops use 256-bit vectors (4 f64 / 8
// f32 lanes instead of SSE2's 2 / 4). Rust does not contract `a·b + c` into an FMA, so both
// builds give the same bits: the fused ReLU's mask is the same whichever build ran the
// forward.

/// One `(sample, group)` slice of the forward pass: `xs` normalized into `ys`.
#[inline(always)]
fn forward_slice<T: WithDType>(
    p: Params<T>,
    i: usize,
    xs: &[T],
    ys: &mut [MaybeUninit<T>],
) -> (f64, f64) {
    let g = p.g;
    let (mean, rstd) = stats(xs, p.eps);
    let c0 = (i % g.groups) * g.cg;
    for ((xc, yc), c) in xs.chunks(g.s).zip(ys.chunks_mut(g.s)).zip(c0..) {
        let norm = Normalize::new(mean, rstd, p.weight[c], p.bias[c]);
        if p.relu {
            yc.iter_mut().zip(xc).for_each(|(y, x)| {
                y.write(relu_of(norm.apply(*x)));
            });
        } else {
            yc.iter_mut().zip(xc).for_each(|(y, x)| {
                y.write(norm.apply(*x));
            });
        }
    }
    (mean, rstd)
}

/// [`forward_slice`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_slice_avx2<T: WithDType>(
    p: Params<T>,
    i: usize,
    xs: &[T],
    ys: &mut [MaybeUninit<T>],
) -> (f64, f64) {
    forward_slice(p, i, xs, ys)
}

/// One `(sample, group)` slice of the backward pass: `dx` into `dxs`, and per channel of the
/// group `(Σ dy, Σ dy·x̂)` into `sums`. With the fused ReLU, `dys` is the gradient of its
/// output, masked where the norm's output (recomputed with the forward's arithmetic) was
/// ≤ 0 or NaN; the mask is recomputed in the two passes that need it rather than stored.
#[inline(always)]
fn backward_slice<T: WithDType>(
    p: Params<T>,
    i: usize,
    (mean, rstd): (f64, f64),
    xs: &[T],
    dys: &[T],
    dxs: &mut [MaybeUninit<T>],
    sums: &mut [(f64, f64)],
) {
    let g = p.g;
    let c0 = (i % g.groups) * g.cg;
    let masked = |norm: Normalize<T>, x: T, dy: T| {
        if !p.relu || norm.apply(x) > T::zero() {
            dy
        } else {
            T::zero()
        }
    };
    let norm = |j: usize| Normalize::new(mean, rstd, p.weight[c0 + j], p.bias[c0 + j]);
    let m = T::from_f64(mean);
    let (mut m_dxhat, mut m_dxhat_xhat) = (0.0, 0.0);
    for (j, sum) in sums.iter_mut().enumerate() {
        let (xc, dyc) = (&xs[j * g.s..][..g.s], &dys[j * g.s..][..g.s]);
        let norm = norm(j);
        let (s_dy, s_dy_xc) = lane_sum2(xc, dyc, |x, dy| {
            let dy = masked(norm, x, dy);
            (dy, dy * (x - m))
        });
        let s_dy_xhat = rstd * s_dy_xc;
        *sum = (s_dy, s_dy_xhat);
        let w = p.weight[c0 + j].to_f64();
        m_dxhat += w * s_dy;
        m_dxhat_xhat += w * s_dy_xhat;
    }
    let n = xs.len() as f64;
    let (m_dxhat, m_dxhat_xhat) = (m_dxhat / n, m_dxhat_xhat / n);
    for j in 0..g.cg {
        let norm = norm(j);
        // dx = σ⁻¹ (γ dy − m₁ − (x − μ) σ⁻¹ m₂) = dy·a + (x − μ)·b + e
        let w = p.weight[c0 + j].to_f64();
        let a = T::from_f64(rstd * w);
        let b = T::from_f64(-rstd * rstd * m_dxhat_xhat);
        let e = T::from_f64(-rstd * m_dxhat);
        let range = j * g.s..(j + 1) * g.s;
        for ((d, x), dy) in dxs[range.clone()]
            .iter_mut()
            .zip(&xs[range.clone()])
            .zip(&dys[range])
        {
            d.write(masked(norm, *x, *dy) * a + (*x - m) * b + e);
        }
    }
}

/// [`backward_slice`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_slice_avx2<T: WithDType>(
    p: Params<T>,
    i: usize,
    stats: (f64, f64),
    xs: &[T],
    dys: &[T],
    dxs: &mut [MaybeUninit<T>],
    sums: &mut [(f64, f64)],
) {
    backward_slice(p, i, stats, xs, dys, dxs, sums)
}

fn forward<T: WithDType>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    g: Geometry,
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let mut y = Vec::with_capacity(x.len());
    let len = g.slice_len();
    let out = &mut y.spare_capacity_mut()[..x.len()];
    let p = Params::new(weight, bias, g, eps, relu);
    let mut stats = vec![(0.0, 0.0); x.len().checked_div(len).unwrap_or(0)];
    if len > 0 {
        let parallel = x.len() >= PARALLEL_MIN_ELEMS;
        pool::chunks_mut2((out, len), (&mut stats, 1), parallel, |i, ys, st| {
            let xs = &x[i * len..][..len];
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: AVX2 and FMA were detected.
                st[0] = unsafe { forward_slice_avx2(p, i, xs, ys) };
                return;
            }
            st[0] = forward_slice(p, i, xs, ys);
        });
    }
    // SAFETY: `x.len()` is a whole number of slices of `len = cg·s` elements (B·groups of
    // them), and every slice's `cg` channels of `s` elements were written above.
    unsafe { y.set_len(x.len()) };
    (y, stats)
}

/// One channel's normalization in the input dtype: `y = (x − μ)·(σ⁻¹γ) + β` (centring first
/// keeps a large mean from cancelling). The forward pass and the fused ReLU's backward mask
/// both use it, so the mask sees exactly the forward's values.
#[derive(Clone, Copy)]
struct Normalize<T> {
    mean: T,
    scale: T,
    shift: T,
}

impl<T: WithDType> Normalize<T> {
    fn new(mean: f64, rstd: f64, weight: T, bias: T) -> Self {
        Self {
            mean: T::from_f64(mean),
            scale: T::from_f64(rstd * weight.to_f64()),
            shift: bias,
        }
    }

    #[inline(always)]
    fn apply(self, x: T) -> T {
        (x - self.mean) * self.scale + self.shift
    }
}

/// `max(v, 0)` keeping NaN (`v ≤ 0` is false for NaN).
#[inline(always)]
fn relu_of<T: WithDType>(v: T) -> T {
    if v <= T::zero() {
        T::zero()
    } else {
        v
    }
}

/// `[dx, dweight, dbias]` concatenated. `saved`: each slice's `(mean, 1/σ)` from the forward
/// pass (recomputed, the same way, when absent). With `relu`, `dy` is the gradient of the
/// ReLU's output: it is masked where the norm's output, recomputed with the forward's exact
/// arithmetic, was ≤ 0 (or NaN).
#[allow(clippy::too_many_arguments)]
fn backward<T: WithDType>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    dy: &[T],
    g: Geometry,
    eps: f64,
    relu: bool,
    saved: Option<&[(f64, f64)]>,
) -> Vec<T> {
    let c = g.groups * g.cg;
    let len = g.slice_len();
    let slices = x.len().checked_div(len).unwrap_or(0);
    // Per (slice, channel-in-group): Σ dy and Σ dy·x̂, for dβ and dγ.
    let mut sums = vec![(0.0f64, 0.0f64); slices * g.cg];
    let mut dx = Vec::with_capacity(x.len() + 2 * c);
    let dx_part = &mut dx.spare_capacity_mut()[..x.len()];
    let p = Params::new(weight, bias, g, eps, relu);
    let work = |i: usize, dxs: &mut [MaybeUninit<T>], sums: &mut [(f64, f64)]| {
        let (xs, dys) = (&x[i * len..][..len], &dy[i * len..][..len]);
        let st = match saved {
            Some(saved) => saved[i],
            None => stats(xs, eps),
        };
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { backward_slice_avx2(p, i, st, xs, dys, dxs, sums) };
        }
        backward_slice(p, i, st, xs, dys, dxs, sums)
    };
    if len > 0 && g.cg > 0 {
        pool::chunks_mut2(
            (dx_part, len),
            (&mut sums, g.cg),
            x.len() >= PARALLEL_MIN_ELEMS,
            work,
        );
    }
    // Reduce over the batch: slice i covers channels (i % groups)·cg ...
    let mut dw = vec![0.0f64; c];
    let mut db = vec![0.0f64; c];
    for (i, s) in sums.chunks(g.cg.max(1)).enumerate() {
        let c0 = (i % g.groups) * g.cg;
        for (j, (s_dy, s_dy_xhat)) in s.iter().enumerate() {
            db[c0 + j] += s_dy;
            dw[c0 + j] += s_dy_xhat;
        }
    }
    let tail = &mut dx.spare_capacity_mut()[x.len()..x.len() + 2 * c];
    for (t, v) in tail.iter_mut().zip(dw.iter().chain(&db)) {
        t.write(T::from_f64(*v));
    }
    // SAFETY: `x.len()` is a whole number of slices of `len` elements (or 0), each written in
    // full by `work` (every channel's `s` elements), and the `2·c` sums just above.
    unsafe { dx.set_len(x.len() + 2 * c) };
    dx
}

/// What the op's forward and backward passes share, on every device.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub groups: usize,
    pub eps: f64,
    /// A ReLU fused after the norm.
    pub relu: bool,
}

/// The differentiable op on `(x, weight, bias)`.
struct GroupNorm {
    settings: Settings,
    /// Each slice's `(mean, 1/σ)`, kept by the CPU forward for the backward (16 bytes per
    /// `(sample, group)`; the backward pass then reads `x` twice instead of four times).
    saved: OnceLock<Arc<Vec<(f64, f64)>>>,
}

impl GroupNorm {
    /// Keeps the forward's statistics (of its first run: Candle runs an op's forward once)
    /// and returns its output.
    fn keep<T>(&self, (y, stats): (Vec<T>, Vec<(f64, f64)>)) -> Vec<T> {
        let _ = self.saved.set(Arc::new(stats));
        y
    }
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "node-group-norm"
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
        let Settings { groups, eps, relu } = self.settings;
        let g = Geometry::new(l1.dims(), groups);
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, b| self.keep(forward(x, w, b, g, eps, relu)),
            |x, w, b| self.keep(forward(x, w, b, g, eps, relu)),
        )?;
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let op = crate::cuda::Forward(self.settings);
        crate::cuda::run3(&op, [(s1, l1), (s2, l2), (s3, l3)], l1.shape().clone())
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The CUDA kernels read contiguous data (a no-op when it already is).
        let grad = &if grad.device().is_cuda() {
            grad.contiguous()?
        } else {
            grad.clone()
        };
        let all = x.apply_op3_no_bwd(
            weight,
            grad,
            &Backward {
                settings: self.settings,
                saved: self.saved.get().cloned(),
                bias: bias.clone(),
            },
        )?;
        let (n, c) = (x.elem_count(), weight.elem_count());
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, c)?;
        let db = all.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `[dx, dweight, dbias]` (flat) from `(x, weight, dy)` and the bias.
struct Backward {
    settings: Settings,
    /// The forward's statistics, when it ran on the CPU.
    saved: Option<Arc<Vec<(f64, f64)>>>,
    /// The fourth input, read from its storage (an op has three slots at most). Passing it so,
    /// rather than as `[weight, bias]` in one slot, saves concatenating them: on CUDA two
    /// launches per backward pass.
    bias: Tensor,
}

impl Backward {
    /// The bias's storage, checked against the weight's layout and dtype.
    fn bias(&self, weight: &Layout, dtype: DType) -> Result<(StorageRef<'_>, &Layout)> {
        let (storage, layout) = self.bias.storage_and_layout();
        if layout.dims() != weight.dims() || storage.dtype() != dtype {
            candle_core::bail!(
                "{}: bias {:?} {:?} against weight {:?} {dtype:?}",
                self.name(),
                layout.dims(),
                storage.dtype(),
                weight.dims()
            );
        }
        Ok((storage, layout))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "node-group-norm-backward"
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
        if l1.dims() != l3.dims() {
            candle_core::bail!("{}: gradient shape {:?}", self.name(), l3.dims());
        }
        let Settings { groups, eps, relu } = self.settings;
        let g = Geometry::new(l1.dims(), groups);
        let slices = l1.shape().elem_count().checked_div(g.slice_len());
        let saved = self
            .saved
            .as_deref()
            .filter(|s| Some(s.len()) == slices)
            .map(Vec::as_slice);
        let (bias, lb) = self.bias(l2, s1.dtype())?;
        let Storage::Cpu(bias) = &*bias else {
            candle_core::bail!("{}: the bias is not on the CPU", self.name());
        };
        // The dtype was checked: one of these is the bias, the other is not used.
        let b32 = bias.as_slice::<f32>().map(|b| contiguous(b, lb));
        let b64 = bias.as_slice::<f64>().map(|b| contiguous(b, lb));
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, dy| backward(x, w, b32.as_deref().unwrap_or(&[]), dy, g, eps, relu, saved),
            |x, w, dy| backward(x, w, b64.as_deref().unwrap_or(&[]), dy, g, eps, relu, saved),
        )?;
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((out, n.into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bias, lb) = self.bias(l2, s1.dtype())?;
        let Storage::Cuda(bias) = &*bias else {
            candle_core::bail!("{}: the bias is not on a CUDA device", self.name());
        };
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        let out = crate::cuda::backward(self.settings, [(s1, l1), (s2, l2), (bias, lb), (s3, l3)])?;
        Ok((out, n.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build of the per-slice kernels gives the same bits as the baseline build
    /// (which the test suite otherwise only runs on CPUs without AVX2), forward and backward,
    /// with and without the fused ReLU, f32 and f64.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_build_matches_baseline_bit_for_bit() {
        if !has_avx2() {
            return;
        }
        fn check<T: WithDType>(relu: bool) {
            // 3 channels per group of 37 positions: ragged against every vector width.
            let g = Geometry {
                groups: 2,
                cg: 3,
                s: 37,
            };
            let len = g.slice_len();
            let value = |i: usize, k: u64| {
                let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ k) >> 40;
                T::from_f64(h as f64 / (1u64 << 24) as f64 * 4.0 - 1.5)
            };
            let x: Vec<T> = (0..len).map(|i| value(i, 1)).collect();
            let dy: Vec<T> = (0..len).map(|i| value(i, 2)).collect();
            let weight: Vec<T> = (0..6).map(|i| value(i, 3)).collect();
            let bias: Vec<T> = (0..6).map(|i| value(i, 4)).collect();
            let p = Params::new(&weight, &bias, g, 1e-5, relu);
            let bits = |v: &[MaybeUninit<T>]| -> Vec<f64> {
                // SAFETY: written in full by the kernels.
                v.iter()
                    .map(|v| unsafe { v.assume_init() }.to_f64())
                    .collect()
            };
            for i in [0, 1] {
                let (mut y0, mut y1) = (uninit_vec(len), uninit_vec(len));
                let st0 = forward_slice(p, i, &x, &mut y0);
                // SAFETY: AVX2 and FMA were detected.
                let st1 = unsafe { forward_slice_avx2(p, i, &x, &mut y1) };
                assert_eq!(bits(&y0), bits(&y1), "forward, relu {relu}");
                assert_eq!(st0, st1, "forward statistics, relu {relu}");
                assert_eq!(st0, stats(&x, 1e-5), "kept statistics, relu {relu}");
                let (mut d0, mut d1) = (uninit_vec(len), uninit_vec(len));
                let (mut s0, mut s1) = (vec![(0.0, 0.0); 3], vec![(0.0, 0.0); 3]);
                backward_slice(p, i, st0, &x, &dy, &mut d0, &mut s0);
                // SAFETY: AVX2 and FMA were detected.
                unsafe { backward_slice_avx2(p, i, st0, &x, &dy, &mut d1, &mut s1) };
                assert_eq!(bits(&d0), bits(&d1), "backward dx, relu {relu}");
                assert_eq!(s0, s1, "backward sums, relu {relu}");
            }
        }
        fn uninit_vec<T>(len: usize) -> Vec<MaybeUninit<T>> {
            (0..len).map(|_| MaybeUninit::uninit()).collect()
        }
        for relu in [false, true] {
            check::<f32>(relu);
            check::<f64>(relu);
        }
    }

    /// The backward pass from the forward's kept statistics equals the one that recomputes
    /// them, bit for bit (f32, f64, with and without the fused ReLU, several slices).
    #[test]
    fn kept_statistics_change_nothing() {
        fn check<T: WithDType>(relu: bool) {
            let g = Geometry {
                groups: 4,
                cg: 3,
                s: 29,
            };
            let n = 5 * 4 * g.slice_len();
            let value = |i: usize, k: usize| {
                T::from_f64(((i * 7919 + k * 104_729) % 1000) as f64 / 250.0 - 1.7)
            };
            let x: Vec<T> = (0..n).map(|i| value(i, 1)).collect();
            let dy: Vec<T> = (0..n).map(|i| value(i, 2)).collect();
            let wb: Vec<T> = (0..24).map(|i| value(i, 3)).collect();
            let (_, kept) = forward(&x, &wb[..12], &wb[12..], g, 1e-5, relu);
            assert_eq!(kept.len(), 20);
            let (w, b) = wb.split_at(12);
            let recomputed = backward(&x, w, b, &dy, g, 1e-5, relu, None);
            let from_kept = backward(&x, w, b, &dy, g, 1e-5, relu, Some(&kept));
            let bits = |v: &[T]| v.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
            assert_eq!(bits(&recomputed), bits(&from_kept), "relu {relu}");
        }
        for relu in [false, true] {
            check::<f32>(relu);
            check::<f64>(relu);
        }
    }
}
