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
