//! Work a write's caller need not wait for: closing a replaced file,
//! pruning old backups, removing a writer's stale temporary files.
//!
//! A thread that answers someone after its writes (the agent's job runner,
//! whose result the master waits for) calls [`hold`] once; from then on,
//! work handed to [`later`] on that thread is kept until it calls
//! [`finish`], after it has answered. Any other thread (the CLI's
//! `apply --local`, tests) runs the work at once, as before.
//!
//! Why it is worth a module: on the agent's restore path, the replaced
//! file's last close frees its inode (on ext4, journal work: about 0.1 ms
//! on this project's test VM), and pruning a backup frees another; listing
//! the directories for stale temporaries reads every entry. None of it
//! changes what the result reports or how durable the restored file is.
//!
//! The work runs on the same thread, in the order it was handed over,
//! never beside a write of that thread, so a prune or a removal of stale
//! temporaries never races the next write of the same file. The job
//! runner tidies between jobs, and stops tidying when a job is waiting
//! ([`finish_unless`]), so a queued job never waits behind its
//! predecessor's tidying (unless more than [`HELD_MAX`] pieces are held).

use std::cell::RefCell;
use std::collections::VecDeque;

type Work = Box<dyn FnOnce()>;

thread_local! {
    /// `Some` on a thread that [`hold`]s its work.
    static HELD: RefCell<Option<VecDeque<Work>>> = const { RefCell::new(None) };
}

/// From now on, this thread keeps the work handed to [`later`] until
/// [`finish`].
pub fn hold() {
    HELD.with(|held| {
        held.borrow_mut().get_or_insert_with(VecDeque::new);
    });
}

/// Runs `work` at this thread's next [`finish`] if it [`hold`]s its work,
/// else now.
pub fn later(work: impl FnOnce() + 'static) {
    let work = HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(list) => {
            list.push_back(Box::new(work));
            None
        }
        None => Some(work),
    });
    if let Some(work) = work {
        work();
    }
}

/// Runs the work this thread held, in the order it was handed over.
/// Returns how many pieces ran.
pub fn finish() -> usize {
    finish_unless(|| false)
}

/// Held work past which [`finish_unless`] no longer stops early: each
/// piece may hold a file open.
pub const HELD_MAX: usize = 64;

/// As [`finish`], but stops between two pieces when `more_urgent()` says
/// so (the job runner: a job is waiting), keeping the rest held for the
/// next call; unless more than [`HELD_MAX`] pieces are held.
pub fn finish_unless(more_urgent: impl Fn() -> bool) -> usize {
    let mut ran = 0;
    // Work may hand over more work (a prune that closes a file): loop
    // until none is left, borrowing the list only to take from it.
    loop {
        // `more_urgent` is asked with the list not borrowed, so it may
        // hand over work itself.
        let held = HELD.with(|held| held.borrow().as_ref().map_or(0, VecDeque::len));
        if held == 0 || (held <= HELD_MAX && more_urgent()) {
            return ran;
        }
        let Some(work) = HELD.with(|held| held.borrow_mut().as_mut().and_then(VecDeque::pop_front)) else {
            return ran;
        };
        work();
        ran += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn work_runs_at_once_unless_the_thread_holds_it() {
        let log = Rc::new(RefCell::new(Vec::new()));
        // Each test runs on a thread of its own: nothing held yet.
        let l = log.clone();
        later(move || l.borrow_mut().push("now"));
        assert_eq!(*log.borrow(), ["now"]);

        hold();
        let (a, b) = (log.clone(), log.clone());
        later(move || a.borrow_mut().push("first"));
        later(move || {
            b.borrow_mut().push("second");
            let c = b.clone();
            later(move || c.borrow_mut().push("handed over by the second"));
        });
        assert_eq!(*log.borrow(), ["now"], "held work waits for finish");
        assert_eq!(finish(), 3);
        assert_eq!(*log.borrow(), ["now", "first", "second", "handed over by the second"]);
        assert_eq!(finish(), 0, "each piece runs once");
    }

    #[test]
    fn held_work_waits_for_what_is_more_urgent_unless_too_much_is_held() {
        hold();
        let ran = Rc::new(std::cell::Cell::new(0));
        let hand_over = |n: usize| {
            for _ in 0..n {
                let r = ran.clone();
                later(move || r.set(r.get() + 1));
            }
        };
        hand_over(3);
        assert_eq!(finish_unless(|| true), 0, "a job waits: nothing runs");
        let asked = std::cell::Cell::new(0);
        // Urgent from the second look on: one piece runs, two stay held.
        assert_eq!(
            finish_unless(|| {
                asked.set(asked.get() + 1);
                asked.get() > 1
            }),
            1
        );
        assert_eq!(ran.get(), 1);
        hand_over(HELD_MAX);
        assert_eq!(finish_unless(|| true), 2, "over the bound, it runs down to the bound");
        assert_eq!(finish(), HELD_MAX);
        assert_eq!(ran.get(), HELD_MAX + 3);
    }

    #[test]
    fn another_thread_does_not_hold_this_one_s_work() {
        hold();
        let ran = std::thread::spawn(|| {
            let ran = Rc::new(std::cell::Cell::new(false));
            let r = ran.clone();
            later(move || r.set(true));
            ran.get()
        })
        .join()
        .unwrap();
        assert!(ran);
    }
}
