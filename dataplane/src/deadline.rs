//! One timer for a run of deadlines: a client connection's header-read
//! deadline, then its request's response-header deadline and upstream
//! budget hold, then the next head's, and so on.
//!
//! A tokio timer set and cancelled for each deadline is made, entered in
//! the timer wheel and taken out again, twice a request. A [`Timer`] is set once and left alone
//! while deadlines come and go: it only ever has to fire *no later* than
//! the deadline at hand, so it is moved only when a deadline is earlier
//! than the one it is set for, and when it fires early it is set again
//! for the deadline then at hand. On a busy connection that is one reset
//! per hold limit (100 ms), not two timers per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A re-usable timer; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    /// Boxed: made once and kept (`Sleep` is `!Unpin`); `None` until the
    /// first deadline.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The task that last polled `sleep` while it was pending: the task it
    /// wakes, unless it has fired since (`is_elapsed` says so). Every
    /// reset here is followed by a poll, which keeps this true. Polling it
    /// again would only register the same waker once more, twice a
    /// request.
    armed_for: Option<Waker>,
}

/// `from + wait`, or a far future when that overflows (a timeout set to
/// something like a thousand years means "never", not a panic).
pub(crate) fn after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait)
        .unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 86_400))
}

impl Timer {
    pub(crate) fn new() -> Timer {
        Timer::default()
    }

    /// `Ready(now)` once `deadline` has passed; until then the task is
    /// woken at or before it (and perhaps earlier, for a deadline that
    /// was at hand before; poll again then).
    pub(crate) fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<Instant> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                } else if !sleep.is_elapsed() && is_armed_for(&self.armed_for, cx) {
                    return Poll::Pending;
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // Set for an earlier deadline, it fires early: set it again.
        // Polled outside the task's cooperative budget: with the budget
        // spent, a poll would return `Pending` without registering the
        // waker, and the skip above would then wait for a wake that never
        // comes.
        while Pin::new(&mut tokio::task::coop::unconstrained(sleep.as_mut()))
            .poll(cx)
            .is_ready()
        {
            let now = Instant::now();
            if now >= deadline {
                return Poll::Ready(now);
            }
            sleep.as_mut().reset(deadline);
        }
        if !is_armed_for(&self.armed_for, cx) {
            self.armed_for = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Whether `armed_for` wakes the task polling with `cx`.
fn is_armed_for(armed_for: &Option<Waker>, cx: &Context<'_>) -> bool {
    armed_for.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn wait(timer: &mut Timer, deadline: Instant) -> Instant {
        poll_fn(|cx| timer.poll_until(cx, deadline)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_kept_whether_earlier_or_later_than_the_last() {
        let start = Instant::now();
        let mut timer = Timer::new();
        let at = |s| start + Duration::from_secs(s);
        // The first, then a later one (the timer fires early at 10 s and
        // is set again), then an earlier one than the timer is set for.
        assert_eq!(wait(&mut timer, at(10)).await, at(10));
        let later = at(30);
        let waited = tokio::time::timeout_at(at(25), wait(&mut timer, later)).await;
        assert!(waited.is_err(), "fired before its deadline");
        assert_eq!(wait(&mut timer, later).await, later);
        // Set for 100 s; a deadline at 40 s must still be met.
        let far = at(100);
        let _ = tokio::time::timeout_at(at(31), wait(&mut timer, far)).await;
        assert_eq!(wait(&mut timer, at(40)).await, at(40));
    }

    /// A task that spent its cooperative budget before it asked for the
    /// deadline is still woken by it (and is not polled again in between:
    /// the second look skips the timer).
    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_kept_when_the_task_budget_is_spent() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..1000 {
            tx.send(()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        // In a task of its own: its waker is the same at every poll, as a
        // connection's is.
        let fired = tokio::spawn(async move {
            let mut timer = Timer::new();
            let mut spent = false;
            poll_fn(|cx| {
                if !spent {
                    // Receiving stops where the budget ends.
                    while rx.poll_recv(cx).is_ready() {}
                    assert!(!tokio::task::coop::has_budget_remaining());
                    spent = true;
                }
                timer.poll_until(cx, deadline)
            })
            .await
        });
        let waited = tokio::time::timeout(Duration::from_secs(5), fired).await;
        assert_eq!(waited.expect("the deadline fired").unwrap(), deadline);
    }

    #[test]
    fn a_deadline_past_the_clock_s_range_is_far_away_not_a_panic() {
        let now = Instant::now();
        let far = after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(10 * 365 * 86_400));
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_is_ready_at_once() {
        let mut timer = Timer::new();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let past = Instant::now() - Duration::from_secs(1);
        let now = Instant::now();
        assert_eq!(wait(&mut timer, past).await, now);
    }
}
