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

/// The sending side's view of the peer's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendWindow {
    /// The peer's window; `None` for version 1 (no flow control).
    window: Option<u64>,
    /// Bytes handed over for sending, in all.
    reserved: u64,
    /// Bytes the peer's reader has consumed, in all, as last reported.
    consumed: u64,
}

impl SendWindow {
    /// No flow control (protocol version 1).
    pub(crate) fn unlimited() -> SendWindow {
        SendWindow {
            window: None,
            reserved: 0,
            consumed: 0,
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

    /// How many bytes may be sent now (`u64::MAX` without flow control).
    pub(crate) fn available(&self) -> u64 {
        match self.window {
            None => u64::MAX,
            Some(window) => window.saturating_sub(self.reserved - self.consumed),
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
}

impl ReceiveWindow {
    /// A receive window of `window` bytes.
    pub(crate) fn new(window: usize) -> ReceiveWindow {
        ReceiveWindow {
            window: window as u64,
            consumed: 0,
            reported: 0,
        }
    }

    /// The reader consumed `n` more bytes; returns the total to report to
    /// the peer when half a window has been consumed since the last report.
    pub(crate) fn consume(&mut self, n: usize) -> Option<u64> {
        self.consumed += n as u64;
        if self.consumed - self.reported >= (self.window / 2).max(1) {
            self.reported = self.consumed;
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
        assert_eq!(r.consume(30), None);
        assert_eq!(r.consume(19), None);
        assert_eq!(r.consume(1), Some(50));
        assert_eq!(r.consume(49), None);
        assert_eq!(r.consume(200), Some(299));
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
                if let Some(total) = receive.consume(limit) {
                    send.grant(total).unwrap();
                }
            }
        }
    }
}
