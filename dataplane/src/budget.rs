//! How many requests one upstream host is sent at once: a budget of
//! places, in the manner of haproxy's per-server `maxconn` and queue.
//!
//! A fast upstream answers a thousand concurrent clients no sooner when it
//! is sent a thousand requests at once: each extra request in flight costs
//! us an upstream connection with its buffers and task and the upstream a
//! socket, and nothing is gained. So a request takes a place
//! before it is sent, and requests beyond the places wait in a first-come
//! queue inside the proxy, where a waiting request costs only its client
//! connection.
//!
//! An LLM upstream is the opposite case: a request may wait minutes for
//! its head, and such requests must never be kept waiting behind each
//! other. So a place is held only until the response head arrives or for
//! [`BudgetLimits::hold`], whichever is sooner: a slow request leaves the
//! budget and goes on outside it. And a request waits at most
//! [`BudgetLimits::queue`] for a place before it goes anyway. The budget
//! therefore bounds how many *fast* requests are in flight; it never fails
//! a request, and never delays one by more than the queue limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use crate::deadline;

/// The limits of one host's budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BudgetLimits {
    /// Requests in flight at once (the places).
    pub(crate) places: usize,
    /// Longest a request keeps its place while it waits for its head.
    pub(crate) hold: Duration,
    /// Longest a request waits for a place before it goes without one.
    pub(crate) queue: Duration,
}

impl BudgetLimits {
    /// 1024 places, as many as Envoy's default circuit breakers allow a
    /// cluster: the budget is a guard against a flood of connections, not
    /// a throttle. With our own HTTP/1.1 client and listener an upstream
    /// request in flight costs little, and the queue was what cost: at 1000
    /// clients and an upstream on a busy CPU, fewer places left the proxy
    /// partly idle while requests waited (each queued request waits on the
    /// semaphore and a timer), and served fewer requests a second than
    /// nginx; 1024 places served about as many. One node sends a host at most 1024 ÷ its latency
    /// requests a second before requests wait, and at most 10,240 a second
    /// of slow requests (each holds its place 100 ms).
    ///
    /// 100 ms: a request slower than that is not one a queue helps (an
    /// LLM generation, a slow remote API), and most answers of a fast one
    /// come sooner, so they leave the budget with their head and cost no
    /// timer firing. Much shorter holds fire on most requests at 1000
    /// clients on a saturated proxy, where an answer's head waits tens of
    /// milliseconds in the proxy's own queue (a wake, a poll, a timer set
    /// again each), and cost throughput.
    ///
    /// 500 ms: the most a burst of requests can be delayed by the budget.
    pub(crate) const DEFAULT: BudgetLimits = BudgetLimits {
        places: 1024,
        hold: Duration::from_millis(100),
        queue: Duration::from_millis(500),
    };
}

/// One host's budget; clones share the places.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    places: Arc<Semaphore>,
    limits: BudgetLimits,
}

impl Budget {
    pub(crate) fn new(limits: BudgetLimits) -> Budget {
        Budget {
            places: Arc::new(Semaphore::new(limits.places)),
            limits,
        }
    }

    /// No request holds or waits for a place.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.places.available_permits() == self.limits.places
    }

    /// Runs `request` (a send up to its response head) once it has a
    /// place, or once it has waited the queue limit: it is not polled
    /// before. The place is given up when the request ends, or by whoever
    /// polls it once [`Held::hold_until`] has passed (the proxy's
    /// [`AwaitHead`], with the timer it keeps anyway for the
    /// response-header deadline).
    ///
    /// `start`: when the request began; a place taken at once (at the
    /// first poll, nearly always in the same turn) is held from then, with
    /// no clock read of its own.
    ///
    /// [`AwaitHead`]: crate::proxy::AwaitHead
    pub(crate) fn run<F: Future>(self, start: Instant, request: F) -> Budgeted<F> {
        Budgeted {
            budget: self,
            start,
            placed: false,
            queued: None,
            place: None,
            hold_until: None,
            request,
        }
    }

    /// Waits for a place at most the queue limit.
    async fn queue(self) -> Option<OwnedSemaphorePermit> {
        let waited = tokio::time::timeout(self.limits.queue, self.places.clone().acquire_owned());
        match waited.await {
            Ok(place) => place.ok(),
            Err(_) => {
                debug!(
                    places = self.limits.places,
                    queue = ?self.limits.queue,
                    "upstream budget full: request sent without a place"
                );
                None
            }
        }
    }
}

/// A request that may hold a place in a budget, for whoever drives it.
pub(crate) trait Held: Future {
    /// When the request must give its place up; `None` when it has none.
    fn hold_until(&self) -> Option<Instant>;

    /// Gives the place up; the request goes on outside the budget.
    fn leave_budget(self: Pin<&mut Self>);
}

type Queued = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    /// The future [`Budget::run`] returns. Whoever drives it gives its
    /// place up once [`Held::hold_until`] has passed.
    pub(crate) struct Budgeted<F> {
        budget: Budget,
        start: Instant,
        // The place is decided (taken, or the queue limit waited out):
        // the request may go.
        placed: bool,
        // Waiting for a place (boxed: rare, and not every request's size).
        queued: Option<Queued>,
        place: Option<OwnedSemaphorePermit>,
        hold_until: Option<Instant>,
        #[pin]
        request: F,
    }
}

impl<F: Future> Future for Budgeted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        while !*this.placed {
            let (place, placed_at) = match this.queued {
                Some(queued) => (ready!(queued.as_mut().poll(cx)), Instant::now()),
                None => match this.budget.places.clone().try_acquire_owned() {
                    Ok(place) => (Some(place), *this.start),
                    Err(_) => {
                        *this.queued = Some(Box::pin(this.budget.clone().queue()));
                        continue;
                    }
                },
            };
            *this.queued = None;
            if place.is_some() {
                *this.hold_until = Some(deadline::after(placed_at, this.budget.limits.hold));
            }
            *this.place = place;
            *this.placed = true;
        }
        let out = ready!(this.request.poll(cx));
        *this.place = None;
        *this.hold_until = None;
        Poll::Ready(out)
    }
}

impl<F: Future> Held for Budgeted<F> {
    fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    fn leave_budget(self: Pin<&mut Self>) {
        let this = self.project();
        *this.place = None;
        *this.hold_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Timer;
    use crate::proxy::AwaitHead;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    const LIMITS: BudgetLimits = BudgetLimits {
        places: 2,
        hold: Duration::from_millis(100),
        queue: Duration::from_secs(1),
    };

    /// A request that counts itself as started when first polled and then
    /// waits for `done`.
    fn request(
        started: &Arc<AtomicUsize>,
        done: oneshot::Receiver<()>,
    ) -> impl Future<Output = ()> {
        let started = started.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            let _ = done.await;
        }
    }

    /// Spawns `n` requests through `budget`, in order, each driven as the
    /// proxy drives its sends (which gives up a place held too long): the
    /// senders that finish them, and their tasks.
    fn spawn_requests(
        budget: &Budget,
        started: &Arc<AtomicUsize>,
        n: usize,
    ) -> (Vec<oneshot::Sender<()>>, Vec<tokio::task::JoinHandle<()>>) {
        (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                let (budget, req) = (budget.clone(), request(started, rx));
                let now = Instant::now();
                let driven = AwaitHead::new(
                    budget.run(now, req),
                    Timer::new(),
                    now,
                    Duration::from_secs(3600),
                    None,
                );
                (tx, tokio::spawn(async move { driven.await.unwrap() }))
            })
            .unzip()
    }

    /// Lets spawned tasks run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_places_wait_for_one() {
        let budget = Budget::new(BudgetLimits {
            hold: Duration::from_secs(3600),
            queue: Duration::from_secs(3600),
            ..LIMITS
        });
        let started = Arc::new(AtomicUsize::new(0));
        let (mut finish, tasks) = spawn_requests(&budget, &started, 3);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "two places, two started");
        assert!(!budget.is_idle());
        finish.remove(0).send(()).unwrap();
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            3,
            "a freed place goes to the next"
        );
        for tx in finish {
            tx.send(()).unwrap();
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(budget.is_idle(), "every place given back");
    }

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// A place taken at once is held from the request's start; one that
    /// was waited for, from when it was given.
    #[tokio::test(start_paused = true)]
    async fn the_hold_counts_from_the_start_or_from_the_place() {
        let budget = Budget::new(BudgetLimits {
            places: 1,
            ..LIMITS
        });
        let start = Instant::now() - Duration::from_secs(5);
        let mut first = pin!(budget.clone().run(start, std::future::pending::<()>()));
        assert!(poll_once(first.as_mut()).is_pending());
        assert_eq!(first.hold_until(), Some(start + LIMITS.hold));

        let mut second = pin!(budget.run(start, std::future::pending::<()>()));
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(second.hold_until(), None, "queued: no place yet");
        tokio::time::sleep(Duration::from_millis(7)).await;
        first.as_mut().leave_budget();
        let given = Instant::now();
        settle().await;
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(second.hold_until(), Some(given + LIMITS.hold));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_while_queued_leaves_the_queue() {
        let budget = Budget::new(BudgetLimits {
            places: 1,
            hold: Duration::from_secs(3600),
            queue: Duration::from_secs(3600),
        });
        let started = Arc::new(AtomicUsize::new(0));
        let (mut finish, tasks) = spawn_requests(&budget, &started, 3);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // The second waits in the queue; its client leaves.
        tasks[1].abort();
        settle().await;
        finish.remove(0).send(()).unwrap();
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "the place went to the third, not to the one that left"
        );
        finish.remove(1).send(()).unwrap();
        settle().await;
        assert!(budget.is_idle(), "every place given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_leaves_its_place_after_the_hold_limit() {
        let budget = Budget::new(LIMITS);
        let started = Arc::new(AtomicUsize::new(0));
        let (finish, _tasks) = spawn_requests(&budget, &started, 3);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        tokio::time::sleep(LIMITS.hold - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "still within the hold");
        tokio::time::sleep(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            3,
            "the slow ones went on outside the budget"
        );
        drop(finish);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_at_most_the_queue_limit() {
        let budget = Budget::new(BudgetLimits {
            hold: Duration::from_secs(3600),
            ..LIMITS
        });
        let started = Arc::new(AtomicUsize::new(0));
        let (finish, _tasks) = spawn_requests(&budget, &started, 3);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        tokio::time::sleep(LIMITS.queue + Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 3, "sent without a place");
        drop(finish);
    }
}
