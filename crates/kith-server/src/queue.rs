//! The bounded queue from the router to one session: many senders, one receiver.
//!
//! It does what a bounded `tokio::sync::mpsc` channel does for the session, but
//! holds no storage while empty: tokio's channel allocates about 1.3 KB up front
//! (a block of 32 slots and cache-padded counters) and keeps it for the session's
//! life, and most sessions are idle with an empty queue (ARCHITECTURE.md, "Idle
//! sessions"). Here the items live in a `VecDeque` that is freed whenever the
//! receiver empties it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

/// Creates a queue that holds at most `capacity` items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            receiver_waker: None,
        }),
        capacity,
        space: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Woken when an item is taken or the receiver goes: for [`Sender::send`].
    space: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    receiver_waker: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`Sender::try_send`] gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// [`Receiver::try_recv`] found nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    Empty,
    /// Empty, and every sender is gone.
    Disconnected,
}

pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if there is room and the receiver is there.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.receiver_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; gives it back if the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            // Registered before trying, so a slot freed in between is not missed.
            let space = self.shared.space.notified();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            space.await;
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.receiver_waker.take()
        };
        // The last sender: a waiting receiver learns that nothing more will come.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and every sender is gone.
    /// Cancel-safe: an item is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| match self.take() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                let mut state = self.shared.lock();
                // Checked again under the lock a sender takes the waker under.
                if !state.items.is_empty() || state.senders == 0 {
                    cx.waker().wake_by_ref();
                } else {
                    state.receiver_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.take()
    }

    fn take(&self) -> Result<T, TryRecvError> {
        let item = {
            let mut state = self.shared.lock();
            match state.items.pop_front() {
                Some(item) => {
                    if state.items.is_empty() {
                        // Emptied: give the storage back.
                        state.items = VecDeque::new();
                    }
                    item
                }
                None if state.senders == 0 => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        self.shared.space.notify_one();
        Ok(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            state.receiver_waker = None;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock; waiting senders learn the queue is closed.
        drop(items);
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_refuses_past_capacity() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn frees_its_storage_when_emptied() {
        let (tx, mut rx) = channel(16);
        for i in 0..10 {
            tx.try_send(i).expect("room");
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_wakes_for_a_later_send_and_ends_with_the_senders() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx2.try_send("late").expect("room");
        });
        assert_eq!(rx.recv().await, Some("late"));
        sender.await.expect("sender task");
        drop(tx);
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_without_a_receiver() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).expect("room");
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        waiting
            .await
            .expect("task")
            .expect("sent once there was room");
        assert_eq!(rx.recv().await, Some(2));
        drop(rx);
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
        assert_eq!(tx.send(4).await, Err(4));
    }

    #[tokio::test]
    async fn a_dropped_receiver_releases_a_waiting_sender() {
        let (tx, rx) = channel(1);
        tx.try_send(1).expect("room");
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.expect("task"), Err(2));
    }
}
