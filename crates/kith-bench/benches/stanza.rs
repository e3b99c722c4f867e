//! Micro-benchmarks of kith's hot paths through `kith-proto`: parsing a continuous
//! stream of message stanzas and serialising one message.
//!
//! `cargo bench -p kith-bench --bench stanza`. Throughput is reported per call; the
//! stream benchmark feeds `STANZAS` stanzas per call, so stanzas/s = STANZAS / time.

use divan::counter::{BytesCount, ItemsCount};
use kith_proto::stream::Limits;
use kith_proto::{Element, StreamEvent, StreamParser};

const STANZAS: usize = 1000;

fn main() {
    divan::main();
}

fn one_message(i: usize) -> String {
    // ≈320 bytes, like a typical client message with a receipt request and an id.
    format!(
        "<message from='alice@localhost/phone' to='bob@localhost' type='chat' id='msg-{i:08}' \
         xml:lang='en'><body>Hello Bob, this is message number {i:08} of the benchmark \
         stream, long enough to look like a real chat line.</body>\
         <request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='o-{i:08}'/>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

fn stream_bytes() -> (Vec<u8>, Vec<u8>) {
    let header = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
        .to_vec();
    let mut body = String::new();
    for i in 0..STANZAS {
        body.push_str(&one_message(i));
    }
    (header, body.into_bytes())
}

/// A parser that has read the stream header.
fn opened_parser(header: &[u8]) -> StreamParser {
    let mut parser = StreamParser::new(Limits::default());
    parser.feed(header, &mut Vec::new()).expect("header parses");
    parser
}

/// Parses STANZAS messages fed in 4 KiB reads, as a socket would deliver them.
#[divan::bench]
fn parse_stream_1000_messages(bencher: divan::Bencher) {
    let (header, body) = stream_bytes();
    bencher
        .counter(ItemsCount::new(STANZAS))
        .counter(BytesCount::new(body.len()))
        .with_inputs(|| opened_parser(&header))
        .bench_local_values(|mut parser| {
            let mut events = Vec::with_capacity(64);
            let mut n = 0;
            for chunk in body.chunks(4096) {
                parser.feed(chunk, &mut events).expect("stream parses");
                n += events
                    .drain(..)
                    .filter(|e| matches!(e, StreamEvent::Stanza(_)))
                    .count();
            }
            assert_eq!(n, STANZAS);
            n
        });
}

/// Parses STANZAS messages that arrive one per read, with or without releasing the
/// parser after each read (what the server does when the socket then has nothing
/// more, so an idle session holds no parser buffers): the cost of allocating them
/// again, per stanza, in the worst case.
#[divan::bench(args = [false, true])]
fn parse_1000_messages_one_per_read(bencher: divan::Bencher, release: bool) {
    let (header, _) = stream_bytes();
    let messages: Vec<String> = (0..STANZAS).map(one_message).collect();
    bencher
        .counter(ItemsCount::new(STANZAS))
        .with_inputs(|| opened_parser(&header))
        .bench_local_values(|mut parser| {
            let mut events = Vec::with_capacity(4);
            for message in &messages {
                parser
                    .feed(message.as_bytes(), &mut events)
                    .expect("stream parses");
                if release {
                    parser.release();
                }
            }
            assert_eq!(events.len(), STANZAS);
            events.len()
        });
}

/// Parses one message as a WebSocket frame (RFC 7395: one stanza per message) or
/// a stored stanza read back from the log.
#[divan::bench]
fn parse_fragment_message(bencher: divan::Bencher) {
    let message = one_message(1);
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(message.len()))
        .bench(|| {
            kith_proto::stream::parse_fragment(
                divan::black_box(message.as_bytes()),
                Limits::default(),
            )
            .expect("message parses")
        });
}

/// Serialises one message element (what routing and fan-out write per recipient).
#[divan::bench]
fn serialize_message(bencher: divan::Bencher) {
    let (header, _) = stream_bytes();
    let mut parser = StreamParser::new(Limits::default());
    let mut events = Vec::new();
    parser.feed(&header, &mut events).expect("header parses");
    parser
        .feed(one_message(1).as_bytes(), &mut events)
        .expect("message parses");
    let msg: Element = events
        .into_iter()
        .find_map(|e| match e {
            StreamEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .expect("one stanza");
    bencher
        .counter(ItemsCount::new(1usize))
        .bench(|| divan::black_box(&msg).to_xml("jabber:client"));
}

/// Fan-out: serialise once, share the bytes with N recipients (the design's rule),
/// versus serialising per recipient with a rewritten `to`.
#[divan::bench(args = [10, 200])]
fn fanout_serialize_per_recipient(bencher: divan::Bencher, n: usize) {
    let (header, _) = stream_bytes();
    let mut parser = StreamParser::new(Limits::default());
    let mut events = Vec::new();
    parser.feed(&header, &mut events).expect("header parses");
    parser
        .feed(one_message(1).as_bytes(), &mut events)
        .expect("message parses");
    let Some(StreamEvent::Stanza(msg)) = events.into_iter().last() else {
        panic!("no stanza");
    };
    bencher.counter(ItemsCount::new(n)).bench(|| {
        let mut total = 0;
        for i in 0..n {
            let mut m = msg.clone();
            m.set_attr("to", format!("member{i}@localhost"));
            total += m.to_xml("jabber:client").len();
        }
        total
    });
}
