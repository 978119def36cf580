//! `x · Wᵀ + b` (what `candle_nn::Linear` computes) with a direct kernel for small products.
//!
//! The vector fields of small-state models (`ode_demo`'s MLP on a 1024×2 state, a latent ODE's,
//! a CNF's) multiply by `[2, 50]` or `[50, 2]` matrices. The `gemm` crate spends more on
//! setting up such a product than on computing it (1024×50×2 takes 23 µs on the development
//! machine, ~4 GFLOP/s), and its AVX-512 build more still. Below 2¹⁸
//! multiply-adds this module computes the product directly, vectorized along the output's
//! rows, or as dot products when the output is narrow; above, it calls `gemm` like the
//! convolutions do. The bias is added in the same pass, and the backward pass (input, weight
//! and bias gradients) is one op.

use std::borrow::Cow;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};

use crate::gemm::{matmul, MatRef};
use crate::util::{with_slices2, with_slices3};

/// Products of at most this many multiply-adds are computed directly.
const DIRECT_MAX_WORK: usize = 1 << 18;
/// Outputs narrower than this are computed as dot products rather than row updates.
const NARROW: usize = 8;

/// `x · weightᵀ + bias`, differentiable in all three, as `candle_nn::Linear::forward`.
///
/// # Shapes
/// `x: [*, k]`, `weight: [n, k]`, `bias: [n]` → `[*, n]`.
///
/// # Errors
/// A weight that is not 2-D, mismatched inner sizes, a bias of another length, mismatched
/// dtypes or devices.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k) = weight.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "linear: weight {:?} must be [out, in]",
            weight.dims()
        ))
    })?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!("linear: input {dims:?} does not end in the weight's {k} inputs");
    }
    if let Some(b) = bias {
        if b.dims() != [n] {
            candle_core::bail!("linear: bias {:?}, expected [{n}]", b.dims());
        }
    }
    for t in std::iter::once(weight).chain(bias) {
        if t.dtype() != x.dtype() {
            candle_core::bail!(
                "linear: {:?} parameters for a {:?} input",
                t.dtype(),
                x.dtype()
            );
        }
        if !t.device().same_device(x.device()) {
            candle_core::bail!("linear: parameters and input on different devices");
        }
    }
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    if k == 0 {
        // A product over no inputs: the bias alone (it failed reshaping the empty input).
        let zeros = Tensor::zeros(out_dims.as_slice(), x.dtype(), x.device())?;
        return match bias {
            Some(b) => zeros.broadcast_add(b),
            None => Ok(zeros),
        };
    }
    let m = x.elem_count() / k;
    let x2 = x.reshape((m, k))?;
    let cpu = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
    let y = match (cpu, bias) {
        (true, Some(b)) => x2.apply_op3(weight, b, Linear { bias: true })?,
        (true, None) => x2.apply_op2(weight, Linear { bias: false })?,
        (false, b) => {
            let y = x2.matmul(&weight.t()?)?;
            match b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        }
    };
    y.reshape(out_dims)
}

/// `init + a[m×k] · b[k×n]` row-major (`init` a row added to every row, e.g. a bias):
/// directly when small, else on `gemm`.
fn product<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    init: Option<&[T]>,
) -> Vec<T> {
    if m * n * k > DIRECT_MAX_WORK {
        let mut out = matmul(m, n, k, a, b);
        if let Some(r) = init {
            out.chunks_mut(n.max(1))
                .for_each(|row| row.iter_mut().zip(r).for_each(|(o, b)| *o += *b));
        }
        return out;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { direct_avx512(m, n, k, a, b, init) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { direct_avx2(m, n, k, a, b, init) };
        }
    }
    direct(m, n, k, a, b, init)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn direct_avx512<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    init: Option<&[T]>,
) -> Vec<T> {
    direct(m, n, k, a, b, init)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn direct_avx2<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    init: Option<&[T]>,
) -> Vec<T> {
    direct(m, n, k, a, b, init)
}

/// The direct product, inlined into each instruction-set build above.
#[inline(always)]
fn direct<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    init: Option<&[T]>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(m * n);
    if n >= NARROW {
        // out[i][:] = init + Σ_l a[i][l] · b[l][:], with b's rows made contiguous (k·n values).
        let b = gather(k, n, b);
        for i in 0..m {
            match init {
                Some(r) => out.extend_from_slice(r),
                None => out.resize(out.len() + n, T::zero()),
            }
            let row = &mut out[i * n..];
            for (l, bl) in b.chunks(n).enumerate() {
                let ail = a.data[i * a.rs + l * a.cs];
                row.iter_mut().zip(bl).for_each(|(o, b)| *o += ail * *b);
            }
        }
    } else if n > 0 {
        // out[i][j] = init[j] + a[i][:] · bᵀ[j][:], both contiguous.
        let bt = gather(n, k, MatRef::new(b.data, b.cs, b.rs));
        let a = gather(m, k, a);
        for i in 0..m {
            let ai = &a[i * k..][..k];
            for j in 0..n {
                let c = init.map_or(T::zero(), |r| r[j]);
                out.push(c + dot(ai, &bt[j * k..][..k]));
            }
        }
    }
    out
}

/// The `rows × cols` view as a contiguous row-major slice: borrowed when it already is one,
/// else a copy.
#[inline(always)]
fn gather<T: WithDType>(rows: usize, cols: usize, v: MatRef<'_, T>) -> Cow<'_, [T]> {
    if v.cs == 1 && (v.rs == cols || rows <= 1) {
        return Cow::Borrowed(&v.data[..rows * cols]);
    }
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        if v.cs == 1 {
            out.extend_from_slice(&v.data[i * v.rs..][..cols]);
        } else {
            out.extend((0..cols).map(|j| v.data[i * v.rs + j * v.cs]));
        }
    }
    Cow::Owned(out)
}

/// `Σ a_i b_i` in eight lanes, so that it vectorizes.
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .fold(T::zero(), |s, (a, b)| s + *a * *b);
    for (a, b) in ac.zip(bc) {
        for ((s, a), b) in acc.iter_mut().zip(a).zip(b) {
            *s += *a * *b;
        }
    }
    acc.iter().fold(tail, |s, v| s + *v)
}

fn forward<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, n: usize) -> Vec<T> {
    let k = w.len() / n.max(1);
    let m = x.len() / k.max(1);
    // y[m×n] = x[m×k] · Wᵀ[k×n]
    product(m, n, k, MatRef::new(x, k, 1), MatRef::new(w, 1, k), bias)
}

/// `[dx, dweight, dbias]` flat, from `(x, weight, dy)`.
fn backward<T: WithDType>(x: &[T], w: &[T], dy: &[T], n: usize) -> Vec<T> {
    let k = w.len() / n.max(1);
    let m = x.len() / k.max(1);
    // dx[m×k] = dy[m×n] · W[n×k]; dW[n×k] = dyᵀ[n×m] · x[m×k]; db = Σ_i dy[i][:].
    let mut out = product(m, k, n, MatRef::new(dy, n, 1), MatRef::new(w, k, 1), None);
    out.extend(product(
        n,
        k,
        m,
        MatRef::new(dy, 1, n),
        MatRef::new(x, k, 1),
        None,
    ));
    let mut db = vec![T::zero(); n];
    for row in dy.chunks(n.max(1)) {
        db.iter_mut().zip(row).for_each(|(s, v)| *s += *v);
    }
    out.extend(db);
    out
}

/// The op on `(x [m, k], weight [n, k] [, bias [n]])`.
struct Linear {
    bias: bool,
}

impl Linear {
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let all = x.apply_op3_no_bwd(w, grad, &Backward)?;
        let dx = all.narrow(0, 0, m * k)?.reshape((m, k))?;
        let dw = all.narrow(0, m * k, n * k)?.reshape((n, k))?;
        let db = all.narrow(0, m * k + n * k, n)?;
        Ok((
            x.track_op().then_some(dx),
            w.track_op().then_some(dw),
            self.bias.then_some(db),
        ))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "node-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, n) = (l1.dims()[0], l2.dims()[0]);
        let out = with_slices2(
            CustomOp2::name(self),
            s1,
            l1,
            s2,
            l2,
            |x, w| forward(x, w, None, n),
            |x, w| forward(x, w, None, n),
        )?;
        Ok((out, (m, n).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "node-linear-bias"
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
        let (m, n) = (l1.dims()[0], l2.dims()[0]);
        let out = with_slices3(
            CustomOp3::name(self),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, b| forward(x, w, Some(b), n),
            |x, w, b| forward(x, w, Some(b), n),
        )?;
        Ok((out, (m, n).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, grad)?;
        Ok((dx, dw, db.filter(|_| bias.track_op())))
    }
}

/// `(x, weight, dy)` → `[dx, dweight, dbias]` flat.
struct Backward;

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "node-linear-backward"
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
        let (m, k) = (l1.dims()[0], l1.dims()[1]);
        let n = l2.dims()[0];
        if l3.dims() != [m, n] {
            candle_core::bail!(
                "{}: gradient {:?}, expected [{m}, {n}]",
                self.name(),
                l3.dims()
            );
        }
        let out = with_slices3(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |x, w, dy| backward(x, w, dy, n),
            |x, w, dy| backward(x, w, dy, n),
        )?;
        Ok((out, (m * k + n * k + n).into()))
    }
}
