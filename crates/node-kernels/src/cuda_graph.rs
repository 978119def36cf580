//! A step of work (a training step: forward, backward, update) recorded once as a CUDA graph
//! and replayed with one launch.
//!
//! On a GPU, a small model's training step is bound by the host: Candle launches every op
//! from the CPU, with an allocation, a launch and a free each, and the GPU waits between the
//! small kernels. A CUDA graph records the whole sequence of launches, allocations and frees
//! once; each replay is then one call from the host. [`GraphStep`] does this for a step
//! function of fixed-shape inputs, using the support Candle 0.11 has for it (its cache of
//! the small uploads of shapes and strides: `CudaDevice::enable_cuda_graph_htod_cache`).
//!
//! What a step must do to be recorded:
//! - read nothing back to the host (no `to_scalar`, `to_vec*`; a fixed-step solve with
//!   `check_finite(false)`), and take no decision from device values: a replay repeats the
//!   recorded launches, so an adaptive solver's step choices cannot be replayed;
//! - upload nothing from the host that the warm-up call did not upload with the same content;
//! - not free a buffer that existed before the step (the replay would free it again): update
//!   parameters and optimizer state in place, and drop the previous step's results before;
//! - run on the device's own stream only.
//!
//! A step that breaks one of these fails to record, with an error; nothing is left half done
//! on the device, and the caller can go on without a graph.

use candle_core::{Result, Tensor};

/// A step function recorded as a CUDA graph, with the buffers it reads its inputs from and
/// the tensors it returned. See the [module documentation](self) for what a step may do.
pub struct GraphStep {
    // Dropped in this order: the outputs (memory the graph allocated, freed outside it, as
    // CUDA allows) before the graph.
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    #[cfg(feature = "cuda")]
    graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
    /// Whether the graph has run: until then the outputs' memory is not allocated.
    launched: bool,
}

impl Drop for GraphStep {
    fn drop(&mut self) {
        if !self.launched {
            // Freeing memory the graph never allocated would fail: keep the handles.
            std::mem::forget(std::mem::take(&mut self.outputs));
        }
    }
}

impl GraphStep {
    /// Runs `step` once on copies of `inputs` (a real step: its effects on parameters are
    /// kept, and its outputs returned), then records a second call of `step` into a CUDA
    /// graph without running it. [`GraphStep::run`] replays the recording on new inputs.
    ///
    /// The outputs are the first call's; `step` must return the same number each time.
    ///
    /// # Errors
    /// No inputs, inputs on a device other than CUDA (or a build without the `cuda`
    /// feature), an error of `step`, and a step that cannot be recorded (see the module
    /// documentation); in the last case the graph is discarded and the device is usable.
    pub fn capture(
        inputs: &[Tensor],
        mut step: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<(Self, Vec<Tensor>)> {
        let Some(first) = inputs.first() else {
            candle_core::bail!("GraphStep::capture: no inputs");
        };
        if !first.device().is_cuda() {
            candle_core::bail!(
                "GraphStep::capture: CUDA graphs need a CUDA device, got {:?}",
                first.device().location()
            );
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = &mut step;
            candle_core::bail!("GraphStep::capture: node-kernels was built without `cuda`");
        }
        #[cfg(feature = "cuda")]
        {
            cuda::capture(first.device(), inputs, &mut step)
        }
    }

    /// Copies `inputs` into the recorded step's input buffers and replays the step: one
    /// launch. Returns the step's outputs, which each run overwrites (copy what you keep).
    ///
    /// # Errors
    /// Inputs of other shapes, dtypes or devices than the recorded ones (a partial batch:
    /// run that step without the graph), and the launch's errors.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<&[Tensor]> {
        if inputs.len() != self.inputs.len() {
            candle_core::bail!(
                "GraphStep::run: {} inputs, recorded with {}",
                inputs.len(),
                self.inputs.len()
            );
        }
        for (buf, x) in self.inputs.iter().zip(inputs) {
            if x.shape() != buf.shape() || x.dtype() != buf.dtype() {
                candle_core::bail!(
                    "GraphStep::run: input {:?} {:?}, recorded with {:?} {:?}",
                    x.dims(),
                    x.dtype(),
                    buf.dims(),
                    buf.dtype()
                );
            }
        }
        for (buf, x) in self.inputs.iter().zip(inputs) {
            // In place, on the stream: after the previous replay has read the buffer.
            buf.slice_set(&x.contiguous()?, 0, 0)?;
        }
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::WrapErr;
            self.graph.launch().w()?;
        }
        self.launched = true;
        Ok(&self.outputs)
    }

    /// The outputs of the last run (unwritten before the first run: the recording does not
    /// run the step).
    pub fn outputs(&self) -> &[Tensor] {
        &self.outputs
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph, DriverError};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{Device, Result, Tensor};

    use super::GraphStep;

    pub(super) fn capture(
        dev: &Device,
        inputs: &[Tensor],
        step: &mut dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>>,
    ) -> Result<(GraphStep, Vec<Tensor>)> {
        let cuda = dev.as_cuda_device()?;
        if let Some(x) = inputs.iter().find(|x| !x.device().same_device(dev)) {
            candle_core::bail!(
                "GraphStep::capture: inputs on several devices ({:?})",
                x.device().location()
            );
        }
        // The buffers the graph reads, allocated outside it.
        let bufs = inputs
            .iter()
            .map(|x| x.detach().copy())
            .collect::<Result<Vec<_>>>()?;
        let stream = cuda.cuda_stream();
        // Uploads of the warm-up are kept on the device; the recording copies from there.
        let _cache = cuda.enable_cuda_graph_htod_cache();
        let warm = step(&bufs)?
            .into_iter()
            .map(|t| t.detach())
            .collect::<Vec<_>>();
        stream.synchronize().w()?;
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .w()?;
        let recorded = step(&bufs);
        // cudarc keeps the errors of calls that cannot return one (a free in a drop) and
        // returns them from the next call, which would be the end of the capture and leave
        // the stream capturing: take them first. End the capture in every case.
        let pending = stream.context().check_err();
        let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        let ended = stream.end_capture(flags);
        let outputs = match recorded {
            Ok(out) => out.into_iter().map(|t| t.detach()).collect::<Vec<_>>(),
            Err(e) => return Err(failed(cuda, ended, vec![], e.to_string())),
        };
        let graph = match (pending, ended) {
            (Ok(()), Ok(Some(g))) => g,
            (Err(e), ended) => return Err(failed(cuda, ended, outputs, e.to_string())),
            (_, Ok(None)) => {
                return Err(failed(cuda, Ok(None), outputs, "nothing launched".into()))
            }
            (_, Err(e)) => return Err(failed(cuda, Ok(None), outputs, e.to_string())),
        };
        if outputs.len() != warm.len() {
            let why = format!("{} outputs, then {}", warm.len(), outputs.len());
            return Err(failed(cuda, Ok(Some(graph)), outputs, why));
        }
        graph.upload().w()?;
        stream.synchronize().w()?;
        Ok((
            GraphStep {
                inputs: bufs,
                outputs,
                graph,
                launched: false,
            },
            warm,
        ))
    }

    /// The error of a recording that failed, after cleaning up: the graph (if any) dropped,
    /// the recorded tensors forgotten (their memory was never allocated: freeing it would
    /// fail), and the errors cudarc kept from the recording cleared, so that the device
    /// works on.
    fn failed(
        cuda: &CudaDevice,
        graph: std::result::Result<Option<CudaGraph>, DriverError>,
        outputs: Vec<Tensor>,
        why: String,
    ) -> candle_core::Error {
        drop(graph);
        std::mem::forget(outputs);
        let _ = cuda.cuda_stream().context().check_err();
        candle_core::Error::Msg(format!(
            "GraphStep::capture: the step cannot be recorded as a CUDA graph ({why}); it must \
             not read back to the host, upload data the warm-up did not, or free buffers made \
             before it"
        ))
    }
}
