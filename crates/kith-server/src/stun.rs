//! The STUN/TURN listener for calls (`[listen] stun`, UDP). STUN (RFC 8489):
//! each Binding request is answered with the address and port it came from
//! (XOR-MAPPED-ADDRESS), which is how a calling device learns its public
//! address for ICE. TURN (RFC 8656, `turn.rs`) shares the socket: relayed
//! media for devices that can't reach each other directly.
//!
//! The messages are read and written here (a header and a few attributes)
//! rather than through a STUN crate's whole codec: this is all of it that
//! kith speaks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;

use crate::turn::Relay;

/// RFC 8489 §5: the fixed value that tells STUN from other traffic.
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_A442;
pub(crate) const HEADER: usize = 20;
pub(crate) const BINDING: u16 = 0x0001;
/// §5: the class bits of a message type.
pub(crate) const REQUEST: u16 = 0x0000;
pub(crate) const INDICATION: u16 = 0x0010;
pub(crate) const SUCCESS: u16 = 0x0100;
pub(crate) const ERROR: u16 = 0x0110;
pub(crate) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub(crate) const USERNAME: u16 = 0x0006;
pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
pub(crate) const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub(crate) const REALM: u16 = 0x0014;
pub(crate) const NONCE: u16 = 0x0015;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
/// §14.7: what the CRC-32 of a FINGERPRINT is XORed with.
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Comprehension-required attributes (§14: below 0x8000) a Binding request
/// may carry that this server understands and has no use for: those of
/// authentication (a Binding needs none here) and of ICE (RFC 8445 §16.1).
const BINDING_IGNORES: &[u16] = &[
    USERNAME,
    MESSAGE_INTEGRITY,
    REALM,
    NONCE,
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0024, // PRIORITY
    0x0025, // USE-CANDIDATE
];
/// Most bytes of a datagram read (media relayed over TURN fits an MTU); a
/// longer one is dropped.
pub(crate) const MAX_DATAGRAM: usize = 2048;

/// Answers on `socket` until the server stops: Binding requests, and TURN
/// when `relay` is set.
pub(crate) async fn serve(socket: Arc<UdpSocket>, relay: Option<Arc<Relay>>) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // A datagram's error (e.g. ICMP "port unreachable" for an earlier
            // answer) concerns that peer only.
            Err(error) => {
                tracing::debug!(%error, "STUN: receiving");
                continue;
            }
        };
        if len > MAX_DATAGRAM {
            continue;
        }
        let datagram = &buf[..len];
        let answer = match (Message::parse(datagram), &relay) {
            (Some(message), _) if message.kind == (BINDING | REQUEST) => binding(&message, peer),
            (Some(message), Some(relay)) => relay.handle(&message, peer),
            // RFC 8656 §12.4: ChannelData starts 0b01, where STUN starts 0b00.
            (None, Some(relay)) if datagram.first().is_some_and(|b| b & 0xC0 == 0x40) => {
                relay.channel_data(datagram, peer);
                None
            }
            _ => None,
        };
        if let Some(answer) = answer
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, "STUN: answering");
        }
    }
}

/// The answer to a Binding request: where it came from, or 420 for an
/// attribute it requires and this server doesn't know (§6.3.1).
fn binding(request: &Message<'_>, peer: SocketAddr) -> Option<Vec<u8>> {
    let unknown = request.unknown_required(BINDING_IGNORES);
    let mut answer = Writer::new(
        BINDING | if unknown.is_empty() { SUCCESS } else { ERROR },
        request.transaction,
    );
    if unknown.is_empty() {
        answer.attribute(XOR_MAPPED_ADDRESS, &xor_address(peer, &request.transaction));
    } else {
        answer.unknown_attributes(&unknown);
    }
    Some(answer.finish(None))
}

/// A STUN message read from a datagram (§5, §6.3): its type, transaction and
/// attributes, each with where it starts (for MESSAGE-INTEGRITY).
pub(crate) struct Message<'a> {
    pub kind: u16,
    pub transaction: [u8; 12],
    attributes: Vec<(u16, &'a [u8], usize)>,
    bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// `None` for what is not a well-formed STUN message: the two top bits
    /// set, another cookie, a length that disagrees, an attribute past the end.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Message<'a>> {
        let header = bytes.get(..HEADER)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if kind & 0xC000 != 0
            || cookie != MAGIC_COOKIE
            || length % 4 != 0
            || HEADER + length != bytes.len()
        {
            return None;
        }
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&header[8..HEADER]);
        let mut attributes = Vec::new();
        let mut at = HEADER;
        while at < bytes.len() {
            let head = bytes.get(at..at + 4)?;
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = bytes.get(at + 4..at + 4 + len)?;
            attributes.push((kind, value, at));
            at += 4 + len.div_ceil(4) * 4;
        }
        if at != bytes.len() {
            return None;
        }
        Some(Message {
            kind,
            transaction,
            attributes,
            bytes,
        })
    }

    /// The method (§5: the type without its class bits).
    pub(crate) fn method(&self) -> u16 {
        self.kind & !ERROR
    }

    /// The class: [`REQUEST`], [`INDICATION`], [`SUCCESS`] or [`ERROR`].
    pub(crate) fn class(&self) -> u16 {
        self.kind & ERROR
    }

    /// The first attribute of this type, before MESSAGE-INTEGRITY (§14.5:
    /// what follows it is not covered, so not believed).
    pub(crate) fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes
            .iter()
            .take_while(|(k, _, _)| *k != MESSAGE_INTEGRITY || kind == MESSAGE_INTEGRITY)
            .find(|(k, _, _)| *k == kind)
            .map(|(_, value, _)| *value)
    }

    /// Every attribute of this type (e.g. the peers of a CreatePermission).
    pub(crate) fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attributes
            .iter()
            .take_while(|(k, _, _)| *k != MESSAGE_INTEGRITY)
            .filter(move |(k, _, _)| *k == kind)
            .map(|(_, value, _)| *value)
    }

    /// The comprehension-required attributes (§14: below 0x8000) that are
    /// neither of `known` nor understood by every message.
    pub(crate) fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        let mut unknown = Vec::new();
        // §14.5: what follows MESSAGE-INTEGRITY is ignored.
        let covered = self
            .attributes
            .iter()
            .take_while(|(kind, _, _)| *kind != MESSAGE_INTEGRITY);
        for (kind, _, _) in covered {
            if *kind < 0x8000 && !known.contains(kind) && !unknown.contains(kind) {
                unknown.push(*kind);
            }
        }
        unknown
    }

    /// Whether MESSAGE-INTEGRITY is there and right for `key` (§14.5: an
    /// HMAC-SHA1 of the message before it, its length counting up to it).
    pub(crate) fn integrity_ok(&self, key: &[u8]) -> bool {
        use hmac::{Hmac, Mac};
        let Some((_, value, at)) = self
            .attributes
            .iter()
            .find(|(kind, _, _)| *kind == MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
            return false;
        };
        let length = (*at + 24 - HEADER) as u16;
        mac.update(&self.bytes[..2]);
        mac.update(&length.to_be_bytes());
        mac.update(&self.bytes[4..*at]);
        mac.verify_slice(value).is_ok()
    }
}

/// XOR-MAPPED-ADDRESS and the other XOR addresses (§14.2): the family, then
/// port and address XORed with the cookie (and, for IPv6, the transaction).
pub(crate) fn xor_address(addr: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = Vec::with_capacity(20);
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            value.extend_from_slice(&[0, 0x01]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            value.extend_from_slice(&[0, 0x02]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend(
                ip.octets()
                    .iter()
                    .zip(xor_key(transaction))
                    .map(|(a, k)| a ^ k),
            );
        }
    }
    value
}

/// The address an XOR address attribute holds.
pub(crate) fn read_xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let raw = u32::from_be_bytes([value[4], value[5], value[6], value[7]]);
            IpAddr::from((raw ^ MAGIC_COOKIE).to_be_bytes())
        }
        (0x02, 20) => {
            let mut octets = [0u8; 16];
            for (octet, (byte, key)) in octets
                .iter_mut()
                .zip(value[4..].iter().zip(xor_key(transaction)))
            {
                *octet = byte ^ key;
            }
            IpAddr::from(octets)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn xor_key(transaction: &[u8; 12]) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction);
    key
}

/// A STUN message being written.
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new(kind: u16, transaction: [u8; 12]) -> Writer {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&transaction);
        Writer(bytes)
    }

    pub(crate) fn attribute(&mut self, kind: u16, value: &[u8]) {
        let bytes = &mut self.0;
        bytes.extend_from_slice(&kind.to_be_bytes());
        // Values are datagram-sized at most, far below 64 KiB.
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        let length = bytes.len() - HEADER;
        self.set_length(length);
    }

    /// ERROR-CODE (§14.8): the class and number, then the reason.
    pub(crate) fn error(&mut self, code: u16, reason: &str) {
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        self.attribute(ERROR_CODE, &value);
    }

    /// §6.3.1: 420, naming the comprehension-required attributes not known.
    pub(crate) fn unknown_attributes(&mut self, unknown: &[u16]) {
        self.error(420, "Unknown Attribute");
        let list: Vec<u8> = unknown.iter().flat_map(|a| a.to_be_bytes()).collect();
        self.attribute(UNKNOWN_ATTRIBUTES, &list);
    }

    fn set_length(&mut self, length: usize) {
        self.0[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    }

    /// Adds SOFTWARE, MESSAGE-INTEGRITY when `key` is given (§14.5), and
    /// FINGERPRINT (§14.7: the CRC-32 of everything before it, with the
    /// length already counting it).
    pub(crate) fn finish(mut self, key: Option<&[u8]>) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        self.attribute(SOFTWARE, b"kith");
        if let Some(key) = key
            && let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key)
        {
            self.set_length(self.0.len() - HEADER + 24);
            mac.update(&self.0);
            let digest = mac.finalize().into_bytes();
            self.attribute(MESSAGE_INTEGRITY, &digest);
        }
        self.set_length(self.0.len() - HEADER + 8);
        let crc = crc32fast::hash(&self.0) ^ FINGERPRINT_XOR;
        self.0.extend_from_slice(&FINGERPRINT.to_be_bytes());
        self.0.extend_from_slice(&4u16.to_be_bytes());
        self.0.extend_from_slice(&crc.to_be_bytes());
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attributes: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x01];
        bytes.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(b"0123456789ab");
        bytes.extend_from_slice(attributes);
        bytes
    }

    fn answer(datagram: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let message = Message::parse(datagram)?;
        (message.kind == BINDING | REQUEST)
            .then(|| binding(&message, peer))
            .flatten()
    }

    /// The attributes of a response, by type.
    fn attributes(response: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let message = Message::parse(response).expect("well formed");
        message
            .attributes
            .iter()
            .map(|(kind, value, _)| (*kind, value.to_vec()))
            .collect()
    }

    #[test]
    fn a_binding_request_learns_its_address_and_port() {
        // RFC 5769 §2.2's address, 192.0.2.1:32853, XORed: 0xa147 / 0xe112a643.
        let peer: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let response = answer(&request(&[]), peer).expect("answered");
        assert_eq!(&response[..2], &[0x01, 0x01], "a Binding success");
        assert_eq!(&response[8..20], b"0123456789ab", "the same transaction");
        let found = attributes(&response);
        assert_eq!(
            found[0],
            (
                XOR_MAPPED_ADDRESS,
                vec![0, 1, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
            )
        );
        let (kind, crc) = found.last().unwrap();
        assert_eq!(*kind, FINGERPRINT);
        let expected = crc32fast::hash(&response[..response.len() - 8]) ^ FINGERPRINT_XOR;
        assert_eq!(crc, &expected.to_be_bytes());
        assert_eq!(
            read_xor_address(&found[0].1, b"0123456789ab"),
            Some(peer),
            "read back"
        );
    }

    #[test]
    fn an_ipv6_address_is_xored_with_the_transaction_too() {
        let peer: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let response = answer(&request(&[]), peer).expect("answered");
        let (_, value) = &attributes(&response)[0];
        assert_eq!(&value[..4], &[0, 2, 0xa1, 0x47]);
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend_from_slice(b"0123456789ab");
        let address: Vec<u8> = value[4..].iter().zip(&key).map(|(a, k)| a ^ k).collect();
        assert_eq!(
            address,
            "2001:db8:1234:5678:11:2233:4455:6677"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(read_xor_address(value, b"0123456789ab"), Some(peer));
    }

    #[test]
    fn ice_attributes_are_fine_and_an_unknown_required_one_gets_420() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // PRIORITY (understood), then SOFTWARE (optional: ignored).
        let ice = [
            0x00, 0x24, 0, 4, 1, 2, 3, 4, 0x80, 0x22, 0, 1, b'x', 0, 0, 0,
        ];
        assert_eq!(&answer(&request(&ice), peer).unwrap()[..2], &[0x01, 0x01]);
        let odd = [0x00, 0x03, 0, 4, 0, 0, 0, 6]; // CHANGE-REQUEST (RFC 5780)
        let response = answer(&request(&odd), peer).expect("answered");
        assert_eq!(&response[..2], &[0x01, 0x11], "a Binding error");
        let found = attributes(&response);
        assert_eq!(&found[0].1[2..4], &[4, 20]);
        assert_eq!(found[1], (UNKNOWN_ATTRIBUTES, vec![0x00, 0x03]));
    }

    #[test]
    fn what_is_not_a_stun_message_does_not_parse() {
        let good = request(&[]);
        assert!(Message::parse(&good).is_some());
        assert!(Message::parse(&good[..19]).is_none(), "short");
        let mut bad_cookie = good.clone();
        bad_cookie[4] = 0;
        assert!(Message::parse(&bad_cookie).is_none(), "cookie");
        let mut long = good.clone();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert!(Message::parse(&long).is_none(), "length disagrees");
        let truncated = request(&[0x00, 0x24, 0, 8, 1, 2, 3, 4]);
        assert!(
            Message::parse(&truncated).is_none(),
            "an attribute past the end"
        );
        assert!(Message::parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        let mut indication = good.clone();
        indication[1] = 0x11;
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(answer(&indication, peer).is_none(), "an indication");
    }

    #[test]
    fn message_integrity_round_trips_and_catches_a_change() {
        let mut writer = Writer::new(0x0003, *b"abcdefghijkl");
        writer.attribute(USERNAME, b"1700000000:alice@localhost");
        let bytes = writer.finish(Some(b"the key"));
        let message = Message::parse(&bytes).expect("parses");
        assert!(message.integrity_ok(b"the key"));
        assert!(!message.integrity_ok(b"another key"));
        let mut changed = bytes.clone();
        changed[HEADER + 5] ^= 1;
        assert!(!Message::parse(&changed).unwrap().integrity_ok(b"the key"));
    }
}
