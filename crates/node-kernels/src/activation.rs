//! Element-wise activations with vectorized CPU kernels and their derivatives.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// `tanh(x)`, differentiable. Vectorized on CPU for f32 and f64; Candle's `tanh` elsewhere.
///
/// # Shapes
/// Any shape; the result has `x`'s shape and dtype.
///
/// # Errors
/// Those of the underlying Candle op.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.apply_op1(Tanh)
    } else {
        x.tanh()
    }
}

struct Tanh;

impl CustomOp1 for Tanh {
    fn name(&self) -> &'static str {
        "node-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(map_contiguous(v, layout, tanh_f32_slice)),
            CpuStorage::F64(v) => CpuStorage::F64(map_contiguous(v, layout, |x, y| {
                y.iter_mut().zip(x).for_each(|(y, x)| *y = x.tanh())
            })),
            s => candle_core::bail!("node-tanh: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d tanh(x)/dx = 1 − tanh(x)².
        Ok(Some(grad_res.mul(&res.sqr()?.affine(-1.0, 1.0)?)?))
    }
}

/// Applies `kernel` to the elements of `v` under `layout`, in logical order.
fn map_contiguous<T: Copy + Default>(
    v: &[T],
    layout: &Layout,
    kernel: impl Fn(&[T], &mut [T]),
) -> Vec<T> {
    let mut out = vec![T::default(); layout.shape().elem_count()];
    kernel(&crate::util::contiguous(v, layout), &mut out);
    out
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

#[inline(always)]
fn tanh_f32_kernel<const FMA: bool>(x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = tanh_rational::<FMA>(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tanh_f32_avx2(x: &[f32], y: &mut [f32]) {
    tanh_f32_kernel::<true>(x, y)
}

fn tanh_f32_slice(x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { tanh_f32_avx2(x, y) };
    }
    tanh_f32_kernel::<false>(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut ys = vec![0.0; xs.len()];
        tanh_f32_slice(&xs, &mut ys);
        let mut ys_plain = vec![0.0; xs.len()];
        tanh_f32_kernel::<false>(&xs, &mut ys_plain);
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
        let mut nan = [0.0f32];
        tanh_f32_slice(&[f32::NAN], &mut nan);
        assert!(nan[0].is_nan(), "NaN must stay NaN");
    }
}
