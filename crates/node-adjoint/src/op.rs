//! The Candle op of every differentiated solve in this crate: its forward returns the
//! solution computed beforehand (a copy of its storage), and its backward runs the solve's
//! own gradient computation (the adjoint, a replay, a walk back).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Result, Shape,
    Storage, Tensor,
};
use std::sync::Arc;

/// A solve whose solution is known and whose gradients the op's backward asks for.
pub(crate) trait Precomputed: Send + Sync + 'static {
    /// The op's name.
    const NAME: &'static str;

    /// The solution, contiguous: the op's value.
    fn solution(&self) -> &Tensor;

    /// From the gradient of the solution: the gradients of the op's first input (the initial
    /// state), of its second (the flat parameters, `None` without any) and, when `times`, of
    /// its third (the output times).
    fn gradients(
        &self,
        grad: &Tensor,
        times: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)>;
}

/// The op: on `y0`, `(y0, θ)` or `(y0, θ, ts)`.
pub(crate) struct SolveOp<T>(pub(crate) Arc<T>);

impl<T: Precomputed> SolveOp<T> {
    fn result<S: BackendStorage>(
        &self,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let (storage, layout) = self.0.solution().storage_and_layout();
        match pick(&storage) {
            Some(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            None => {
                candle_core::bail!("the solution lives on another device than the op's input")
            }
        }
    }
}

fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}
fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}
fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(s) => Some(s),
        _ => None,
    }
}

impl<T: Precomputed> CustomOp1 for SolveOp<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.result(cpu)
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.result(cuda)
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.result(metal)
    }
    fn bwd(&self, _y0: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.gradients(grad, false)?.0))
    }
}

impl<T: Precomputed> CustomOp2 for SolveOp<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.result(cpu)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.result(cuda)
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.result(metal)
    }
    fn bwd(
        &self,
        _y0: &Tensor,
        _theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta, _) = self.0.gradients(grad, false)?;
        Ok((Some(gy0), gtheta))
    }
}

impl<T: Precomputed> CustomOp3 for SolveOp<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.result(cpu)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.result(cuda)
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.result(metal)
    }
    fn bwd(
        &self,
        _y0: &Tensor,
        theta: &Tensor,
        ts: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta, gt) = self.0.gradients(grad, true)?;
        let gtheta = match gtheta {
            Some(g) => g,
            None => theta.zeros_like()?, // the placeholder of a parameter-free field
        };
        let gt = match gt {
            Some(g) => Some(g.to_device(ts.device())?.to_dtype(ts.dtype())?),
            None => None,
        };
        Ok((Some(gy0), Some(gtheta), gt))
    }
}
