//! The one-pass stage combinations behind [`crate::rk::lincomb`]: on the CPU here, on CUDA
//! in `cuda.rs` (with the `cuda` feature); and the one-launch concatenation behind
//! [`crate::rk::concat_flat`] on CUDA.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{
    CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};

#[cfg(feature = "cuda")]
mod cuda;

/// `base + Σ w_i x_i` in one pass on the inputs' device, or `None` where the inputs do not
/// qualify for it (then the caller builds Candle's chain): a tensor that tracks a gradient,
/// several devices, dtypes or shapes, a dtype other than f32/f64, a strided input, a device
/// without such a pass. The caller drops zero weights first, as the Candle chain skips them.
pub(crate) fn lincomb_fused(
    base: Option<&Tensor>,
    terms: &[(f64, &Tensor)],
) -> Result<Option<Tensor>> {
    let Some((_, first)) = terms.first() else {
        return Ok(None);
    };
    // The base (when there is one), then the terms' tensors.
    let all: Vec<&Tensor> = base
        .into_iter()
        .chain(terms.iter().map(|(_, x)| *x))
        .collect();
    let qualifies = all.iter().all(|t| {
        t.device().same_device(first.device())
            && !t.track_op()
            && t.dtype() == first.dtype()
            && t.shape() == first.shape()
    });
    if !qualifies {
        return Ok(None);
    }
    let has_base = base.is_some();
    match (first.device(), first.dtype()) {
        (Device::Cpu, DType::F32) => combine::<f32>(&all, has_base, terms),
        (Device::Cpu, DType::F64) => combine::<f64>(&all, has_base, terms),
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F32) if own_cuda_kernel("lincomb") => {
            cuda::combine::<f32>(&all, has_base, terms)
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F64) if own_cuda_kernel("lincomb") => {
            cuda::combine::<f64>(&all, has_base, terms)
        }
        _ => Ok(None),
    }
}

/// `base + Σ_j w_j ⊙ x_j` with one weight per row of the leading dimension in each `w_j`
/// (`odeint_independent`'s per-sample step sizes), in one pass on the CPU, or `None` where
/// the inputs do not qualify (then the caller builds Candle's chain of a broadcast product
/// and an addition per term): a tensor that tracks a gradient, several dtypes or shapes, a
/// dtype other than f32/f64, a strided input, another device. The values are the chain's:
/// `base + x_1·w_1` (or `x_1·w_1`), then `acc + x_j·w_j`, each weight rounded to the dtype.
pub(crate) fn lincomb_rows(
    base: Option<&Tensor>,
    terms: &[(Vec<f64>, &Tensor)],
) -> Result<Option<Tensor>> {
    let Some((_, first)) = terms.first() else {
        return Ok(None);
    };
    let all: Vec<&Tensor> = base
        .into_iter()
        .chain(terms.iter().map(|(_, x)| *x))
        .collect();
    let rows = first.dims().first().copied().unwrap_or(0);
    // Rows without components (a `[B, 0]` state) are left to Candle's ops.
    let qualifies = first.device().is_cpu()
        && rows > 0
        && first.elem_count() > 0
        && terms.iter().all(|(w, _)| w.len() == rows)
        && all.iter().all(|t| {
            t.device().is_cpu()
                && !t.track_op()
                && t.dtype() == first.dtype()
                && t.shape() == first.shape()
        });
    if !qualifies {
        return Ok(None);
    }
    match first.dtype() {
        DType::F32 => combine_rows::<f32>(&all, base.is_some(), terms, rows),
        DType::F64 => combine_rows::<f64>(&all, base.is_some(), terms, rows),
        _ => Ok(None),
    }
}

/// The contiguous CPU slices behind the read guards of `storage_and_layout`, or `None` when
/// one is on another device or strided.
fn cpu_slices<'a, T: WithDType, G: std::ops::Deref<Target = Storage>>(
    guards: &'a [(G, &'a Layout)],
) -> Result<Option<Vec<&'a [T]>>> {
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in guards {
        let (Storage::Cpu(cpu), Some((start, end))) = (&**storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        slices.push(&T::cpu_storage_as_slice(cpu)?[start..end]);
    }
    Ok(Some(slices))
}

fn combine_rows<T: WithDType>(
    all: &[&Tensor],
    has_base: bool,
    terms: &[(Vec<f64>, &Tensor)],
    rows: usize,
) -> Result<Option<Tensor>> {
    let like = all[0];
    let guards: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
    let Some(slices) = cpu_slices::<T, _>(&guards)? else {
        return Ok(None);
    };
    let n = slices[0].len();
    let len = n / rows;
    let (base, xs) = if has_base {
        (Some(slices[0]), &slices[1..])
    } else {
        (None, &slices[..])
    };
    let ws: Vec<Vec<T>> = terms
        .iter()
        .map(|(w, _)| w.iter().map(|v| T::from_f64(*v)).collect())
        .collect();
    let mut out = vec![T::zero(); n];
    for (r, o) in out.chunks_mut(len).enumerate() {
        let range = r * len..(r + 1) * len;
        let (x, w) = (&xs[0][range.clone()], ws[0][r]);
        match base {
            Some(b) => o
                .iter_mut()
                .zip(&b[range.clone()])
                .zip(x)
                .for_each(|((o, b), x)| *o = *b + *x * w),
            None => o.iter_mut().zip(x).for_each(|(o, x)| *o = *x * w),
        }
        for (x, w) in xs[1..].iter().zip(&ws[1..]) {
            let w = w[r];
            o.iter_mut()
                .zip(&x[range.clone()])
                .for_each(|(o, x)| *o += *x * w);
        }
    }
    drop(slices);
    drop(guards);
    Tensor::from_vec(out, like.shape(), &Device::Cpu).map(Some)
}

/// `base + Σ w_i x_i` as a chain of differentiable ops of up to three inputs each (the base
/// or the partial sum, then two terms; three terms without a base), each one pass on the CPU
/// or one launch on CUDA, or `None` where the inputs do not qualify (then the caller builds
/// Candle's chain): several devices, dtypes or shapes, a dtype other than f32/f64, a strided
/// input, a device without the pass. For inputs that need gradients (a solve differentiated
/// straight through): Candle's chain is two ops per term forward. The values are the chain's
/// (the same operations in the same order) and so are the gradients: each term gets the
/// output's gradient times its weight, the base the output's gradient.
pub(crate) fn lincomb_tracked(
    base: Option<&Tensor>,
    terms: &[(f64, &Tensor)],
) -> Result<Option<Tensor>> {
    let Some((_, first)) = terms.first() else {
        return Ok(None);
    };
    let qualifies = base
        .into_iter()
        .chain(terms.iter().map(|(_, x)| *x))
        .all(|t| {
            t.device().same_device(first.device())
                && t.dtype() == first.dtype()
                && t.shape() == first.shape()
                && t.is_contiguous()
        })
        && matches!(first.dtype(), DType::F32 | DType::F64)
        && match first.device() {
            Device::Cpu => true,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => own_cuda_kernel("lincomb"),
            _ => false,
        };
    if !qualifies {
        return Ok(None);
    }
    let mut acc = base.cloned();
    let mut rest = terms;
    while !rest.is_empty() {
        let take = rest.len().min(if acc.is_some() { 2 } else { 3 });
        let (now, later) = rest.split_at(take);
        let op = Combination {
            has_base: acc.is_some(),
            ws: now.iter().map(|(w, _)| *w).collect(),
        };
        let inputs: Vec<&Tensor> = acc.iter().chain(now.iter().map(|(_, x)| *x)).collect();
        acc = Some(match inputs[..] {
            [a] => a.apply_op1(op)?,
            [a, b] => a.apply_op2(b, op)?,
            [a, b, c] => a.apply_op3(b, c, op)?,
            _ => unreachable!("one to three inputs"),
        });
        rest = later;
    }
    Ok(acc)
}

/// One link of [`lincomb_tracked`]: `base + Σ w_j x_j` over its one to three inputs (the
/// base first when `has_base`), contiguous, of one shape, f32 or f64.
struct Combination {
    has_base: bool,
    ws: Vec<f64>,
}

impl Combination {
    fn cpu(
        &self,
        inputs: &[(&candle_core::CpuStorage, &Layout)],
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        fn go<T: WithDType>(
            op: &Combination,
            inputs: &[(&candle_core::CpuStorage, &Layout)],
        ) -> Result<Vec<T>> {
            let slices = inputs
                .iter()
                .map(|(s, l)| match l.contiguous_offsets() {
                    Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
                    None => candle_core::bail!("lincomb: a strided input"),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(combine_slices(&slices, op.has_base, &op.ws))
        }
        let shape = inputs[0].1.shape().clone();
        let out = match inputs[0].0 {
            candle_core::CpuStorage::F32(_) => candle_core::CpuStorage::F32(go(self, inputs)?),
            candle_core::CpuStorage::F64(_) => candle_core::CpuStorage::F64(go(self, inputs)?),
            _ => candle_core::bail!("lincomb: no fused pass for this dtype"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, inputs: &[(&CudaStorage, &Layout)]) -> Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let shape = inputs[0].1.shape().clone();
        let out = match inputs[0].0.dtype() {
            DType::F32 => cuda::combine_storages::<f32>(inputs, self.has_base, &self.ws)?,
            DType::F64 => cuda::combine_storages::<f64>(inputs, self.has_base, &self.ws)?,
            d => candle_core::bail!("lincomb: no CUDA kernel for {d:?}"),
        };
        Ok((out, shape))
    }

    /// Each input's gradient: the base gets `grad`, a term `grad·w` (`grad` itself for a unit
    /// weight); none for an input that tracks no gradient.
    fn grads(&self, inputs: &[&Tensor], grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let weights = self
            .has_base
            .then_some(1.0)
            .into_iter()
            .chain(self.ws.iter().copied());
        inputs
            .iter()
            .zip(weights)
            .map(|(x, w)| {
                Ok(match (x.track_op(), w == 1.0) {
                    (false, _) => None,
                    (true, true) => Some(grad.clone()),
                    (true, false) => Some(grad.affine(w, 0.0)?),
                })
            })
            .collect()
    }
}

impl CustomOp1 for Combination {
    fn name(&self) -> &'static str {
        "lincomb"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        self.cpu(&[(s, l)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda(&[(s, l)])
    }
    fn bwd(&self, a: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[a], grad)?.pop().flatten())
    }
}

impl CustomOp2 for Combination {
    fn name(&self) -> &'static str {
        "lincomb"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &Layout,
        s2: &candle_core::CpuStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda(&[(s1, l1), (s2, l2)])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for Combination {
    fn name(&self) -> &'static str {
        "lincomb"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &Layout,
        s2: &candle_core::CpuStorage,
        l2: &Layout,
        s3: &candle_core::CpuStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2), (s3, l3)])
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
        self.cuda(&[(s1, l1), (s2, l2), (s3, l3)])
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// The parts, each flattened, end to end, in one pass, or `None` where they do not qualify
/// (then the caller uses Candle's `cat`): a part that tracks a gradient, several devices or
/// dtypes, a dtype other than f32/f64, a strided part, a device other than CUDA (on the CPU
/// Candle's `cat` is already one copy per part), no elements at all.
pub(crate) fn concat_fused(parts: &[Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let qualifies = parts.iter().all(|t| {
        t.device().same_device(first.device()) && !t.track_op() && t.dtype() == first.dtype()
    });
    if !qualifies {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    if first.device().is_cuda() && own_cuda_kernel("concat") {
        return match first.dtype() {
            DType::F32 => cuda::concat::<f32>(parts),
            DType::F64 => cuda::concat::<f64>(parts),
            _ => Ok(None),
        };
    }
    Ok(None)
}

/// Whether the CUDA kernel `op` (`lincomb`, `concat`) replaces Candle's ops: yes, unless the
/// environment variable `NODE_CUDA_KERNELS_OFF` (read once per process; comma-separated, as
/// in `node-kernels`) names it or says `all`, for a GPU benchmark to compare the two in one
/// build.
#[cfg(feature = "cuda")]
fn own_cuda_kernel(op: &str) -> bool {
    static OFF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let off = OFF.get_or_init(|| std::env::var("NODE_CUDA_KERNELS_OFF").unwrap_or_default());
    !off.split(',')
        .any(|o| matches!(o.trim(), "all") || o.trim() == op)
}

/// Elements per block: each block is combined term by term while it sits in L1.
const BLOCK: usize = 4096;
/// Below this many elements one thread does it all.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// `all` is the base (when `has_base`) then the terms' tensors; `None` for a strided one.
fn combine<T: WithDType>(
    all: &[&Tensor],
    has_base: bool,
    terms: &[(f64, &Tensor)],
) -> Result<Option<Tensor>> {
    let like = all[0];
    // Hold every read guard while the slices are in use.
    let guards: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
    let Some(slices) = cpu_slices::<T, _>(&guards)? else {
        return Ok(None);
    };
    let ws: Vec<f64> = terms.iter().map(|(w, _)| *w).collect();
    let out = combine_slices(&slices, has_base, &ws);
    drop(slices);
    drop(guards);
    Tensor::from_vec(out, like.shape(), &Device::Cpu).map(Some)
}

/// `base + Σ w_j x_j` over slices of one length: `all` is the base (when `has_base`) then the
/// terms, one weight per term, at least one term.
fn combine_slices<T: WithDType>(all: &[&[T]], has_base: bool, ws: &[f64]) -> Vec<T> {
    let n = all[0].len();
    let (base, xs) = if has_base {
        (Some(all[0]), &all[1..])
    } else {
        (None, all)
    };
    let ws: Vec<T> = ws.iter().map(|w| T::from_f64(*w)).collect();
    let mut out = vec![T::zero(); n];
    let block = |(i, o): (usize, &mut [T])| {
        let at = i * BLOCK;
        let range = at..at + o.len();
        let mut rest = xs.iter().zip(&ws);
        // The first operation exactly as the Candle chain: `b + x` for a unit weight, else
        // `b + w·x`, or `w·x` without a base; then `acc + w·x` term by term.
        match base {
            Some(b) => {
                let (x, w) = rest.next().expect("at least one term");
                let (b, x) = (&b[range.clone()], &x[range.clone()]);
                if *w == T::one() {
                    o.iter_mut()
                        .zip(b)
                        .zip(x)
                        .for_each(|((o, b), x)| *o = *b + *x);
                } else {
                    o.iter_mut()
                        .zip(b)
                        .zip(x)
                        .for_each(|((o, b), x)| *o = *b + *x * *w);
                }
            }
            None => {
                let (x, w) = rest.next().expect("at least one term");
                o.iter_mut()
                    .zip(&x[range.clone()])
                    .for_each(|(o, x)| *o = *x * *w);
            }
        }
        for (x, w) in rest {
            o.iter_mut()
                .zip(&x[range.clone()])
                .for_each(|(o, x)| *o += *x * *w);
        }
    };
    if n >= PARALLEL_MIN_ELEMS {
        // On Candle's own CPU pool, as its element-wise ops (Rayon's would add threads that
        // compete with Candle's spinning ones for the cores). Each block sits behind a lock
        // that its one visitor takes uncontended: the blocks are handed out as indices.
        let blocks: Vec<_> = out.chunks_mut(BLOCK).map(std::sync::Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(blocks.len(), |range| {
            for i in range {
                let mut o = blocks[i].lock().unwrap_or_else(|e| e.into_inner());
                block((i, &mut o));
            }
        });
    } else {
        out.chunks_mut(BLOCK).enumerate().for_each(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::rk::{lincomb, lincomb_chain};
    use candle_core::{DType, Device, Result, Shape, Tensor, Var};
    use std::cell::Cell;

    /// Seeded normal inputs, new numbers on every call: the same on every run, so a failure
    /// can be replayed (Candle's CPU generator cannot be seeded).
    struct Draws(Cell<u64>);

    impl Draws {
        fn randn(&self, std: f32, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
            let shape = shape.into();
            let id = self.0.replace(self.0.get() + 1);
            let v: Vec<f32> = crate::brownian::normals(0x5eed, id, 0, shape.elem_count())
                .map(|z| std * z as f32)
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
    }

    /// Equal values, bit for bit (but for the sign of zero).
    fn same(a: &Tensor, b: &Tensor) -> Result<bool> {
        let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        Ok(a.flatten_all()?.to_vec1::<f64>()? == b.flatten_all()?.to_vec1::<f64>()?)
    }

    /// The fused path gives the Candle chain's values exactly, with and without a base, with a
    /// unit first weight, f32 and f64, small and threaded sizes (on CUDA also one larger than
    /// a launch's grid), and more terms than one CUDA launch takes; strided inputs take the
    /// chain.
    fn fused_matches_the_candle_chain(dev: &Device) -> Result<()> {
        let draws = Draws(Cell::new(3000));
        let mut sizes = vec![1usize, 7, 4096 * 3 + 5, 1 << 17];
        if dev.is_cuda() {
            sizes.push((1 << 22) + 3);
        }
        for dtype in [DType::F32, DType::F64] {
            for &n in &sizes {
                let t = |s: f32| draws.randn(s, n, dev)?.to_dtype(dtype);
                let (b, x1, x2, x3) = (t(1.0)?, t(2.0)?, t(0.5)?, t(3.0)?);
                for (base, w0) in [(Some(&b), 1.0), (Some(&b), 0.3), (None, -0.7)] {
                    let terms = [(w0, &x1), (0.0, &x2), (1e-3, &x2), (-2.5, &x3)];
                    let fused = lincomb(base, terms)?;
                    let nonzero = [(w0, &x1), (1e-3, &x2), (-2.5, &x3)];
                    assert!(
                        super::lincomb_fused(base, &nonzero)?.is_some(),
                        "fused path taken"
                    );
                    let chain = lincomb_chain(base, &nonzero)?;
                    assert!(
                        same(&fused, &chain)?,
                        "{dtype:?} n {n} base {} w0 {w0}",
                        base.is_some()
                    );
                }
            }
            // 20 terms: on CUDA a launch of 16 and one that goes on from its partial sum.
            let n = 1000;
            let xs: Vec<Tensor> = (0..20)
                .map(|_| draws.randn(1.0, n, dev)?.to_dtype(dtype))
                .collect::<Result<_>>()?;
            let ws: Vec<f64> = (0..20).map(|i| 0.1 * i as f64 - 0.75).collect();
            let terms: Vec<(f64, &Tensor)> = ws.iter().copied().zip(&xs).collect();
            let b = draws.randn(1.0, n, dev)?.to_dtype(dtype)?;
            let fused = lincomb(Some(&b), terms.iter().copied())?;
            assert!(same(&fused, &lincomb_chain(Some(&b), &terms)?)?);
        }
        // A strided input falls back to the chain, same values.
        let m = draws.randn(1.0, (5, 3), dev)?;
        let (mt, other) = (m.t()?, draws.randn(1.0, (3, 5), dev)?);
        assert!(super::lincomb_fused(Some(&other), &[(0.5, &mt)])?.is_none());
        assert!(super::lincomb_tracked(Some(&other), &[(0.5, &mt)])?.is_none());
        let out = lincomb(Some(&other), [(0.5, &mt)])?;
        let want = (&other + (mt.affine(0.5, 0.0))?)?;
        assert_eq!(out.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        Ok(())
    }

    /// With inputs that track gradients, the combination is a chain of differentiable ops of
    /// up to three inputs (1 to 20 terms, with and without a base, unit and other first
    /// weights, some inputs untracked), and both its values and every input's gradient equal
    /// those through Candle's chain, exactly, f32 and f64.
    fn tracked_matches_the_candle_chain(dev: &Device) -> Result<()> {
        let draws = Draws(Cell::new(2000));
        for dtype in [DType::F32, DType::F64] {
            let n = 4096 * 3 + 5;
            let t = || draws.randn(1.0, n, dev)?.to_dtype(dtype);
            let weight = t()?;
            for count in [1usize, 2, 3, 4, 5, 7, 20] {
                for (has_base, w0) in [(true, 1.0), (true, -0.3), (false, 0.6)] {
                    // Every third input untracked.
                    let inputs: Vec<Var> = (0..=count)
                        .map(|_| Var::from_tensor(&t()?))
                        .collect::<Result<_>>()?;
                    let plain: Vec<Tensor> = (0..=count).map(|_| t()).collect::<Result<_>>()?;
                    let pick = |i: usize| {
                        if i % 3 == 2 {
                            &plain[i]
                        } else {
                            inputs[i].as_tensor()
                        }
                    };
                    let base = has_base.then(|| pick(0));
                    let terms: Vec<(f64, &Tensor)> = (1..=count)
                        .map(|i| (if i == 1 { w0 } else { 0.37 * i as f64 - 1.1 }, pick(i)))
                        .collect();
                    let ours = lincomb(base, terms.iter().copied())?;
                    assert!(
                        super::lincomb_tracked(base, &terms)?.is_some(),
                        "the differentiable ops are taken"
                    );
                    let chain = lincomb_chain(base, &terms)?;
                    let what = format!("{dtype:?}, {count} terms, base {has_base}, w0 {w0}");
                    assert!(same(&ours, &chain)?, "values, {what}");
                    let g1 = (&ours * &weight)?.sum_all()?.backward()?;
                    let g2 = (&chain * &weight)?.sum_all()?.backward()?;
                    for (i, v) in inputs.iter().enumerate() {
                        let used = (i > 0 || has_base) && i % 3 != 2;
                        match (g1.get(v.as_tensor()), g2.get(v.as_tensor())) {
                            (Some(a), Some(b)) => assert!(same(a, b)?, "gradient {i}, {what}"),
                            (None, None) => assert!(!used, "no gradient for input {i}, {what}"),
                            _ => panic!("gradient {i} on one side only, {what}"),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `lincomb_rows` gives the chain's values exactly (a broadcast product and an addition per
    /// term), with and without a base, a weight zero in some rows, f32 and f64, rank 1 to 3;
    /// tracked or strided inputs and other devices are left to the chain.
    #[test]
    fn rows_match_the_chain() -> Result<()> {
        let dev = &Device::Cpu;
        let draws = Draws(Cell::new(4000));
        for dtype in [DType::F32, DType::F64] {
            for shape in [vec![5usize], vec![4, 3], vec![3, 2, 5]] {
                let rows = shape[0];
                let xs: Vec<Tensor> = (0..4)
                    .map(|_| draws.randn(1.0, shape.as_slice(), dev)?.to_dtype(dtype))
                    .collect::<Result<_>>()?;
                let ws: Vec<Vec<f64>> = (0..4)
                    .map(|j| {
                        (0..rows)
                            .map(|r| {
                                if r == j {
                                    0.0
                                } else {
                                    0.3 * (r + j) as f64 - 0.7
                                }
                            })
                            .collect()
                    })
                    .collect();
                let terms: Vec<(Vec<f64>, &Tensor)> = ws.iter().cloned().zip(&xs).collect();
                let mut col = vec![1; shape.len()];
                col[0] = rows;
                let chain = |base: Option<&Tensor>| -> Result<Tensor> {
                    let mut acc: Option<Tensor> = None;
                    for (w, x) in &terms {
                        let w = Tensor::from_slice(w, rows, dev)?
                            .to_dtype(dtype)?
                            .reshape(col.as_slice())?;
                        let term = x.broadcast_mul(&w)?;
                        acc = Some(match (acc, base) {
                            (Some(a), _) => (a + term)?,
                            (None, Some(b)) => (b + term)?,
                            (None, None) => term,
                        });
                    }
                    Ok(acc.expect("terms"))
                };
                let base = draws.randn(1.0, shape.as_slice(), dev)?.to_dtype(dtype)?;
                for b in [Some(&base), None] {
                    let fused = super::lincomb_rows(b, &terms)?.expect("the fused pass");
                    assert!(same(&fused, &chain(b)?)?, "{dtype:?} {shape:?}");
                }
            }
        }
        let x = Var::from_tensor(&Tensor::ones((2, 2), DType::F32, dev)?)?;
        let w = vec![1.0, 2.0];
        assert!(super::lincomb_rows(None, &[(w.clone(), x.as_tensor())])?.is_none());
        let strided = Tensor::ones((2, 2), DType::F32, dev)?.t()?;
        assert!(super::lincomb_rows(None, &[(w, &strided)])?.is_none());
        Ok(())
    }

    candle_core::test_device!(
        tracked_matches_the_candle_chain,
        tracked_matches_cpu,
        tracked_matches_cuda,
        tracked_matches_metal
    );

    /// `concat_flat` equals Candle's `cat` of the flattened parts: parts of several shapes,
    /// empty ones among them, more than one CUDA launch takes, f32 and f64; on CUDA the fused
    /// path is taken. A tracked part takes `cat` and gets its gradient; a strided part takes
    /// `cat` too; an empty list and mixed dtypes are errors.
    fn concat_matches_cat(dev: &Device) -> Result<()> {
        let draws = Draws(Cell::new(1000));
        use crate::rk::concat_flat;
        let flat = |v: &Tensor| v.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
        for dtype in [DType::F32, DType::F64] {
            let shapes: [&[usize]; 6] = [&[2, 3, 4], &[0], &[64], &[5, 0, 2], &[3, 3, 3, 3], &[1]];
            for count in [1, 6, 23] {
                let parts: Vec<Tensor> = (0..count)
                    .map(|i| draws.randn(1.0, shapes[i % 6], dev)?.to_dtype(dtype))
                    .collect::<Result<_>>()?;
                let want = Tensor::cat(
                    &parts
                        .iter()
                        .map(Tensor::flatten_all)
                        .collect::<Result<Vec<_>>>()?,
                    0,
                )?;
                let got = concat_flat(&parts)?;
                assert_eq!(got.dims(), want.dims());
                assert_eq!(flat(&got)?, flat(&want)?, "{dtype:?}, {count} parts");
                let fused = super::concat_fused(&parts)?;
                assert_eq!(fused.is_some(), dev.is_cuda() && want.elem_count() > 0);
            }
        }
        // A part that tracks a gradient: Candle's cat, and the gradient reaches it.
        let v = Var::from_tensor(&draws.randn(1.0, (2, 2), dev)?)?;
        let other = draws.randn(1.0, 3, dev)?;
        let parts = [other.clone(), v.as_tensor().clone()];
        assert!(super::concat_fused(&parts)?.is_none());
        let got = concat_flat(&parts)?;
        assert!(got.track_op());
        let w = Tensor::arange(0f32, 7.0, dev)?;
        let g = (got * &w)?.sum_all()?.backward()?;
        let g = g
            .get(v.as_tensor())
            .expect("a gradient for the tracked part");
        assert_eq!(g.flatten_all()?.to_vec1::<f32>()?, [3.0, 4.0, 5.0, 6.0]);
        // A strided part: Candle's cat, in logical order.
        let m = Tensor::arange(0f32, 6.0, dev)?.reshape((2, 3))?;
        let got = concat_flat(&[m.t()?, other.clone()])?;
        assert_eq!(
            got.narrow(0, 0, 6)?.to_vec1::<f32>()?,
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert!(concat_flat(&[]).is_err());
        assert!(concat_flat(&[other.clone(), other.to_dtype(DType::F64)?]).is_err());
        Ok(())
    }

    candle_core::test_device!(
        concat_matches_cat,
        concat_matches_cpu,
        concat_matches_cuda,
        concat_matches_metal
    );

    candle_core::test_device!(
        fused_matches_the_candle_chain,
        fused_matches_cpu,
        fused_matches_cuda,
        fused_matches_metal
    );
}
