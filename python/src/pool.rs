//! The package's thread pool, and what happens to it across `os.fork()`.
//!
//! A forked child inherits the pool's bookkeeping but none of its threads, so work sent to it
//! would wait forever. The Python half registers `after_fork_in_child` with
//! `os.register_at_fork`; it drops the (threadless) pool, and the next call in the child builds
//! a fresh one. As a second guard, a pool is only used by the process that built it.

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// The pool of this process, built on first use (threads: `RAYON_NUM_THREADS` or all cores).
/// Called with the GIL held, so a fork (which also holds the GIL) never finds the lock taken.
pub fn get() -> Arc<ThreadPool> {
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return Arc::clone(pool);
        }
    }
    // A new process (or the first call): the old pool's threads are not ours. Leak its handle
    // rather than drop it: dropping would signal threads that do not exist in this process.
    if let Some((_, stale)) = slot.take() {
        std::mem::forget(stale);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("layernorm-{i}"))
            .build()
            .unwrap_or_else(|_| {
                // Could not start one thread per core: try with a single one.
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("cannot start a thread")
            }),
    );
    *slot = Some((pid, Arc::clone(&pool)));
    pool
}

/// Forgets the parent's pool in a forked child (registered with `os.register_at_fork`).
#[pyo3::pyfunction]
pub fn after_fork_in_child() {
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, stale)) = slot.take() {
        std::mem::forget(stale);
    }
}

/// Runs `f(par)` off the GIL: on the package's pool when a problem of `elems` elements is
/// large enough to be split across threads, else on the calling thread (a pool hand-off costs
/// more than a small problem).
pub fn run<R: Send>(
    py: pyo3::Python<'_>,
    elems: usize,
    f: impl FnOnce(layernorm::Parallelism) -> R + Send,
) -> R {
    use layernorm::Parallelism;
    if Parallelism::Rayon.would_split(elems) {
        let pool = get();
        py.detach(|| pool.install(|| f(Parallelism::Rayon)))
    } else {
        py.detach(|| f(Parallelism::Sequential))
    }
}
