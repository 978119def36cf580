//! Element-wise activations with vectorized CPU kernels and their derivatives.

use crate::pool;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use std::mem::MaybeUninit;

use crate::util::{contiguous, with_slices3};

/// `tanh(x)`, differentiable. Vectorized on CPU for f32 and f64; Candle's `tanh` elsewhere.
///
/// # Shapes
/// Any shape; the result has `x`'s shape and dtype.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Tanh, |x| x.tanh())
}

/// `max(x, 0)`, differentiable; on the CPU NaN stays NaN and the gradient is `g` where the
/// output is positive, 0 elsewhere (PyTorch's conventions). Off the CPU this is Candle's
/// `relu`, which maps NaN to 0 and passes `g` at `x = 0`.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Relu, |x| x.relu())
}

/// `1 / (1 + e^(−x))`, differentiable. The same formula in Candle ops off the CPU.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Sigmoid, sigmoid_in_candle_ops)
}

/// `ln(1 + eˣ)`, differentiable, computed as `max(x, 0) + ln(1 + e^(−|x|))` so it neither
/// overflows nor loses small values. Its gradient is `sigmoid(x)`. Candle ops off the CPU.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Softplus, |x| {
        let t = x.abs()?.neg()?.exp()?;
        x.relu()? + (t + 1.0)?.log()?
    })
}

/// `x` for `x > 0`, `alpha · (eˣ − 1)` otherwise, differentiable; `eˣ − 1` is computed
/// without cancellation near 0. Candle's `elu` off the CPU.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn elu(x: &Tensor, alpha: f64) -> Result<Tensor> {
    apply(x, Act::Elu(alpha), |x| x.elu(alpha))
}

/// `eˣ`, differentiable. Candle's `exp` off the CPU.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn exp(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Exp, |x| x.exp())
}

/// The sigmoid in Candle ops (this crate does not depend on candle-nn, whose op it matches).
fn sigmoid_in_candle_ops(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// The activations of this module.
#[derive(Clone, Copy, Debug)]
enum Act {
    Tanh,
    Relu,
    Sigmoid,
    Softplus,
    Elu(f64),
    Exp,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Tanh => "node-tanh",
            Act::Relu => "node-relu",
            Act::Sigmoid => "node-sigmoid",
            Act::Softplus => "node-softplus",
            Act::Elu(_) => "node-elu",
            Act::Exp => "node-exp",
        }
    }
}

/// Our op on CPU f32/f64, `fallback` (Candle's ops) elsewhere.
fn apply(x: &Tensor, act: Act, fallback: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.apply_op1(Forward(act))
    } else {
        fallback(x)
    }
}

/// Below this many elements a kernel runs on the calling thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 18;

/// Runs `kernel(inputs…, out)` over `n` elements, in parallel chunks when `n` is large.
fn run_chunked<T: Copy + Default + Send + Sync, const N: usize>(
    inputs: [&[T]; N],
    kernel: impl Fn([&[T]; N], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let n = inputs.first().map_or(0, |x| x.len());
    assert!(
        inputs.iter().all(|x| x.len() == n),
        "{N} inputs of unequal lengths"
    );
    let mut buf = Vec::with_capacity(n);
    let out = &mut buf.spare_capacity_mut()[..n];
    if n >= PARALLEL_MIN_ELEMS {
        let chunk = n.div_ceil(4 * pool::threads()).max(4096);
        pool::chunks_mut(out, chunk, true, |i, o| {
            let start = i * chunk;
            kernel(inputs.map(|x| &x[start..start + o.len()]), o)
        });
    } else {
        kernel(inputs, out);
    }
    // SAFETY: every kernel writes each element of its output chunk (they are one `zip` of
    // the output with the equally long inputs), and the chunks cover all `n`.
    unsafe { buf.set_len(n) };
    buf
}

/// The forward op.
struct Forward(Act);

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let act = self.0;
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(run_chunked([&contiguous(v, layout)], |[x], y| {
                    forward_f32(act, x, y)
                }))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(run_chunked([&contiguous(v, layout)], |[x], y| {
                    forward_f64(act, x, y)
                }))
            }
            s => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), s.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.apply_op3_no_bwd(
            arg,
            res,
            &Derivative(self.0),
        )?))
    }
}

/// `(g, x, y) ↦ g · act′(x)` in one pass (`y = act(x)` saves recomputing it). Not itself
/// differentiable: Candle's backward pass does not differentiate its own gradients.
struct Derivative(Act);

impl CustomOp3 for Derivative {
    fn name(&self) -> &'static str {
        "node-activation-derivative"
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
        let act = self.0;
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |g, x, y| run_chunked([g, x, y], |[g, x, y], d| derivative_f32(act, g, x, y, d)),
            |g, x, y| run_chunked([g, x, y], |[g, x, y], d| derivative_f64(act, g, x, y, d)),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

fn forward_f64(act: Act, x: &[f64], y: &mut [MaybeUninit<f64>]) {
    let mut map = |f: fn(f64) -> f64| {
        y.iter_mut().zip(x).for_each(|(y, x)| {
            y.write(f(*x));
        })
    };
    match act {
        Act::Tanh => map(f64::tanh),
        Act::Relu => map(|x| if x <= 0.0 { 0.0 } else { x }),
        Act::Sigmoid => map(|x| 1.0 / (1.0 + (-x).exp())),
        Act::Softplus => map(|x| x.max(0.0) + (-x.abs()).exp().ln_1p()),
        Act::Exp => map(f64::exp),
        Act::Elu(alpha) => y.iter_mut().zip(x).for_each(|(y, x)| {
            y.write(if *x > 0.0 { *x } else { alpha * x.exp_m1() });
        }),
    }
}

fn derivative_f64(act: Act, g: &[f64], x: &[f64], y: &[f64], d: &mut [MaybeUninit<f64>]) {
    derivative_kernel(act, g, x, y, d, |x| 1.0 / (1.0 + (-x).exp()), f64::exp)
}

/// `g · act′(x)` from `(g, x, y = act(x))`, one loop per activation; `sigmoid` and `exp` are
/// the dtype's own (softplus′ = sigmoid, elu′ = α·eˣ below 0).
#[inline(always)]
fn derivative_kernel<T: WithDType>(
    act: Act,
    g: &[T],
    x: &[T],
    y: &[T],
    d: &mut [MaybeUninit<T>],
    sigmoid: impl Fn(T) -> T,
    exp: impl Fn(T) -> T,
) {
    let (zero, one) = (T::zero(), T::one());
    let it = d.iter_mut().zip(g).zip(x.iter().zip(y));
    match act {
        Act::Tanh => it.for_each(|((d, g), (_, y))| {
            d.write(*g * (one - *y * *y));
        }),
        Act::Relu => it.for_each(|((d, g), (_, y))| {
            d.write(if *y > zero { *g } else { zero });
        }),
        Act::Sigmoid => it.for_each(|((d, g), (_, y))| {
            d.write(*g * *y * (one - *y));
        }),
        Act::Softplus => it.for_each(|((d, g), (x, _))| {
            d.write(*g * sigmoid(*x));
        }),
        Act::Exp => it.for_each(|((d, g), (_, y))| {
            d.write(*g * *y);
        }),
        Act::Elu(alpha) => {
            // α·eˣ from x, not y + α: for very negative x that sum cancels (x = −8 in f32:
            // 1e-4 relative error).
            let alpha = T::from_f64(alpha);
            it.for_each(|((d, g), (x, _))| {
                d.write(if *x > zero { *g } else { *g * alpha * exp(*x) });
            })
        }
    }
}

/// The f32 kernels, with AVX2+FMA when the CPU has them (runtime dispatch; the plain build
/// targets baseline x86-64).
fn forward_f32(act: Act, x: &[f32], y: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { forward_f32_avx512(act, x, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { forward_f32_avx2(act, x, y) };
    }
    forward_f32_kernel::<false>(act, x, y)
}

fn derivative_f32(act: Act, g: &[f32], x: &[f32], y: &[f32], d: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: as above.
        return unsafe { derivative_f32_avx512(act, g, x, y, d) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as above.
        return unsafe { derivative_f32_avx2(act, g, x, y, d) };
    }
    derivative_f32_kernel::<false>(act, g, x, y, d)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn forward_f32_avx512(act: Act, x: &[f32], y: &mut [MaybeUninit<f32>]) {
    forward_f32_kernel::<true>(act, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn derivative_f32_avx512(act: Act, g: &[f32], x: &[f32], y: &[f32], d: &mut [MaybeUninit<f32>]) {
    derivative_f32_kernel::<true>(act, g, x, y, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_f32_avx2(act: Act, x: &[f32], y: &mut [MaybeUninit<f32>]) {
    forward_f32_kernel::<true>(act, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn derivative_f32_avx2(act: Act, g: &[f32], x: &[f32], y: &[f32], d: &mut [MaybeUninit<f32>]) {
    derivative_f32_kernel::<true>(act, g, x, y, d)
}

/// One loop per activation, each branch-free so that it vectorizes.
#[inline(always)]
fn forward_f32_kernel<const FMA: bool>(act: Act, x: &[f32], y: &mut [MaybeUninit<f32>]) {
    let it = y.iter_mut().zip(x);
    match act {
        Act::Tanh => it.for_each(|(y, x)| {
            y.write(tanh_rational::<FMA>(*x));
        }),
        Act::Relu => it.for_each(|(y, x)| {
            y.write(if *x <= 0.0 { 0.0 } else { *x });
        }),
        Act::Sigmoid => it.for_each(|(y, x)| {
            y.write(sigmoid_f32::<FMA>(*x));
        }),
        Act::Softplus => it.for_each(|(y, x)| {
            y.write(softplus_f32::<FMA>(*x));
        }),
        Act::Exp => it.for_each(|(y, x)| {
            y.write(exp_f32::<FMA>(*x));
        }),
        Act::Elu(alpha) => {
            let alpha = alpha as f32;
            it.for_each(|(y, x)| {
                let e = alpha * expm1_neg_f32::<FMA>(*x);
                y.write(if *x > 0.0 { *x } else { e });
            })
        }
    }
}

#[inline(always)]
fn derivative_f32_kernel<const FMA: bool>(
    act: Act,
    g: &[f32],
    x: &[f32],
    y: &[f32],
    d: &mut [MaybeUninit<f32>],
) {
    derivative_kernel(act, g, x, y, d, sigmoid_f32::<FMA>, exp_f32::<FMA>)
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `2ⁿ` for an integer-valued `n` in [−126, 127], by building the exponent bits.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127) << 23) as u32)
}

/// `1.5 · 2²³`: adding it to a float below 2²² in magnitude rounds it to an integer (ties to
/// even), which then sits in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// `v` rounded to the nearest integer, as a float and as an integer, without a branch or a
/// (saturating, hence unvectorized) float-to-int cast.
#[inline(always)]
fn round_f32(v: f32) -> (f32, i32) {
    let t = v + MAGIC;
    (t - MAGIC, t.to_bits() as i32 - MAGIC.to_bits() as i32)
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` in two parts (Cody–Waite): `LN2_HI` has few bits, so `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `eʳ − 1` for |r| ≤ ln2/2, Cephes' `expf` polynomial: `r + r²·P(r)`.
#[inline(always)]
fn expm1_reduced<const FMA: bool>(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = madd::<FMA>(p, r, c);
    }
    madd::<FMA>(p, r * r, r)
}

/// `x = n·ln2 + r` with `n` integral, |r| ≤ ln2/2; returns `(n, r)`.
#[inline(always)]
fn reduce<const FMA: bool>(x: f32) -> (i32, f32) {
    let (n, ni) = round_f32(x * LOG2E);
    let r = madd::<FMA>(n, -LN2_HI, x);
    (ni, madd::<FMA>(n, -LN2_LO, r))
}

/// `eˣ` in f32, within 2 ulp (test-checked); overflows to ∞ above ln(f32::MAX), goes
/// subnormal and then 0 below −87.3, keeps NaN.
#[inline(always)]
fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    // The clamps keep n in [−150, 129]; `clamp` passes NaN through.
    let (n, r) = reduce::<FMA>(x.clamp(-104.0, 89.0));
    let e = expm1_reduced::<FMA>(r) + 1.0;
    // 2ⁿ as two factors, each a normal float, so that subnormal results come out right.
    // (For NaN, n is garbage but e is NaN.)
    let h = n >> 1;
    e * pow2i(h) * pow2i(n - h)
}

/// `eˣ − 1` for `x ≤ 0` (larger `x` give a value the caller discards), without the
/// cancellation of `eˣ − 1` near 0.
#[inline(always)]
fn expm1_neg_f32<const FMA: bool>(x: f32) -> f32 {
    // Below −30, eˣ − 1 is −1 in f32.
    let (n, r) = reduce::<FMA>(x.clamp(-30.0, 0.0));
    let s = pow2i(n);
    // eˣ − 1 = 2ⁿ(eʳ − 1) + (2ⁿ − 1), exact to rounding for n = 0.
    madd::<FMA>(s, expm1_reduced::<FMA>(r), s - 1.0)
}

/// `1 / (1 + e^(−x))` for `x ≥ 0`, `eˣ / (1 + eˣ)` below, so that the exponential never
/// overflows and results down to the subnormals come out right.
#[inline(always)]
fn sigmoid_f32<const FMA: bool>(x: f32) -> f32 {
    let e = exp_f32::<FMA>(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// `ln(1 + t)` for `t` in [0, 1]: Cephes' `logf` on `u = 1 + t` with the mantissa in
/// [√½, √2), corrected by `t / (u − 1)` for the rounding of `u` (Goldberg's trick).
#[inline(always)]
fn log1p_unit_f32<const FMA: bool>(t: f32) -> f32 {
    let u = 1.0 + t;
    // u ∈ [1, 2]: halve it above √2 so that the mantissa m is in [√½, √2).
    let big = u > std::f32::consts::SQRT_2;
    let (m, e) = if big { (u * 0.5, 1.0f32) } else { (u, 0.0) };
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2;
    for c in [
        -0.115_146_1,
        0.116_769_98,
        -0.124_201_41,
        0.142_493_23,
        -0.166_680_57,
        0.200_007_15,
        -0.249_999_94,
        0.333_333_3,
    ] {
        p = madd::<FMA>(p, f, c);
    }
    let mut y = f * z * p;
    y = madd::<FMA>(e, LN2_LO, y);
    y = madd::<FMA>(-0.5, z, y);
    let ln_u = madd::<FMA>(e, LN2_HI, f + y);
    let du = u - 1.0;
    if du == 0.0 {
        t
    } else {
        ln_u * (t / du)
    }
}

/// `max(x, 0) + ln(1 + e^(−|x|))`.
#[inline(always)]
fn softplus_f32<const FMA: bool>(x: f32) -> f32 {
    let t = exp_f32::<FMA>(-x.abs());
    let pos = if x > 0.0 { x } else { 0.0 };
    // NaN: `x > 0` is false, and t (hence the log term) is NaN.
    pos + log1p_unit_f32::<FMA>(t)
}

/// Clamp where tanh rounds to ±1 in f32.
const TANH_CLAMP: f32 = 7.905_311;
const ALPHA: [f32; 7] = [
    -2.760_768_5e-16,
    2.000_188e-13,
    -8.604_672e-11,
    5.122_297e-8,
    1.485_722_4e-5,
    6.372_619_3e-4,
    4.893_524_6e-3,
];
const BETA: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3];

/// Minimax rational approximation `x·p(x²)/q(x²)` (Eigen's `generic_fast_tanh_float`).
/// `clamp` keeps NaN as NaN. Below 4e-4, `tanh x = x` in f32, and `x·p` would go subnormal
/// for the tiniest inputs.
#[inline(always)]
fn tanh_rational<const FMA: bool>(x0: f32) -> f32 {
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let x = x0.clamp(-TANH_CLAMP, TANH_CLAMP);
    let x2 = x * x;
    let mut p = ALPHA[0];
    for a in &ALPHA[1..] {
        p = madd(p, x2, *a);
    }
    let mut q = BETA[0];
    for b in &BETA[1..] {
        q = madd(q, x2, *b);
    }
    if x0.abs() < 4e-4 {
        x0
    } else {
        x * p / q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `act` on `xs` through the dispatched kernel, or the plain one (no FMA).
    fn eval(act: Act, xs: &[f32], plain: bool) -> Vec<f32> {
        run_chunked([xs], |[x], y| {
            if plain {
                forward_f32_kernel::<false>(act, x, y)
            } else {
                forward_f32(act, x, y)
            }
        })
    }

    #[test]
    fn rational_tanh_is_accurate_everywhere() {
        // Dense sweep of [-12, 12] plus special values, against f64 tanh.
        let mut xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            3e-4,
            f32::MIN_POSITIVE,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let ys = eval(Act::Tanh, &xs, false);
        let ys_plain = eval(Act::Tanh, &xs, true);
        let ulp_error = |x: f32, y: f32| {
            let want = (x as f64).tanh();
            let w = (want.abs() as f32).max(f32::MIN_POSITIVE);
            let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
            (y as f64 - want).abs() / ulp
        };
        let worst = |out: &[f32]| {
            xs.iter()
                .zip(out)
                .map(|(x, y)| ulp_error(*x, *y))
                .fold(0.0, f64::max)
        };
        // The approximation is good to ~4e-7 relative: measured worst 5.1 ulp with FMA (at
        // x ≈ −7.07) and 6.7 ulp without (x ≈ −5.89), where tanh is within 1e-6 of ±1.
        assert!(worst(&ys) <= 7.0, "dispatched path: {} ulp", worst(&ys));
        assert!(
            worst(&ys_plain) <= 7.0,
            "plain path: {} ulp",
            worst(&ys_plain)
        );
        for out in [&ys, &ys_plain] {
            for (x, y) in xs.iter().zip(out.iter()) {
                let want = (*x as f64).tanh();
                assert!(
                    (*y as f64 - want).abs() <= 4e-7 * want.abs(),
                    "tanh({x}) = {y}, want {want}"
                );
            }
        }
        let nan = eval(Act::Tanh, &[f32::NAN], false);
        assert!(nan[0].is_nan(), "NaN must stay NaN");
    }

    /// Worst error in f32 ulps of `act` against `want` (f64) over `xs`, for the dispatched and
    /// the plain (no FMA) path; results below `floor` in magnitude are compared absolutely
    /// to `floor`'s ulp (subnormal and underflowing results).
    fn worst_ulp(act: Act, xs: &[f32], want: impl Fn(f64) -> f64, floor: f32) -> (f64, f64) {
        let fast = eval(act, xs, false);
        let plain = eval(act, xs, true);
        let err = |out: &[f32]| {
            xs.iter()
                .zip(out)
                .map(|(x, y)| {
                    let w = want(*x as f64);
                    if w.is_infinite() {
                        return if *y as f64 == w { 0.0 } else { f64::INFINITY };
                    }
                    let m = (w.abs() as f32).max(floor);
                    let ulp = (f32::from_bits(m.to_bits() + 1) - m) as f64;
                    (*y as f64 - w).abs() / ulp
                })
                .fold(0.0, f64::max)
        };
        (err(&fast), err(&plain))
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=n)
            .map(|i| lo + (hi - lo) * (i as f32 / n as f32))
            .collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, f32::MIN_POSITIVE]);
        xs
    }

    #[test]
    fn exp_sigmoid_softplus_elu_are_accurate() {
        let xs = sweep(-110.0, 90.0, 400_000);
        // Measured worst (FMA / plain): exp 0.99 / 0.95 ulp, sigmoid 2.6, softplus 2.5, elu
        // 2.0 / 1.9; subnormal results of exp and sigmoid included.
        let (f, p) = worst_ulp(Act::Exp, &xs, f64::exp, f32::MIN_POSITIVE);
        assert!(f <= 2.0 && p <= 2.0, "exp: {f} / {p} ulp");
        let (f, p) = worst_ulp(Act::Sigmoid, &xs, |x| 1.0 / (1.0 + (-x).exp()), 1e-37);
        assert!(f <= 3.0 && p <= 3.0, "sigmoid: {f} / {p} ulp");
        let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
        let (f, p) = worst_ulp(Act::Softplus, &xs, softplus, 1e-37);
        assert!(f <= 3.0 && p <= 3.0, "softplus: {f} / {p} ulp");
        let elu = |x: f64| if x > 0.0 { x } else { 1.3 * x.exp_m1() };
        let (f, p) = worst_ulp(Act::Elu(1.3), &xs, elu, f32::MIN_POSITIVE);
        assert!(f <= 3.0 && p <= 3.0, "elu: {f} / {p} ulp");
        // Infinities, NaN.
        for act in [
            Act::Exp,
            Act::Sigmoid,
            Act::Softplus,
            Act::Elu(1.0),
            Act::Relu,
        ] {
            let y = eval(act, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY], false);
            assert!(y[0].is_nan(), "{act:?}(NaN) = {}", y[0]);
            let want = |x: f64| match act {
                Act::Exp => x.exp(),
                Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                Act::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
                Act::Elu(a) => {
                    if x > 0.0 {
                        x
                    } else {
                        a * x.exp_m1()
                    }
                }
                _ => x.max(0.0),
            };
            assert_eq!(y[1] as f64, want(f64::INFINITY), "{act:?}(inf)");
            assert_eq!(y[2] as f64, want(f64::NEG_INFINITY), "{act:?}(-inf)");
        }
    }

    /// The gradients that come from `x` (softplus′ = sigmoid, elu′ = α·eˣ, exp′ = y) are as
    /// accurate as the forward values, down to very negative `x`, where `y + α` would cancel.
    #[test]
    fn derivatives_from_x_are_accurate() {
        let xs = sweep(-80.0, 80.0, 200_000);
        let ones = vec![1.0f32; xs.len()];
        type Exact = fn(f64) -> f64;
        let cases: [(Act, Exact); 3] = [
            (Act::Softplus, |x| 1.0 / (1.0 + (-x).exp())),
            (Act::Elu(1.3), |x| if x > 0.0 { 1.0 } else { 1.3 * x.exp() }),
            (Act::Exp, f64::exp),
        ];
        for (act, want) in cases {
            let ys = eval(act, &xs, false);
            let ds = run_chunked([&ones[..], &xs[..], &ys[..]], |[g, x, y], d| {
                derivative_f32(act, g, x, y, d)
            });
            let worst = xs
                .iter()
                .zip(&ds)
                .map(|(x, d)| {
                    let w = want(*x as f64);
                    if w.is_infinite() {
                        return if *d as f64 == w { 0.0 } else { f64::INFINITY };
                    }
                    let m = (w.abs() as f32).max(1e-37);
                    let ulp = (f32::from_bits(m.to_bits() + 1) - m) as f64;
                    (*d as f64 - w).abs() / ulp
                })
                .fold(0.0, f64::max);
            // Measured worst: softplus 2.1 ulp, elu 2.3, exp 1.0 (elu from y + α: 1.8e7).
            assert!(worst <= 4.0, "{act:?} derivative: {worst} ulp");
        }
    }
}
