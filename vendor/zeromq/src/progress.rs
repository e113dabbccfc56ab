//! A wake-up for tasks waiting on counters other tasks advance (PUB's flush
//! points wait on the fanout task's and the subscriber writers' counters).
//!
//! Runtime-agnostic (only `std` and `parking_lot`), so it works under every
//! `async_rt` runtime. Those who advance a counter call [`Progress::advanced`]
//! after it; it costs one atomic load while nobody waits, so the hot path
//! (one call per fanned message, one per written batch) pays nothing for
//! waiters that do not exist.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Progress {
    /// Waiters between the start and the end of [`Progress::until`]: while
    /// it is zero, [`Progress::advanced`] does not take the lock.
    waiting: AtomicUsize,
    /// Wakers of waiters that found their condition false; all are taken
    /// and woken at the next advance. At most one per waiting task (a task
    /// polled again replaces nothing: a stale waker only costs one spurious
    /// poll), and a dropped waiter's stays only until the next advance.
    wakers: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

impl Progress {
    /// Something a waiter may be waiting for changed. Call it after the
    /// change is stored.
    pub(crate) fn advanced(&self) {
        // Pairs with the waiter's increment of `waiting` before it looks:
        // either this load sees the waiter, or the waiter sees the change.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }

    /// How many wait now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Resolves once `done` returns true, looking again at each advance
    /// (never on a timer).
    pub(crate) fn until<F: FnMut() -> bool>(&self, done: F) -> Until<'_, F> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Until {
            progress: self,
            done,
        }
    }
}

/// The future of [`Progress::until`].
pub(crate) struct Until<'a, F> {
    progress: &'a Progress,
    done: F,
}

impl<F: FnMut() -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.done)() {
            return Poll::Ready(());
        }
        {
            let mut wakers = this.progress.wakers.lock();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // Looked at again once registered: an advance between the first
        // look and the registration found no waker to wake.
        if (this.done)() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl<F> Drop for Until<'_, F> {
    fn drop(&mut self) {
        self.progress.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// A waiter wakes on the advance that makes its condition true, and
    /// only on advances: no timer is involved (the paused clock does not
    /// move while it waits).
    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_on_the_advance_that_satisfies_it() {
        let progress = Arc::new(Progress::default());
        let count = Arc::new(AtomicU64::new(0));
        let polls = Arc::new(AtomicU64::new(0));
        let (waiter_progress, waiter_count, waiter_polls) =
            (progress.clone(), count.clone(), polls.clone());
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move {
            waiter_progress
                .until(|| {
                    waiter_polls.fetch_add(1, Ordering::SeqCst);
                    waiter_count.load(Ordering::Acquire) >= 3
                })
                .await;
        });
        for _ in 0..3 {
            tokio::task::yield_now().await;
            count.fetch_add(1, Ordering::AcqRel);
            progress.advanced();
        }
        waiter.await.unwrap();
        assert_eq!(tokio::time::Instant::now(), started, "no timer ran");
        assert!(
            polls.load(Ordering::SeqCst) <= 2 * 4,
            "at most two looks per wake-up"
        );
        assert_eq!(progress.waiting.load(Ordering::SeqCst), 0);
        assert!(progress.wakers.lock().len() <= 1);
    }

    /// Nobody waiting: an advance does not touch the lock's list.
    #[test]
    fn advancing_with_no_waiter_keeps_nothing() {
        let progress = Progress::default();
        progress.advanced();
        assert!(progress.wakers.lock().is_empty());
    }
}
