//! Stream management counters (XEP-0198) as pure state, no I/O.
//!
//! `h` values are 32-bit and wrap (XEP-0198 §5: "the value of 'h' MUST be
//! computed modulo 2^32"). Each stanza the server sends is remembered with the
//! inbox-log sequence number it carried (if any), so an ack from the client turns
//! into "this device has everything through log entry N".

use std::collections::VecDeque;

/// Counters of one stream with management enabled.
#[derive(Debug, Default)]
pub struct StreamManagement {
    /// Stanzas received from the client and handled (what we answer in `<a h/>`).
    pub inbound: u32,
    /// Stanzas sent to the client since `<enabled/>`.
    sent: u32,
    /// The client's last acknowledged count.
    acked: u32,
    /// For every sent and not yet acknowledged stanza, its inbox sequence number.
    unacked: VecDeque<Option<i64>>,
    /// Whether we asked with `<r/>` and have no answer yet.
    pub requested: bool,
}

/// The client acknowledged more than it was sent (XEP-0198 §4).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("handled count too high: acked {acked}, sent {sent}")]
pub struct HandledCountTooHigh {
    pub acked: u32,
    pub sent: u32,
}

impl StreamManagement {
    /// Records a stanza sent to the client.
    pub fn sent(&mut self, seq: Option<i64>) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(seq);
    }

    /// Stanzas sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
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
        for seq in self.unacked.drain(..newly).flatten() {
            highest = Some(highest.map_or(seq, |h: i64| h.max(seq)));
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
        sm.sent(Some(7));
        sm.sent(None);
        sm.sent(Some(8));
        assert_eq!(sm.ack(2), Ok(Some(7)));
        assert_eq!(sm.unacked(), 1);
        assert_eq!(sm.ack(2), Ok(None));
        assert_eq!(sm.ack(3), Ok(Some(8)));
        assert_eq!(sm.unacked(), 0);
    }

    #[test]
    fn too_high_counts_are_refused() {
        let mut sm = StreamManagement::default();
        sm.sent(None);
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
        sm.sent(Some(1));
        sm.sent(Some(2));
        assert_eq!(sm.ack(1), Ok(Some(2)));
    }
}
