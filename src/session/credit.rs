//! Credit flow control of protocol version 2, as pure bookkeeping: the
//! send window a writer draws on, and the receive window a reader gives
//! back as it consumes.
//!
//! A sender may have at most the peer's `window` bytes written but not yet
//! consumed by the peer's application. The receiver reports the bytes its
//! application has consumed, cumulatively, whenever half a window has been
//! consumed since its last report. Senders cut their messages to at most
//! half the peer's window, so a reader that has consumed everything has
//! always reported enough for the next message: no deadlock.

/// The largest window a stream offers or takes from a peer: 64 MiB. A
/// peer that offers more (a hostile one may offer `i64::MAX` and never
/// read) gets no more than this in flight, so the broker's queue stays
/// bounded whatever the peer says.
pub(crate) const MAX_WINDOW: u64 = 64 << 20;

/// What one message costs a version-3 receiver beyond its body (the
/// protocol's figure, which the handshake advertises).
pub(crate) use crate::protocol::handshake::MESSAGE_COST;

/// The sending side's view of the peer's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendWindow {
    /// The peer's window; `None` for version 1 (no flow control).
    window: Option<u64>,
    /// Bytes handed over for sending, in all.
    reserved: u64,
    /// Bytes the peer's reader has consumed, in all, as last reported.
    consumed: u64,
    /// What each message costs on top of its bytes (version 3 with a peer
    /// that counts it; 0 otherwise).
    message_cost: u64,
    /// The data bytes sent, in all.
    sent: u64,
    /// Where each message sent and not yet covered by a report ends (only
    /// with a message cost).
    in_flight: std::collections::VecDeque<u64>,
}

impl SendWindow {
    /// No flow control (protocol version 1).
    pub(crate) fn unlimited() -> SendWindow {
        SendWindow {
            window: None,
            reserved: 0,
            consumed: 0,
            message_cost: 0,
            sent: 0,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// Flow control against a peer that offered `window` bytes (taken up
    /// to [`MAX_WINDOW`]).
    pub(crate) fn limited(window: u64) -> SendWindow {
        SendWindow {
            window: Some(window.min(MAX_WINDOW)),
            ..SendWindow::unlimited()
        }
    }

    /// Counts each message as `cost` bytes more than its body, as a peer
    /// that says so in its handshake does (see [`MESSAGE_COST`]).
    pub(crate) fn with_message_cost(mut self, cost: u64) -> SendWindow {
        self.message_cost = cost;
        self
    }

    /// How many bytes may be sent now (`u64::MAX` without flow control).
    pub(crate) fn available(&self) -> u64 {
        match self.window {
            None => u64::MAX,
            // The bytes stay within the window, as without a cost (a
            // writer may still fill the whole window before it reads);
            // with the messages' cost, within twice the window.
            Some(window) => {
                let bytes = self.reserved - self.consumed;
                let weighed = bytes + self.message_cost * self.in_flight.len() as u64;
                window
                    .saturating_sub(bytes)
                    .min((2 * window).saturating_sub(weighed))
            }
        }
    }

    /// A data message of `n` bytes (taken with [`try_reserve`] before)
    /// went out.
    ///
    /// [`try_reserve`]: SendWindow::try_reserve
    pub(crate) fn sent_message(&mut self, n: usize) {
        self.sent += n as u64;
        if self.message_cost > 0 && self.window.is_some() {
            self.in_flight.push_back(self.sent);
        }
    }

    /// Takes `n` bytes of credit if that much is available.
    pub(crate) fn try_reserve(&mut self, n: usize) -> bool {
        let n = n as u64;
        if n > self.available() {
            return false;
        }
        self.reserved += n;
        true
    }

    /// Gives back credit taken for bytes that were not sent after all.
    pub(crate) fn unreserve(&mut self, n: usize) {
        self.reserved = self.reserved.saturating_sub(n as u64).max(self.consumed);
    }

    /// Takes the peer's report of the bytes it has consumed in all. A
    /// report of more than was ever sent breaks the protocol.
    pub(crate) fn grant(&mut self, consumed: u64) -> Result<(), String> {
        if consumed > self.reserved {
            return Err(format!(
                "the peer reports {consumed} bytes consumed, but only {} were sent",
                self.reserved
            ));
        }
        self.consumed = self.consumed.max(consumed);
        while self
            .in_flight
            .front()
            .is_some_and(|&end| end <= self.consumed)
        {
            self.in_flight.pop_front();
        }
        Ok(())
    }
}

/// The largest message to send to a peer with this window: at most half
/// of it, so that credit always comes back in time.
pub(crate) fn message_limit(max_message_size: usize, peer_window: Option<u64>) -> usize {
    match peer_window {
        None => max_message_size,
        Some(window) => {
            let window = window.min(MAX_WINDOW);
            max_message_size.min(usize::try_from(window / 2).unwrap_or(usize::MAX))
        }
    }
    .max(1)
}

/// The receiving side: what the reader has consumed and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiveWindow {
    window: u64,
    consumed: u64,
    reported: u64,
    /// What each message read to the end counts on top of its bytes.
    message_cost: u64,
    /// Messages read to the end since the last report.
    messages: u64,
}

impl ReceiveWindow {
    /// A receive window of `window` bytes.
    pub(crate) fn new(window: usize) -> ReceiveWindow {
        ReceiveWindow {
            window: window as u64,
            consumed: 0,
            reported: 0,
            message_cost: 0,
            messages: 0,
        }
    }

    /// Counts each message read to the end as `cost` bytes more (see
    /// [`MESSAGE_COST`]).
    pub(crate) fn with_message_cost(mut self, cost: u64) -> ReceiveWindow {
        self.message_cost = cost;
        self
    }

    /// The reader consumed `n` more bytes, and with `message_done` read its
    /// message to the end; returns the total bytes to report to the peer
    /// when half a window (counting the messages' cost) has been consumed
    /// since the last report.
    pub(crate) fn consume(&mut self, n: usize, message_done: bool) -> Option<u64> {
        self.consumed += n as u64;
        if message_done {
            self.messages += 1;
        }
        let since = self.consumed - self.reported + self.message_cost * self.messages;
        if since >= (self.window / 2).max(1) {
            self.reported = self.consumed;
            self.messages = 0;
            Some(self.consumed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_blocks() {
        let mut w = SendWindow::unlimited();
        assert!(w.try_reserve(usize::MAX / 2));
        assert!(w.try_reserve(usize::MAX / 2));
    }

    #[test]
    fn limited_blocks_at_the_window_and_reopens_with_credit() {
        let mut w = SendWindow::limited(100);
        assert!(w.try_reserve(60));
        assert!(!w.try_reserve(41), "60 + 41 > 100");
        assert!(w.try_reserve(40));
        assert_eq!(w.available(), 0);
        assert_eq!(w.grant(50), Ok(()));
        assert_eq!(w.available(), 50);
        // Reports are cumulative: an older one changes nothing.
        assert_eq!(w.grant(30), Ok(()));
        assert_eq!(w.available(), 50);
        assert!(w.grant(101).unwrap_err().contains("only 100"));
        let mut huge = SendWindow::limited(i64::MAX as u64);
        assert_eq!(huge.available(), MAX_WINDOW, "a peer's offer is capped");
        assert!(!huge.try_reserve(MAX_WINDOW as usize + 1));
        w.unreserve(10);
        assert_eq!(w.available(), 60);
    }

    #[test]
    fn messages_are_cut_to_half_the_peer_window() {
        assert_eq!(message_limit(65536, None), 65536);
        assert_eq!(message_limit(65536, Some(1 << 20)), 65536);
        assert_eq!(message_limit(65536, Some(1000)), 500);
        assert_eq!(message_limit(65536, Some(2)), 1);
    }

    #[test]
    fn receiver_reports_every_half_window() {
        let mut r = ReceiveWindow::new(100);
        assert_eq!(r.consume(30, true), None);
        assert_eq!(r.consume(19, false), None);
        assert_eq!(r.consume(1, true), Some(50));
        assert_eq!(r.consume(49, true), None);
        assert_eq!(r.consume(200, true), Some(299));
    }

    #[test]
    fn a_message_cost_counts_on_both_ends() {
        let mut send = SendWindow::limited(1000).with_message_cost(100);
        for _ in 0..15 {
            assert!(send.try_reserve(1));
            send.sent_message(1);
        }
        // 15 bytes and 15 messages of 100 weigh 1515 of twice the window.
        assert_eq!(send.available(), 485);
        let mut receive = ReceiveWindow::new(1000).with_message_cost(100);
        let reports: Vec<_> = (0..15).filter_map(|_| receive.consume(1, true)).collect();
        // 5 bytes and 5 messages make half the window, three times.
        assert_eq!(reports, vec![5, 10, 15]);
        send.grant(5).unwrap();
        assert_eq!(send.available(), 990);
        // Large messages: the window's bytes, whatever their cost.
        let mut big = SendWindow::limited(1000).with_message_cost(100);
        assert!(big.try_reserve(500));
        big.sent_message(500);
        assert!(big.try_reserve(500));
        big.sent_message(500);
        assert_eq!(big.available(), 0);
    }

    /// The property the protocol relies on: with messages of at most half
    /// the window, a reader that consumed everything has reported enough
    /// credit for the next message.
    #[test]
    fn a_drained_reader_always_leaves_room_for_the_next_message() {
        for window in [2u64, 3, 7, 100, 1 << 20] {
            let limit = message_limit(usize::MAX, Some(window));
            let mut send = SendWindow::limited(window);
            let mut receive = ReceiveWindow::new(window as usize);
            for _ in 0..1000 {
                if !send.try_reserve(limit) {
                    panic!("window {window}: stuck with a drained reader");
                }
                if let Some(total) = receive.consume(limit, true) {
                    send.grant(total).unwrap();
                }
            }
        }
    }

    /// The same with a message cost, messages of any size up to the limit
    /// and reads that cut them anywhere.
    #[test]
    fn a_drained_reader_leaves_room_for_the_next_message_whatever_the_cost() {
        for window in [64u64, 1000, 1 << 16] {
            for cost in [1u64, 7, 512] {
                let limit = message_limit(usize::MAX, Some(window));
                let mut send = SendWindow::limited(window).with_message_cost(cost);
                let mut receive = ReceiveWindow::new(window as usize).with_message_cost(cost);
                let mut seed = window ^ cost;
                for _ in 0..500 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = 1 + (seed >> 33) as usize % limit;
                    if !send.try_reserve(n) {
                        panic!("window {window}, cost {cost}: stuck with a drained reader");
                    }
                    send.sent_message(n);
                    // Read in two pieces.
                    let first = n / 2;
                    if let Some(total) = receive.consume(first, false) {
                        send.grant(total).unwrap();
                    }
                    if let Some(total) = receive.consume(n - first, true) {
                        send.grant(total).unwrap();
                    }
                }
            }
        }
    }
}
