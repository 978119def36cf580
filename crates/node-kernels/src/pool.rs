//! Parallel loops on Candle's own CPU thread pool.
//!
//! Candle (0.11) runs its element-wise ops on a pool of its own (`candle_core::utils::
//! barrier_pool`: the calling thread and `n − 1` workers, which spin for a while after each
//! op before they sleep). Kernels run on Rayon's global pool had two more threads wake
//! between two of Candle's ops while Candle's workers were still spinning: on a 2-core
//! machine three or four busy threads on two cores, and a kernel's static split of the work
//! then waits on whichever thread the OS set aside. Running the kernels on the same pool keeps
//! one thread per core and reuses the spinning workers instead of competing with them.
//!
//! Each loop hands out indices `0..n` (a shared cursor, so a fast thread takes over a slow
//! one's share); what a kernel computes for an index never depends on the thread that ran it.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::utils::barrier_pool;

/// How many threads the loops below run on (the calling thread included).
pub(crate) fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

thread_local! {
    /// Whether this thread is running a loop's body (Candle's pool marks its workers only,
    /// not the calling thread that works beside them).
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside a loop's body until dropped (also when `f` panics).
struct Inside(bool);

impl Inside {
    fn enter() -> Self {
        Self(IN_LOOP.replace(true))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        IN_LOOP.set(self.0);
    }
}

/// Calls `f(i)` for every `i` in `0..n`, on all of the pool's threads when `parallel`
/// (on the calling thread otherwise). A loop inside a loop's body runs on its thread: the
/// pool takes one loop at a time, and the calling thread of the outer one would otherwise
/// wait on itself.
///
/// The threads take one index at a time: the loops here are over few, large items (a
/// convolution's blocks of images, a product's bands, an activation's quarters), where
/// Candle's `execute_chunked` hands out two or more at a time once there are more than 8 per
/// thread, and the last grab left a thread idle for two blocks of a convolution (22 blocks of
/// the ResNet's 6×6 convs: 12 against 10 on 2 threads).
pub(crate) fn for_each(n: usize, parallel: bool, f: impl Fn(usize) + Sync) {
    for_each_grabbing(n, 1, parallel, f)
}

/// [`for_each`], the threads taking `grab` consecutive indices at a time (for many small
/// items, where one shared counter per item would cost as much as the item).
fn for_each_grabbing(n: usize, grab: usize, parallel: bool, f: impl Fn(usize) + Sync) {
    if parallel && n > 1 && !IN_LOOP.get() {
        let grab = grab.max(1);
        let cursor = AtomicUsize::new(0);
        barrier_pool().execute(|_| {
            let _inside = Inside::enter();
            loop {
                let start = cursor.fetch_add(grab, Ordering::Relaxed);
                if start >= n {
                    break;
                }
                (start..n.min(start + grab)).for_each(&f);
            }
        });
    } else {
        (0..n).for_each(f);
    }
}

/// A base pointer that the pool's threads share, each for its own disjoint part of the buffer.
pub(crate) struct Shared<T>(*mut T);

// Copied by hand: a derive would ask for `T: Copy`.
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

// SAFETY: its users give every part of the buffer to exactly one thread, so no two threads
// touch the same elements; the pointee type is `Send`.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(base: *mut T) -> Self {
        Self(base)
    }

    /// The element `offset` past the base.
    ///
    /// # Safety
    /// `offset` must be inside the buffer's allocation.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller's.
        unsafe { self.0.add(offset) }
    }

    /// Chunk `i` of `len` elements (the last one shorter) of a buffer of `total`.
    ///
    /// # Safety
    /// The pointer must address `total` elements that live and are not otherwise borrowed for
    /// `'a`, and no other live reference may cover chunk `i`.
    unsafe fn chunk<'a>(self, i: usize, len: usize, total: usize) -> &'a mut [T] {
        let start = i * len;
        // SAFETY: `start < total` for the chunk indices the callers pass, and the chunk ends
        // at `total` at most; exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len.min(total - start)) }
    }
}

/// `data.chunks_mut(len).enumerate().for_each(f)`, the chunks in parallel when `parallel`.
pub(crate) fn chunks_mut<T: Send>(
    data: &mut [T],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if data.is_empty() {
        return;
    }
    assert!(len > 0, "pool::chunks_mut: empty chunks");
    let (total, base) = (data.len(), Shared(data.as_mut_ptr()));
    for_each(total.div_ceil(len), parallel, |i| {
        // SAFETY: `data` is borrowed mutably for the whole loop, and each `i` (one chunk) is
        // visited once.
        f(i, unsafe { base.chunk(i, len, total) })
    });
}

/// `f(i, &mut data[bounds[i]..bounds[i + 1]])` for `i` in `0..bounds.len() - 1`, in parallel
/// when `parallel`: a buffer cut into parts of given, possibly unequal, lengths.
///
/// # Panics
/// If `bounds` decreases or runs past `data`.
pub(crate) fn split_mut<T: Send>(
    data: &mut [T],
    bounds: &[usize],
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(
        bounds.windows(2).all(|w| w[0] <= w[1]) && bounds.last().is_none_or(|&e| e <= data.len()),
        "pool::split_mut: bounds {bounds:?} do not cut a buffer of {}",
        data.len()
    );
    let base = Shared(data.as_mut_ptr());
    for_each(bounds.len().saturating_sub(1), parallel, |i| {
        let part: Range<usize> = bounds[i]..bounds[i + 1];
        // SAFETY: `data` is borrowed mutably for the whole loop; the parts are in bounds and
        // disjoint (checked above), and each `i` is visited once.
        f(i, unsafe {
            std::slice::from_raw_parts_mut(base.at(part.start), part.len())
        })
    });
}

/// Chunk `i` of `a` (`la` elements each) and chunk `i` of `b` (`lb` each) together, for
/// `i` in `0..n`, in parallel when `parallel`: two outputs cut alike. For many small chunks
/// (GroupNorm's slices): the threads take about an eighth of their share at a time.
pub(crate) fn chunks_mut2<A: Send, B: Send>(
    (a, la): (&mut [A], usize),
    (b, lb): (&mut [B], usize),
    parallel: bool,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let n = a.len().div_ceil(la.max(1));
    assert!(
        la > 0 && lb > 0 && b.len().div_ceil(lb) == n || a.is_empty() && b.is_empty(),
        "pool::chunks_mut2: the buffers are not cut into as many chunks"
    );
    let (ta, pa) = (a.len(), Shared(a.as_mut_ptr()));
    let (tb, pb) = (b.len(), Shared(b.as_mut_ptr()));
    let grab = n.div_ceil(8 * threads());
    for_each_grabbing(n, grab, parallel, |i| {
        // SAFETY: both buffers are borrowed mutably for the whole loop, and each `i` is
        // visited once.
        let (ca, cb) = unsafe { (pa.chunk(i, la, ta), pb.chunk(i, lb, tb)) };
        f(i, ca, cb)
    });
}

/// `(0..n).map(f).collect()`, computed in parallel when `parallel`; the results in order.
pub(crate) fn map<R: Send>(n: usize, parallel: bool, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<MaybeUninit<R>> = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation.
    unsafe { out.set_len(n) };
    chunks_mut(&mut out, 1, parallel, |i, slot| {
        slot[0].write(f(i));
    });
    // SAFETY: every slot was written above (a panic in `f` propagates before this line, and
    // leaks the results already written rather than dropping uninitialised ones).
    out.into_iter()
        .map(|v| unsafe { v.assume_init() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_visit_every_index_once_in_place() {
        for parallel in [false, true] {
            let mut v = vec![0usize; 1000];
            chunks_mut(&mut v, 7, parallel, |i, c| {
                assert_eq!(c.len(), if i == 142 { 6 } else { 7 });
                c.iter_mut().enumerate().for_each(|(j, x)| *x += i * 7 + j);
            });
            assert!(
                v.iter().enumerate().all(|(i, x)| *x == i),
                "parallel {parallel}"
            );
            let (mut a, mut b) = (vec![0usize; 30], vec![0u8; 10]);
            chunks_mut2((&mut a, 3), (&mut b, 1), parallel, |i, a, b| {
                a.iter_mut().for_each(|x| *x = i);
                b[0] = i as u8;
            });
            assert!(a.iter().enumerate().all(|(j, x)| *x == j / 3));
            assert_eq!(b, (0..10).collect::<Vec<u8>>());
            let squares = map(100, parallel, |i| vec![i * i]);
            assert!(squares.iter().enumerate().all(|(i, s)| s == &[i * i]));
            // Many small chunks (taken several at a time).
            let (mut a, mut b) = (vec![0usize; 2000], vec![0usize; 1000]);
            chunks_mut2((&mut a, 2), (&mut b, 1), parallel, |i, a, b| {
                a.iter_mut().for_each(|x| *x += i);
                b[0] += i;
            });
            assert!(a.iter().enumerate().all(|(j, x)| *x == j / 2));
            assert!(b.iter().enumerate().all(|(j, x)| *x == j));
            // Parts of unequal lengths, an empty one among them.
            let mut v = vec![usize::MAX; 10];
            let bounds = [0, 3, 3, 4, 9];
            split_mut(&mut v, &bounds, parallel, |i, part| {
                assert_eq!(part.len(), bounds[i + 1] - bounds[i]);
                part.iter_mut().for_each(|x| *x = i);
            });
            assert_eq!(v, [0, 0, 0, 2, 3, 3, 3, 3, 3, usize::MAX]);
            split_mut(&mut v, &[], parallel, |_, _| unreachable!());
            chunks_mut(&mut Vec::<u8>::new(), 4, parallel, |_, _| unreachable!());
            assert!(map(0, parallel, |i| i).is_empty());
        }
        assert!(threads() >= 1);
    }

    #[test]
    #[should_panic(expected = "do not cut")]
    fn split_mut_refuses_overlapping_parts() {
        split_mut(&mut [0u8; 8], &[0, 5, 4, 8], true, |_, _| {});
    }

    #[test]
    #[should_panic(expected = "do not cut")]
    fn split_mut_refuses_parts_past_the_end() {
        split_mut(&mut [0u8; 8], &[0, 4, 9], true, |_, _| {});
    }

    /// A parallel loop inside a parallel loop's body completes (Candle's pool runs one loop
    /// at a time: without the guard the calling thread would wait on itself).
    #[test]
    fn nested_loops_complete() {
        let (tx, rx) = std::sync::mpsc::channel();
        // On a thread of its own, so that a deadlock fails the test instead of hanging it.
        std::thread::spawn(move || {
            let sums = map(8, true, |i| map(50, true, |j| i * j).iter().sum::<usize>());
            tx.send(sums).ok();
        });
        let sums = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("nested parallel loops deadlocked");
        assert_eq!(sums, (0..8).map(|i| i * 1225).collect::<Vec<_>>());
    }
}
