//! Group normalization in one pass over the data forward and two backward.
//!
//! Candle's `GroupNorm` module is a chain of ten tensor ops (mean, subtract, square, mean,
//! divide, reshape, scale, shift, ...), each a pass over the data with broadcasting, and
//! autograd runs a backward for each: 14.8 ms forward + backward on the ODE-Net block's
//! `128×64×6×6` tensor against PyTorch's 0.5 ms. Here each `(image, group)` slice is
//! normalized by one kernel, with statistics accumulated in f64, and the backward pass
//! computes all three gradients together from the saved-nothing formulas
//! `dx = σ⁻¹ (γ·dy − mean(γ·dy) − x̂ · mean(γ·dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::util::with_slices3;

/// Slices smaller than this many elements in all are normalized on one thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// Group normalization (`torch.nn.functional.group_norm`), differentiable in `x`, `weight`
/// and `bias`: the channels of each sample are split into `groups` groups, each normalized to
/// zero mean and unit variance (biased variance, `eps` added), then scaled by `weight` and
/// shifted by `bias` per channel.
///
/// On the CPU, for f32 and f64, one fused kernel forward and one backward; elsewhere the same
/// computation in Candle ops (as `candle_nn::GroupNorm`).
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
/// [`crate::relu`]. Elsewhere [`group_norm`] then Candle's `relu`.
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
    if cpu && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.apply_op3(weight, bias, GroupNorm { groups, eps, relu })
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
struct Geometry {
    groups: usize,
    cg: usize,
    s: usize,
}

impl Geometry {
    fn new(dims: &[usize], groups: usize) -> Self {
        let c = dims[1];
        Self {
            groups,
            cg: c / groups,
            s: dims[2..].iter().product(),
        }
    }

    fn slice_len(&self) -> usize {
        self.cg * self.s
    }
}

/// Lanes of the f64 sums below: independent accumulators, so the loops vectorize instead of
/// waiting on one serial chain of additions (which made the whole op latency-bound).
const LANES: usize = 8;

/// `Σ f(a[i], b[i])` over two equally long slices, accumulated in f64 in [`LANES`] lanes.
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

/// Two sums `Σ f(a[i], b[i])` in one pass, as [`lane_sum`].
fn lane_sum2<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> (f64, f64)) -> (f64, f64) {
    let (mut acc0, mut acc1) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a, b) in ac.zip(bc) {
        for (((acc0, acc1), a), b) in acc0.iter_mut().zip(&mut acc1).zip(a).zip(b) {
            let (u, v) = f(*a, *b);
            *acc0 += u;
            *acc1 += v;
        }
    }
    let (mut t0, mut t1) = (0.0, 0.0);
    for (a, b) in ar.iter().zip(br) {
        let (u, v) = f(*a, *b);
        t0 += u;
        t1 += v;
    }
    (acc0.iter().sum::<f64>() + t0, acc1.iter().sum::<f64>() + t1)
}

/// Mean and `1/σ` of one slice, accumulated in f64 (two passes).
fn stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = lane_sum(x, x, |v, _| v.to_f64()) / n;
    let var = lane_sum(x, x, |v, _| {
        let d = v.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Runs `f(slice_index, chunk...)` over the zipped slices, in parallel when they are large.
fn for_each_slice<A: Sync, B: Send>(
    total: usize,
    len: usize,
    src: &[A],
    dst: &mut [B],
    f: impl Fn(usize, &[A], &mut [B]) + Sync,
) {
    if len == 0 {
        return;
    }
    if total >= PARALLEL_MIN_ELEMS {
        dst.par_chunks_mut(len)
            .zip(src.par_chunks(len))
            .enumerate()
            .for_each(|(i, (d, s))| f(i, s, d));
    } else {
        dst.chunks_mut(len)
            .zip(src.chunks(len))
            .enumerate()
            .for_each(|(i, (d, s))| f(i, s, d));
    }
}

fn forward<T: WithDType>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    g: Geometry,
    eps: f64,
    relu: bool,
) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    let len = g.slice_len();
    let out = &mut y.spare_capacity_mut()[..x.len()];
    for_each_slice(x.len(), len, x, out, |i, xs, ys| {
        let (mean, rstd) = stats(xs, eps);
        let c0 = (i % g.groups) * g.cg;
        for ((xc, yc), c) in xs.chunks(g.s).zip(ys.chunks_mut(g.s)).zip(c0..) {
            let norm = Normalize::new(mean, rstd, weight[c], bias[c]);
            if relu {
                yc.iter_mut().zip(xc).for_each(|(y, x)| {
                    y.write(relu_of(norm.apply(*x)));
                });
            } else {
                yc.iter_mut().zip(xc).for_each(|(y, x)| {
                    y.write(norm.apply(*x));
                });
            }
        }
    });
    // SAFETY: `x.len()` is a whole number of slices of `len = cg·s` elements (B·groups of
    // them), and every slice's `cg` channels of `s` elements were written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// `[dx, dweight, dbias]` concatenated.
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

/// With `relu`, `dy` is the gradient of the ReLU's output: it is masked where the norm's
/// output, recomputed with the forward's exact arithmetic, was ≤ 0 (or NaN).
fn backward<T: WithDType>(
    x: &[T],
    weight_bias: &[T],
    dy: &[T],
    g: Geometry,
    eps: f64,
    relu: bool,
) -> Vec<T> {
    let c = g.groups * g.cg;
    let (weight, bias) = weight_bias.split_at(c);
    let len = g.slice_len();
    let slices = x.len().checked_div(len).unwrap_or(0);
    // Per (slice, channel-in-group): Σ dy and Σ dy·x̂, for dβ and dγ.
    let mut sums = vec![(0.0f64, 0.0f64); slices * g.cg];
    let mut dx = Vec::with_capacity(x.len() + 2 * c);
    let dx_part = &mut dx.spare_capacity_mut()[..x.len()];
    let work = |i: usize, dxs: &mut [MaybeUninit<T>], sums: &mut [(f64, f64)]| {
        let xs = &x[i * len..][..len];
        let (mean, rstd) = stats(xs, eps);
        let c0 = (i % g.groups) * g.cg;
        let dys = &dy[i * len..][..len];
        // The ReLU's mask is recomputed where it is needed (two passes) rather than stored.
        let masked = |norm: Normalize<T>, x: T, dy: T| {
            if !relu || norm.apply(x) > T::zero() {
                dy
            } else {
                T::zero()
            }
        };
        let norm = |j: usize| Normalize::new(mean, rstd, weight[c0 + j], bias[c0 + j]);
        let (mut m_dxhat, mut m_dxhat_xhat) = (0.0, 0.0);
        for (j, sum) in sums.iter_mut().enumerate() {
            let (xc, dyc) = (&xs[j * g.s..][..g.s], &dys[j * g.s..][..g.s]);
            let norm = norm(j);
            let (s_dy, s_dy_xc) = lane_sum2(xc, dyc, |x, dy| {
                let dy = masked(norm, x, dy).to_f64();
                (dy, dy * (x.to_f64() - mean))
            });
            let s_dy_xhat = rstd * s_dy_xc;
            *sum = (s_dy, s_dy_xhat);
            let w = weight[c0 + j].to_f64();
            m_dxhat += w * s_dy;
            m_dxhat_xhat += w * s_dy_xhat;
        }
        let n = len as f64;
        let (m_dxhat, m_dxhat_xhat) = (m_dxhat / n, m_dxhat_xhat / n);
        for j in 0..g.cg {
            let norm = norm(j);
            // dx = σ⁻¹ (γ dy − m₁ − (x − μ) σ⁻¹ m₂) = dy·a + (x − μ)·b + e
            let w = weight[c0 + j].to_f64();
            let a = T::from_f64(rstd * w);
            let b = T::from_f64(-rstd * rstd * m_dxhat_xhat);
            let e = T::from_f64(-rstd * m_dxhat);
            let m = T::from_f64(mean);
            let range = j * g.s..(j + 1) * g.s;
            for ((d, x), dy) in dxs[range.clone()]
                .iter_mut()
                .zip(&xs[range.clone()])
                .zip(&dys[range])
            {
                d.write(masked(norm, *x, *dy) * a + (*x - m) * b + e);
            }
        }
    };
    if len > 0 {
        if x.len() >= PARALLEL_MIN_ELEMS {
            dx_part
                .par_chunks_mut(len)
                .zip(sums.par_chunks_mut(g.cg))
                .enumerate()
                .for_each(|(i, (d, s))| work(i, d, s));
        } else {
            dx_part
                .chunks_mut(len)
                .zip(sums.chunks_mut(g.cg))
                .enumerate()
                .for_each(|(i, (d, s))| work(i, d, s));
        }
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

/// The differentiable op on `(x, weight, bias)`.
struct GroupNorm {
    groups: usize,
    eps: f64,
    /// A ReLU fused after the norm.
    relu: bool,
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
        let g = Geometry::new(l1.dims(), self.groups);
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, b| forward(x, w, b, g, self.eps, self.relu),
            |x, w, b| forward(x, w, b, g, self.eps, self.relu),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Weight and bias in one input (the backward op has three slots); 2·C values.
        let weight_bias = Tensor::cat(&[weight, bias], 0)?;
        let all = x.apply_op3_no_bwd(
            &weight_bias,
            grad,
            &Backward {
                groups: self.groups,
                eps: self.eps,
                relu: self.relu,
            },
        )?;
        let (n, c) = (x.elem_count(), weight.elem_count());
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, c)?;
        let db = all.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `[dx, dweight, dbias]` (flat) from `(x, [weight, bias], dy)`.
struct Backward {
    groups: usize,
    eps: f64,
    relu: bool,
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
        let g = Geometry::new(l1.dims(), self.groups);
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, wb, dy| backward(x, wb, dy, g, self.eps, self.relu),
            |x, wb, dy| backward(x, wb, dy, g, self.eps, self.relu),
        )?;
        let n = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, n.into()))
    }
}
