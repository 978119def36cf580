//! In-place parameter updates for SGD with momentum: each one pass over the data, written into
//! the tensor it updates.
//!
//! Written with Candle's ops, one SGD step costs five operations per parameter (a scaling of
//! the buffer, an addition, a scaling by the learning rate, a subtraction, the copy into the
//! variable), each a new tensor and on a GPU a kernel launch: for the paper's ResNet, with 50
//! parameter tensors, more launches than its whole backward pass. Here it is two (the buffer's
//! update, the parameter's) and no new tensor, on the CPU and, with the `cuda` feature, on
//! CUDA (`NODE_CUDA_KERNELS_OFF=optim` turns that off). Elsewhere, and for dtypes other than
//! f32 and f64 or strided tensors, the same arithmetic runs as Candle ops and is written back
//! with `slice_set`.
//!
//! The arithmetic is Candle's op-by-op arithmetic, in the same order and with the same
//! roundings (no fused multiply-add), so the fused and unfused paths give the same bits.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};

/// `buf ← momentum·buf + (grad + weight_decay·param)`, in place on `buf`: the momentum
/// buffer's update of PyTorch's `torch.optim.SGD` (the weight decay's term is left out when
/// `weight_decay` is 0). A buffer of zeros gives PyTorch's first step (`buf = grad + λ·param`).
///
/// # Errors
/// Tensors of different shapes, dtypes or devices; `buf` not contiguous, or (where the fused
/// kernels run) sharing storage with `grad` or `param`.
pub fn sgd_momentum_update(
    buf: &Tensor,
    grad: &Tensor,
    param: &Tensor,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    check("sgd_momentum_update", buf, &[grad, param])?;
    let op = Update {
        momentum,
        weight_decay,
    };
    if fused(&[buf, grad, param]) {
        return buf.inplace_op3(grad, param, &op);
    }
    let d = decayed(grad, param, weight_decay)?;
    write_into(buf, &(buf.affine(momentum, 0.0)? + d)?)
}

/// `param ← param − lr·(dir + weight_decay·param)`, in place on `param`: SGD's descent along
/// `dir` (the momentum buffer, or the gradient without momentum; the weight decay's term is
/// left out when `weight_decay` is 0).
///
/// # Errors
/// As [`sgd_momentum_update`]: `param` and `dir` must match, and `param` be contiguous and
/// not share storage with `dir`.
pub fn sgd_descend(param: &Tensor, dir: &Tensor, lr: f64, weight_decay: f64) -> Result<()> {
    check("sgd_descend", param, &[dir])?;
    let op = Descend { lr, weight_decay };
    if fused(&[param, dir]) {
        return param.inplace_op2(dir, &op);
    }
    let d = decayed(dir, param, weight_decay)?;
    write_into(param, &(param - d.affine(lr, 0.0)?)?)
}

/// `dir + weight_decay·param` in Candle ops, or `dir` itself when `weight_decay` is 0.
fn decayed(dir: &Tensor, param: &Tensor, weight_decay: f64) -> Result<Tensor> {
    if weight_decay == 0.0 {
        return Ok(dir.clone());
    }
    dir + param.affine(weight_decay, 0.0)?
}

/// Copies `src` into the storage of `dst` (contiguous, of the same shape).
fn write_into(dst: &Tensor, src: &Tensor) -> Result<()> {
    dst.flatten_all()?.slice_set(&src.flatten_all()?, 0, 0)
}

/// The checks of both updates: `dst` contiguous, and every tensor of its shape, dtype and
/// device. (An operand that shares storage with `dst` is refused by Candle's in-place ops.)
fn check(op: &str, dst: &Tensor, srcs: &[&Tensor]) -> Result<()> {
    if !dst.is_contiguous() {
        candle_core::bail!("{op}: the tensor to update must be contiguous");
    }
    for s in srcs {
        if s.shape() != dst.shape() || s.dtype() != dst.dtype() {
            candle_core::bail!(
                "{op}: {:?} {:?} against {:?} {:?}",
                s.dims(),
                s.dtype(),
                dst.dims(),
                dst.dtype()
            );
        }
        if !s.device().same_device(dst.device()) {
            candle_core::bail!("{op}: tensors on different devices");
        }
    }
    Ok(())
}

/// Whether this module's kernels apply: f32 or f64, all contiguous, on the CPU or (with the
/// `cuda` feature, not turned off) on CUDA.
fn fused(ts: &[&Tensor]) -> bool {
    let dev = ts[0].device();
    (dev.is_cpu()
        || (cfg!(feature = "cuda") && dev.is_cuda() && crate::util::own_cuda_kernel("optim")))
        && matches!(ts[0].dtype(), DType::F32 | DType::F64)
        && ts.iter().all(|t| t.is_contiguous())
}

/// `[buf, grad, param]` in place on the buffer.
#[derive(Clone, Copy, Debug)]
struct Update {
    momentum: f64,
    weight_decay: f64,
}

impl Update {
    #[inline]
    fn apply<T: WithDType>(&self, b: &mut [T], g: &[T], p: &[T]) {
        let mu = T::from_f64(self.momentum);
        if self.weight_decay != 0.0 {
            let wd = T::from_f64(self.weight_decay);
            for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                *b = *b * mu + (g + p * wd);
            }
        } else {
            for (b, &g) in b.iter_mut().zip(g) {
                *b = *b * mu + g;
            }
        }
    }
}

/// `[param, dir]` in place on the parameter.
#[derive(Clone, Copy, Debug)]
struct Descend {
    lr: f64,
    weight_decay: f64,
}

impl Descend {
    #[inline]
    fn apply<T: WithDType>(&self, p: &mut [T], d: &[T]) {
        let lr = T::from_f64(self.lr);
        if self.weight_decay != 0.0 {
            let wd = T::from_f64(self.weight_decay);
            for (p, &d) in p.iter_mut().zip(d) {
                *p = *p - (d + *p * wd) * lr;
            }
        } else {
            for (p, &d) in p.iter_mut().zip(d) {
                *p -= d * lr;
            }
        }
    }
}

/// Where the elements under `l` lie in its storage: contiguous, or an error.
pub(crate) fn span(l: &Layout) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => candle_core::bail!("node-kernels optim: a strided operand"),
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "node-sgd-momentum-update"
    }

    fn cpu_fwd(
        &self,
        b: &mut CpuStorage,
        lb: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        p: &CpuStorage,
        lp: &Layout,
    ) -> Result<()> {
        match (b, g, p) {
            (CpuStorage::F32(b), CpuStorage::F32(g), CpuStorage::F32(p)) => {
                let (rb, rg, rp) = (span(lb)?, span(lg)?, span(lp)?);
                self.apply(&mut b[rb], &g[rg], &p[rp]);
            }
            (CpuStorage::F64(b), CpuStorage::F64(g), CpuStorage::F64(p)) => {
                let (rb, rg, rp) = (span(lb)?, span(lg)?, span(lp)?);
                self.apply(&mut b[rb], &g[rg], &p[rp]);
            }
            _ => candle_core::bail!("{}: f32 or f64 of one dtype", self.name()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        b: &mut CudaStorage,
        lb: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        p: &CudaStorage,
        lp: &Layout,
    ) -> Result<()> {
        let scalars = [self.momentum, self.weight_decay];
        crate::cuda::optim::launch("node_sgd_update", scalars, (b, lb), &[(g, lg), (p, lp)])
    }
}

impl InplaceOp2 for Descend {
    fn name(&self) -> &'static str {
        "node-sgd-descend"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, d: &CpuStorage, ld: &Layout) -> Result<()> {
        match (p, d) {
            (CpuStorage::F32(p), CpuStorage::F32(d)) => {
                let (rp, rd) = (span(lp)?, span(ld)?);
                self.apply(&mut p[rp], &d[rd]);
            }
            (CpuStorage::F64(p), CpuStorage::F64(d)) => {
                let (rp, rd) = (span(lp)?, span(ld)?);
                self.apply(&mut p[rp], &d[rd]);
            }
            _ => candle_core::bail!("{}: f32 or f64 of one dtype", self.name()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &mut CudaStorage,
        lp: &Layout,
        d: &CudaStorage,
        ld: &Layout,
    ) -> Result<()> {
        let scalars = [self.lr, self.weight_decay];
        crate::cuda::optim::launch("node_sgd_descend", scalars, (p, lp), &[(d, ld)])
    }
}
