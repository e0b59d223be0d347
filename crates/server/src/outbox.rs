//! A watch stream's queue of responses, bounded, between the hub (and the stream's own
//! handler) and the task that writes the stream.
//!
//! Not tokio's mpsc: publishing a batch to hundreds of streams pushed into each channel's
//! block list and woke each reader on the spot. Here a batch is queued under one short lock
//! per stream and the reader's waker handed back, so the publisher wakes the writers once
//! everything is queued; the writer takes all that is queued in one go.
//!
//! Invariants: items come out in the order they went in; `try_send_all` queues all of its
//! items or none; once the receiver is gone every send fails and `closed` returns.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tonic::Status;

use crate::frame::Frame;

pub type Item = Result<Frame, Status>;

/// Why an item was not queued; the item comes back.
#[derive(Debug)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

struct State {
    items: VecDeque<Item>,
    cap: usize,
    reader: Option<Waker>,
    receiver_alive: bool,
    senders: usize,
    /// Senders waiting for room; the reader signals `room` only when some are.
    waiting: usize,
}

impl State {
    /// Whether `n` more items may be queued now.
    fn admit(&self, n: usize) -> Result<(), TrySendError<()>> {
        if !self.receiver_alive {
            return Err(TrySendError::Closed(()));
        }
        if self.items.len() + n > self.cap {
            return Err(TrySendError::Full(()));
        }
        Ok(())
    }

    /// Queues `item` if the receiver is there and there is room. The reader's waker comes
    /// back, to be woken once the lock is released.
    fn push(&mut self, item: Item) -> Result<Option<Waker>, TrySendError<Item>> {
        if let Err(e) = self.admit(1) {
            return Err(e.with(item));
        }
        self.items.push_back(item);
        Ok(self.reader.take())
    }
}

impl TrySendError<()> {
    fn with<T>(self, item: T) -> TrySendError<T> {
        match self {
            TrySendError::Full(()) => TrySendError::Full(item),
            TrySendError::Closed(()) => TrySendError::Closed(item),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    room: Notify,
    closed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Sender(Arc<Shared>);
pub struct Receiver(Arc<Shared>);

/// A queue holding at most `cap` items.
pub fn channel(cap: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            cap: cap.max(1),
            reader: None,
            receiver_alive: true,
            senders: 1,
            waiting: 0,
        }),
        room: Notify::new(),
        closed: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let reader = {
            let mut st = self.0.lock();
            st.senders -= 1;
            if st.senders == 0 {
                st.reader.take()
            } else {
                None
            }
        };
        // The last sender gone ends the stream.
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl Sender {
    /// Queues all of `items`, or none if they do not all fit. The reader's waker, if it
    /// waits, is returned to be woken by the caller.
    pub fn try_send_all<I>(&self, items: I) -> Result<Option<Waker>, TrySendError<()>>
    where
        I: IntoIterator<Item = Item>,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        let mut st = self.0.lock();
        st.admit(items.len())?;
        st.items.extend(items);
        Ok(st.reader.take())
    }

    /// [`Sender::try_send_all`] for a batch held in a `Vec`, given back if it does not fit.
    pub fn try_send_vec(&self, items: Vec<Item>) -> Result<Option<Waker>, TrySendError<Vec<Item>>> {
        let mut st = self.0.lock();
        if let Err(e) = st.admit(items.len()) {
            return Err(e.with(items));
        }
        st.items.extend(items);
        Ok(st.reader.take())
    }

    /// Queues `item` if there is room, and wakes the reader.
    pub fn try_send(&self, item: Item) -> Result<(), TrySendError<Item>> {
        let reader = self.0.lock().push(item)?;
        if let Some(w) = reader {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; gives it back if the receiver is gone.
    pub async fn send(&self, mut item: Item) -> Result<(), Item> {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered, and counted as waiting, under the same lock as the check: a reader
            // that makes room after it signals this waiter.
            room.as_mut().enable();
            let waiting = {
                let mut st = self.0.lock();
                match st.push(item) {
                    Ok(reader) => {
                        drop(st);
                        if let Some(w) = reader {
                            w.wake();
                        }
                        return Ok(());
                    }
                    Err(TrySendError::Closed(i)) => return Err(i),
                    Err(TrySendError::Full(i)) => item = i,
                }
                st.waiting += 1;
                Waiting(&self.0)
            };
            room.await;
            drop(waiting);
        }
    }

    /// Returns once the receiver is gone.
    pub async fn closed(&self) {
        loop {
            let closed = self.0.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if !self.0.lock().receiver_alive {
                return;
            }
            closed.await;
        }
    }
}

/// One sender counted in `waiting` until this is dropped (also when its `send` is).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Receiver {
    /// Everything queued (appended to `out`); `Ready(false)` once the queue is empty and
    /// every sender gone.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, out: &mut impl Extend<Item>) -> Poll<bool> {
        let room = {
            let mut st = self.0.lock();
            if st.items.is_empty() {
                if st.senders == 0 {
                    return Poll::Ready(false);
                }
                // Cloned only when it changed: the writer task's waker stays the same.
                match &st.reader {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.reader = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            out.extend(st.items.drain(..));
            st.waiting > 0
        };
        if room {
            self.0.room.notify_waiters();
        }
        Poll::Ready(true)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        {
            let mut st = self.0.lock();
            st.receiver_alive = false;
            st.items.clear();
        }
        self.0.closed.notify_waiters();
        self.0.room.notify_waiters();
    }
}

/// The queue as a stream of items (the JSON gateway's `/v3/watch` reads it so).
pub struct ReceiverStream {
    rx: Receiver,
    ready: VecDeque<Item>,
}

impl ReceiverStream {
    pub fn new(rx: Receiver) -> ReceiverStream {
        ReceiverStream {
            rx,
            ready: VecDeque::new(),
        }
    }
}

impl tokio_stream::Stream for ReceiverStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let me = self.get_mut();
        if let Some(i) = me.ready.pop_front() {
            return Poll::Ready(Some(i));
        }
        match me.rx.poll_drain(cx, &mut me.ready) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Ready(true) => Poll::Ready(me.ready.pop_front()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn item(id: i64) -> Item {
        Ok(Frame::from(ballast_api::etcdserverpb::WatchResponse {
            watch_id: id,
            ..Default::default()
        }))
    }

    fn id(i: Item) -> i64 {
        i.map(|f| f.into_response().watch_id).unwrap_or(-1)
    }

    #[tokio::test]
    async fn items_come_out_in_order_and_the_stream_ends_with_its_senders() {
        let (tx, rx) = channel(8);
        let tx2 = tx.clone();
        tx.try_send(item(1)).unwrap();
        assert!(tx2.try_send_all([item(2), item(3)]).unwrap().is_none());
        drop((tx, tx2));
        let got: Vec<i64> = ReceiverStream::new(rx).map(id).collect().await;
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_batch_that_does_not_fit_is_not_queued_at_all() {
        let (tx, rx) = channel(3);
        tx.try_send(item(1)).unwrap();
        assert!(matches!(
            tx.try_send_all([item(2), item(3), item(4)]),
            Err(TrySendError::Full(()))
        ));
        assert!(tx.try_send_all([item(2), item(3)]).is_ok());
        assert!(matches!(tx.try_send(item(4)), Err(TrySendError::Full(_))));
        drop(tx);
        let got: Vec<i64> = ReceiverStream::new(rx).map(id).collect().await;
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel(1);
        tx.try_send(item(1)).unwrap();
        let t = tokio::spawn(async move {
            tx.send(item(2)).await.map_err(|_| ())?;
            tx.closed().await;
            // Closed now: the item comes back.
            tx.send(item(3)).await.map(|_| ()).map_err(|_| ())
        });
        let mut s = ReceiverStream::new(rx);
        assert_eq!(s.next().await.map(id), Some(1));
        assert_eq!(s.next().await.map(id), Some(2));
        drop(s);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), t)
            .await
            .expect("sender sees the close");
        assert!(matches!(r, Ok(Err(()))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn senders_waiting_for_room_are_never_forgotten() {
        // A tiny queue, senders always waiting, a reader on another thread: a room signal
        // lost between a sender's check and its wait would stall this for good.
        const SENDERS: i64 = 2;
        let (tx, rx) = channel(1);
        let n = 10_000;
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..n {
                        if tx.send(item(s * n + i)).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let read = async {
            let mut s = ReceiverStream::new(rx);
            let mut last = [-1i64; SENDERS as usize];
            let mut count = 0;
            while let Some(i) = s.next().await {
                let v = id(i);
                let who = (v / n) as usize;
                assert!(v > last[who], "each sender's items in order");
                last[who] = v;
                count += 1;
            }
            count
        };
        let count = tokio::time::timeout(std::time::Duration::from_secs(30), read)
            .await
            .expect("no sender left waiting");
        assert_eq!(count, SENDERS * n);
        for s in senders {
            s.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_waiting_reader_is_handed_back_to_the_publisher() {
        let (tx, mut rx) = channel(4);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        assert!(rx.poll_drain(&mut cx, &mut out).is_pending());
        let w = tx.try_send_all([item(5)]).unwrap();
        assert!(w.is_some(), "the reader waits: its waker comes back");
        assert_eq!(rx.poll_drain(&mut cx, &mut out), Poll::Ready(true));
        assert_eq!(out.into_iter().map(id).collect::<Vec<_>>(), vec![5]);
    }
}
