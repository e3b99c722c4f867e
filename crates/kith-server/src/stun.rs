//! A STUN server for calls (RFC 8489): on UDP, it answers each Binding request
//! with the address and port the request came from (XOR-MAPPED-ADDRESS), which
//! is how a calling device learns its public address for ICE (its
//! server-reflexive candidate). Nothing is kept between datagrams.
//!
//! Only Binding is spoken, so the message is read and written here (a header,
//! three attributes) rather than through a STUN crate's whole codec. Relaying
//! media (TURN, RFC 8656) is left to a TURN server such as coturn, whose
//! credentials XEP-0215 hands out (`features::calls`).

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

/// RFC 8489 §5: the fixed value that tells STUN from other traffic.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
/// §14.7: what the CRC-32 of a FINGERPRINT is XORed with.
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Comprehension-required attributes (§14: below 0x8000) a Binding request
/// may carry that this server understands and has no use for: those of
/// authentication (a Binding needs none here) and of ICE (RFC 8445 §16.1).
const IGNORED: &[u16] = &[
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0014, // REALM
    0x0015, // NONCE
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0024, // PRIORITY
    0x0025, // USE-CANDIDATE
];
/// Most bytes of a request read; a longer datagram is not a Binding request.
const MAX_REQUEST: usize = 1280;

/// Answers Binding requests on `socket` until the server stops.
pub(crate) async fn serve(socket: UdpSocket) {
    let mut buf = vec![0u8; MAX_REQUEST + 1];
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
        if len > MAX_REQUEST {
            continue;
        }
        if let Some(answer) = answer(&buf[..len], peer)
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, "STUN: answering");
        }
    }
}

/// The response to one datagram, or `None` when it gets none (not STUN, not a
/// request, or not Binding: §6.3 says to drop what is not understood).
pub(crate) fn answer(datagram: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    if datagram.len() < HEADER {
        return None;
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    // §6.3: the two top bits are zero, the cookie is right, the length is the rest.
    if kind & 0xC000 != 0
        || cookie != MAGIC_COOKIE
        || length % 4 != 0
        || HEADER + length != datagram.len()
    {
        return None;
    }
    if kind != BINDING_REQUEST {
        return None;
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&datagram[8..HEADER]);
    let unknown = unknown_required(&datagram[HEADER..])?;
    let mut message = Message::new(
        if unknown.is_empty() {
            BINDING_SUCCESS
        } else {
            BINDING_ERROR
        },
        transaction,
    );
    if unknown.is_empty() {
        message.attribute(XOR_MAPPED_ADDRESS, &xor_address(peer, &transaction));
    } else {
        // §6.3.1: 420, naming them.
        let mut error = vec![0, 0, 4, 20];
        error.extend_from_slice(b"Unknown Attribute");
        message.attribute(ERROR_CODE, &error);
        let list: Vec<u8> = unknown.iter().flat_map(|a| a.to_be_bytes()).collect();
        message.attribute(UNKNOWN_ATTRIBUTES, &list);
    }
    message.attribute(SOFTWARE, b"kith");
    Some(message.finish())
}

/// The comprehension-required attributes of a request this server doesn't
/// know (§14), or `None` if the attributes don't parse.
fn unknown_required(mut attributes: &[u8]) -> Option<Vec<u16>> {
    let mut unknown = Vec::new();
    while !attributes.is_empty() {
        let head = attributes.get(..4)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let padded = 4 + len.div_ceil(4) * 4;
        if attributes.len() < padded {
            return None;
        }
        if kind < 0x8000 && !IGNORED.contains(&kind) && !unknown.contains(&kind) {
            unknown.push(kind);
        }
        attributes = &attributes[padded..];
    }
    Some(unknown)
}

/// XOR-MAPPED-ADDRESS (§14.2): the family, then port and address XORed with
/// the cookie (and, for IPv6, the transaction id).
fn xor_address(peer: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = Vec::with_capacity(20);
    match peer.ip().to_canonical() {
        IpAddr::V4(ip) => {
            value.extend_from_slice(&[0, 0x01]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            value.extend_from_slice(&[0, 0x02]);
            value.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction);
            value.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    value
}

/// A STUN message being written.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, transaction: [u8; 12]) -> Message {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&transaction);
        Message(bytes)
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        let bytes = &mut self.0;
        bytes.extend_from_slice(&kind.to_be_bytes());
        // Every value here is far below 64 KiB.
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        let length = bytes.len() - HEADER;
        self.set_length(length);
    }

    fn set_length(&mut self, length: usize) {
        self.0[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    }

    /// Adds FINGERPRINT (§14.7): the CRC-32 of everything before it, with the
    /// length already counting it.
    fn finish(mut self) -> Vec<u8> {
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

    /// The attributes of a response, by type.
    fn attributes(response: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut found = Vec::new();
        let mut rest = &response[HEADER..];
        while rest.len() >= 4 {
            let kind = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            found.push((kind, rest[4..4 + len].to_vec()));
            rest = &rest[4 + len.div_ceil(4) * 4..];
        }
        found
    }

    #[test]
    fn a_binding_request_learns_its_address_and_port() {
        // RFC 5769 §2.2's address, 192.0.2.1:32853, XORed: 0x8112 / 0xe112a643.
        let peer: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let response = answer(&request(&[]), peer).expect("answered");
        assert_eq!(&response[..2], &[0x01, 0x01], "a Binding success");
        assert_eq!(&response[8..20], b"0123456789ab", "the same transaction");
        assert_eq!(
            usize::from(u16::from_be_bytes([response[2], response[3]])),
            response.len() - HEADER
        );
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
    fn what_is_not_a_binding_request_gets_nothing() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let good = request(&[]);
        assert!(answer(&good[..19], peer).is_none(), "short");
        let mut bad_cookie = good.clone();
        bad_cookie[4] = 0;
        assert!(answer(&bad_cookie, peer).is_none(), "cookie");
        let mut indication = good.clone();
        indication[1] = 0x11;
        assert!(answer(&indication, peer).is_none(), "an indication");
        let mut long = good.clone();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert!(answer(&long, peer).is_none(), "length disagrees");
        let truncated = request(&[0x00, 0x24, 0, 8, 1, 2, 3, 4]);
        assert!(
            answer(&truncated, peer).is_none(),
            "an attribute past the end"
        );
        assert!(answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", peer).is_none());
    }
}
