//! One worker's view of the shutdown signal.
//!
//! The process-wide signal is a `tokio::sync::watch` channel, shared by every worker.
//! Asking it on every exchange (a read lock on its value) and waiting on it between
//! requests (a waiter queued under its lock, and removed again) would make each
//! worker touch memory the others write, on the hot path. Instead the worker turns the
//! signal into a [`Stop`] of its own once: its connections ask a `Cell`, and a waiting
//! connection's waker sits in a list that only its worker's thread ever touches.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A worker's shutdown flag, and the tasks waiting for it.
#[derive(Default)]
pub struct Stop {
    stopping: Cell<bool>,
    waiting: RefCell<Waiting>,
}

/// The wakers of pending [`Stopped`] futures, by slot; freed slots are reused.
#[derive(Default)]
struct Waiting {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Stop {
    /// True once shutdown has been signalled.
    pub fn is_set(&self) -> bool {
        self.stopping.get()
    }

    /// Signals shutdown, waking every task that waits for it.
    pub fn set(&self) {
        self.stopping.set(true);
        // Taken out first, then woken with no borrow held.
        let slots = std::mem::take(&mut self.waiting.borrow_mut().slots);
        for waker in slots.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Resolves once shutdown has been signalled.
    pub fn wait(&self) -> Stopped<'_> {
        Stopped {
            stop: self,
            slot: None,
        }
    }
}

/// The future of [`Stop::wait`]. It holds a slot in its worker's list only while it
/// waits, and gives it back when it is dropped.
pub struct Stopped<'a> {
    stop: &'a Stop,
    slot: Option<usize>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.is_set() {
            return Poll::Ready(());
        }
        let mut waiting = self.stop.waiting.borrow_mut();
        let waiting = &mut *waiting;
        match self.slot {
            Some(slot) => {
                // The same task polls again: usually the same waker, left in place.
                if let Some(held) = waiting.slots.get_mut(slot) {
                    match held {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        _ => *held = Some(cx.waker().clone()),
                    }
                }
            }
            None => {
                let waker = Some(cx.waker().clone());
                let slot = match waiting.free.pop() {
                    Some(slot) => {
                        if let Some(free) = waiting.slots.get_mut(slot) {
                            *free = waker;
                        }
                        slot
                    }
                    None => {
                        waiting.slots.push(waker);
                        waiting.slots.len() - 1
                    }
                };
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else { return };
        let waker = {
            let mut waiting = self.stop.waiting.borrow_mut();
            // After `set` the list is empty: nothing to give back.
            let waker = waiting.slots.get_mut(slot).and_then(Option::take);
            if slot < waiting.slots.len() {
                waiting.free.push(slot);
            }
            waker
        };
        // Dropped with no borrow held: it may be the last reference to a task.
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    fn wakes(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    fn poll(fut: &mut Pin<&mut Stopped<'_>>, waker: &Waker) -> Poll<()> {
        fut.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn set_wakes_every_waiter_once_and_later_waits_are_ready_at_once() {
        let stop = Stop::default();
        let (a_count, a) = counter();
        let (b_count, b) = counter();
        let mut first = std::pin::pin!(stop.wait());
        let mut second = std::pin::pin!(stop.wait());
        assert!(poll(&mut first, &a).is_pending());
        assert!(poll(&mut second, &b).is_pending());
        // Polled again by the same task: still one registration.
        assert!(poll(&mut first, &a).is_pending());
        assert!(!stop.is_set());

        stop.set();
        assert!(stop.is_set());
        assert_eq!(wakes(&a_count), 1);
        assert_eq!(wakes(&b_count), 1);
        assert_eq!(poll(&mut first, &a), Poll::Ready(()));
        assert_eq!(poll(&mut second, &b), Poll::Ready(()));
        let mut late = std::pin::pin!(stop.wait());
        assert_eq!(poll(&mut late, &a), Poll::Ready(()));
    }

    #[test]
    fn a_dropped_wait_is_not_woken_and_its_slot_is_reused() {
        let stop = Stop::default();
        let (gone_count, gone) = counter();
        {
            let mut dropped = std::pin::pin!(stop.wait());
            assert!(poll(&mut dropped, &gone).is_pending());
        }
        let (kept_count, kept) = counter();
        let mut waiting = std::pin::pin!(stop.wait());
        assert!(poll(&mut waiting, &kept).is_pending());
        assert_eq!(
            stop.waiting.borrow().slots.len(),
            1,
            "the freed slot is reused"
        );

        stop.set();
        assert_eq!(wakes(&gone_count), 0);
        assert_eq!(wakes(&kept_count), 1);
    }

    #[test]
    fn a_new_waker_replaces_the_old_one() {
        let stop = Stop::default();
        let (old_count, old) = counter();
        let (new_count, new) = counter();
        let mut waiting = std::pin::pin!(stop.wait());
        assert!(poll(&mut waiting, &old).is_pending());
        assert!(poll(&mut waiting, &new).is_pending());
        stop.set();
        assert_eq!(wakes(&old_count), 0);
        assert_eq!(wakes(&new_count), 1);
    }

    #[test]
    fn waits_dropped_after_set_free_nothing_and_later_waits_are_ready() {
        let stop = Stop::default();
        let (_, waker) = counter();
        let mut waiting = Box::pin(stop.wait());
        assert!(poll(&mut waiting.as_mut(), &waker).is_pending());
        stop.set();
        drop(waiting);
        assert!(stop.waiting.borrow().slots.is_empty());
        assert!(stop.waiting.borrow().free.is_empty());
        let mut late = std::pin::pin!(stop.wait());
        assert_eq!(poll(&mut late, &waker), Poll::Ready(()));
    }
}
