//! The allocator setting tensor workloads want on Linux.
//!
//! Candle allocates a new buffer for every op's output, and a training step frees and
//! allocates the same large sizes over and over. glibc's `malloc` hands blocks above its
//! mmap threshold (at most 32 MiB, e.g. the unfolded input of the MNIST models' first
//! stride-2 convolution, 88 MiB) straight to `mmap` and returns them with `munmap` when
//! freed, and gives back the top of the heap above its trim threshold. Every such buffer is
//! then page-faulted in and zeroed by the kernel again, and every `munmap` in a process with
//! several threads costs a TLB shoot-down on each core. On the 2-core development machine
//! (a virtual machine, where those interrupts are dear) that was more than half of the time
//! of a convolution forward and backward pass at 128×64×26×26, and a quarter of the MNIST
//! ResNet's training step.
//!
//! [`keep_freed_memory`] turns both off for the process, so freed buffers are reused. The
//! resident size then stays at the high-water mark instead of shrinking between steps. It is a
//! process-wide setting, so this crate never makes it on its own: binaries call it first
//! thing in `main`. The same effect without code: `MALLOC_MMAP_MAX_=0
//! MALLOC_TRIM_THRESHOLD_=2000000000` in the environment.
//!
//! On CUDA, [`skip_unused_cuda_events`] is the counterpart for device buffers: it stops the
//! creation and destruction of two CUDA events with every buffer, which a single-stream
//! program never uses.

/// Makes the C allocator keep freed memory for reuse instead of returning it to the
/// operating system (glibc: no `mmap`-backed blocks, no heap trimming).
///
/// Call it at the start of `main`, before threads allocate. Returns whether the setting was
/// made: `false` on platforms other than Linux with glibc (where it does nothing) or when
/// glibc refuses it.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes malloc's parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Stops cudarc, under Candle, from creating two CUDA events with every buffer allocated on
/// the CUDA device `dev` and destroying them with it, where they would go unused.
///
/// cudarc gives every buffer a read and a write event so that it can order uses of the buffer
/// across streams; it records and waits on them only once the device's context runs more than
/// one stream. Candle's CUDA device runs one (the thread's default stream), so in a Candle
/// program the events are made and destroyed for nothing: four driver calls per tensor, and
/// a training step creates thousands of tensors. This turns that off for buffers allocated
/// from now on (`CudaDevice::disable_event_tracking`).
///
/// Returns whether it did: `false` for a device other than CUDA, without the `cuda` feature,
/// and where the context already runs several streams (there the events order the streams'
/// work, and are kept).
///
/// Call it once, after creating the device, in a program that does not create further CUDA
/// streams on its context: buffers allocated without events are not ordered between streams
/// created later.
pub fn skip_unused_cuda_events(dev: &candle_core::Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        let Ok(cuda) = dev.as_cuda_device() else {
            return false;
        };
        if cuda.cuda_stream().context().is_in_multi_stream_mode() {
            return false;
        }
        // SAFETY: the context runs one stream, on which every use of a buffer is ordered by
        // the stream itself; the events would be recorded only with several streams, which
        // the caller promises not to create (see above).
        unsafe { cuda.disable_event_tracking() };
        true
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = dev;
        false
    }
}
