//! Stream management counters (XEP-0198) as pure state, no I/O.
//!
//! `h` values are 32-bit and wrap (XEP-0198 §5: "the value of 'h' MUST be
//! computed modulo 2^32"). Each stanza the server sends is remembered with the
//! inbox-log sequence number it carried (if any), so an ack from the client turns
//! into "this device has everything through log entry N"; the stanza itself is
//! kept too, to be sent again after a resumption (§5).

use std::collections::VecDeque;

/// Counters of one stream with management enabled; `T` is the kept stanza.
#[derive(Debug)]
pub struct StreamManagement<T> {
    /// Stanzas received from the client and handled (what we answer in `<a h/>`).
    pub inbound: u32,
    /// Stanzas sent to the client since `<enabled/>`.
    sent: u32,
    /// The client's last acknowledged count.
    acked: u32,
    /// Every sent and not yet acknowledged stanza with its inbox sequence number.
    unacked: VecDeque<(Option<i64>, T)>,
    /// Whether we asked with `<r/>` and have no answer yet.
    pub requested: bool,
}

impl<T> Default for StreamManagement<T> {
    fn default() -> Self {
        StreamManagement {
            inbound: 0,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }
}

/// The client acknowledged more than it was sent (XEP-0198 §4).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("handled count too high: acked {acked}, sent {sent}")]
pub struct HandledCountTooHigh {
    pub acked: u32,
    pub sent: u32,
}

impl<T> StreamManagement<T> {
    /// Records a stanza sent to the client.
    pub fn sent(&mut self, seq: Option<i64>, stanza: T) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back((seq, stanza));
    }

    /// Stanzas sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Forgets the unacknowledged stanzas and restarts the outbound count, as after
    /// they were sent again on a resumed stream.
    pub fn take_unacked(&mut self) -> Vec<(Option<i64>, T)> {
        self.sent = self.acked;
        self.unacked.drain(..).collect()
    }

    /// Applies the client's `<a h='…'/>`; returns the highest inbox sequence number
    /// now known to be received.
    pub fn ack(&mut self, h: u32) -> Result<Option<i64>, HandledCountTooHigh> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(HandledCountTooHigh {
                acked: h,
                sent: self.sent,
            });
        }
        self.acked = h;
        self.requested = false;
        let mut highest = None;
        for (seq, _) in self.unacked.drain(..newly) {
            if let Some(seq) = seq {
                highest = Some(highest.map_or(seq, |h: i64| h.max(seq)));
            }
        }
        if self.unacked.is_empty() {
            // Everything acknowledged: an idle session keeps no queue.
            self.unacked = VecDeque::new();
        }
        Ok(highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_release_stanzas_and_report_log_progress() {
        let mut sm = StreamManagement::default();
        sm.sent(Some(7), "a");
        sm.sent(None, "b");
        sm.sent(Some(8), "c");
        assert_eq!(sm.ack(2), Ok(Some(7)));
        assert_eq!(sm.unacked(), 1);
        assert_eq!(sm.ack(2), Ok(None));
        assert_eq!(sm.ack(3), Ok(Some(8)));
        assert_eq!(sm.unacked(), 0);
    }

    #[test]
    fn too_high_counts_are_refused() {
        let mut sm = StreamManagement::default();
        sm.sent(None, ());
        assert_eq!(sm.ack(2), Err(HandledCountTooHigh { acked: 2, sent: 1 }));
        // A count behind the last ack is also out of range (it would wrap).
        assert_eq!(sm.ack(1), Ok(None));
        assert!(sm.ack(0).is_err());
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = StreamManagement {
            sent: u32::MAX,
            acked: u32::MAX,
            ..StreamManagement::default()
        };
        sm.sent(Some(1), ());
        sm.sent(Some(2), ());
        assert_eq!(sm.ack(1), Ok(Some(2)));
    }

    #[test]
    fn resending_keeps_the_unacknowledged_in_order() {
        let mut sm = StreamManagement::default();
        sm.sent(Some(1), "one");
        sm.sent(Some(2), "two");
        assert_eq!(sm.ack(1), Ok(Some(1)));
        let again: Vec<_> = sm.take_unacked().into_iter().map(|(_, s)| s).collect();
        assert_eq!(again, ["two"]);
        // Resent stanzas are counted again as they go out.
        sm.sent(Some(2), "two");
        assert_eq!(sm.ack(2), Ok(Some(2)));
    }
}
