//! Differential tests of `kith_proto::stream` against the rxml-based parser it
//! replaced (`reference/mod.rs`): random valid streams, random mutations of them,
//! and hand-written edge cases, each fed to both parsers in the same chunks (with
//! the same `release()` calls) and compared event by event.
//!
//! Every randomised test has a fixed seed and derives one seed per case from it, so
//! a failure names its case and reproduces. Environment variables:
//!
//! - `DIFF_SEED=<u64>`: another base seed for every randomised test;
//! - `DIFF_CASES=<n>`: run n cases per randomised test instead of the default;
//! - `DIFF_CASE=<i>`: run only case i (and print its input);
//! - `DIFF_LEARN=1`: the edge-case tests print where the reference's verdict (or,
//!   for an intended difference, either parser's) is not the one written down
//!   instead of failing (to write a new case down);
//! - `DIFF_SHOW=<n>`: show the first n disagreements of a randomised test (5);
//! - `DIFF_SHOW_INTENDED=1`: print each input whose disagreement was put down to
//!   intended differences, with their causes.
//!
//! Run with `--nocapture` to see each test's summary (cases, agreements, the error
//! conditions the two parsers named differently).
//!
//! Where rxml deviates from XML 1.0, Namespaces in XML 1.0 or RFC 6120, the new
//! parser deliberately differs (see [`Intended`]): (A) a lone CR in an attribute
//! value is a space; (B) CR LF and CR become LF in CDATA sections and after `]`;
//! (C) a repeated `xmlns` is refused; (D) whitespace may come before the root
//! element without an XML declaration, and before a fragment's element; (E)
//! `standalone='yes'|'no'` is accepted; (F) only `S` may come between stanzas;
//! (G) the xmlns namespace may not be declared; (H) another encoding is
//! unsupported-encoding. The edge-case tests assert the new parser's behaviour
//! there (with the section of the spec); the randomised tests put a disagreement
//! down to them only if, with the causes rewritten away, the two parsers agree
//! (see [`intended_differences`]), and count it. So do they a disagreement that is
//! only about when a parser decides: the input ended inside an item the reference
//! refused and the new parser (which parses an item once it has all of it) had not
//! finished, or in text the new parser refused and the reference had not read.
//!
//! Disagreements these tests found in the new parser, fixed there: a malformed
//! XML declaration without `?>` was read on to the size limit instead of refused
//! (see `a_broken_xml_declaration_is_refused_at_once`); U+FEFF in a name (XML 1.0
//! fifth edition §2.3 allows it, earlier editions and rxml don't: refused now);
//! empty text nodes from empty CDATA sections. Also (D): rxml refuses a fragment
//! that ends in a CR after its element.
//!
//! Other known differences, kept out of the generators or excused by the
//! comparison:
//! - the reference refuses any single name, attribute value or text token longer
//!   than 8 KiB (rxml's token cap): generated tokens are short;
//! - after `</stream:stream>` the reference ignores the rest of that chunk, the new
//!   parser refuses non-whitespace in it: nothing is generated after the close, and a
//!   mutation that puts something there is counted, not failed, when both emitted the
//!   same events up to the close;
//! - the reference is dead after its first error: both are compared up to it.
//! - an encoding name that is no `EncName` (XML 1.0 §4.3.3), such as `UTF-8`
//!   and a CR: the new parser refuses it as not well-formed, rxml accepts it.
//!   Generated declarations name `UTF-8`; a mutation can break the name (seed 35,
//!   case 11374), and that case fails: no rewrite explains it yet.
//!
//! Also counted rather than failed: rxml keeps attributes in a map sorted by
//! (namespace, local name), so the reference emits them in that order, not the
//! document's; attributes compare as sets unless `STRICT_ATTRIBUTE_ORDER` is set.
//! And a difference of condition between not-well-formed, restricted-xml,
//! policy-violation and unsupported-encoding is counted; any other difference of
//! condition fails.
//!
//! The valid-stream generator avoids a lone CR (not followed by LF) in attribute
//! values (A), so that most valid streams compare as they are; mutations produce it.

mod reference;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use kith_proto::StreamErrorCondition;
use kith_proto::stream::{self, Limits, StreamEvent, StreamParserError};
use kith_proto::xml::{Element, Node};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

/// Whether attributes must come in the same order from both parsers (the reference
/// sorts them); when false, an order difference is only counted.
const STRICT_ATTRIBUTE_ORDER: bool = false;

// ---------------------------------------------------------------------------
// Running both parsers
// ---------------------------------------------------------------------------

/// What the two parsers have in common.
trait Parser {
    fn feed(&mut self, data: &[u8], events: &mut Vec<StreamEvent>)
    -> Result<(), StreamParserError>;
    fn release(&mut self);
    fn is_released(&self) -> bool;
}

impl Parser for stream::StreamParser {
    fn feed(
        &mut self,
        data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        stream::StreamParser::feed(self, data, events)
    }
    fn release(&mut self) {
        stream::StreamParser::release(self);
    }
    fn is_released(&self) -> bool {
        stream::StreamParser::is_released(self)
    }
}

impl Parser for reference::StreamParser {
    fn feed(
        &mut self,
        data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        reference::StreamParser::feed(self, data, events)
    }
    fn release(&mut self) {
        // A check of the reference itself: `releasable` says what `release` does.
        let released = self.is_released() || self.releasable();
        reference::StreamParser::release(self);
        assert_eq!(released, self.is_released(), "reference: releasable()");
    }
    fn is_released(&self) -> bool {
        reference::StreamParser::is_released(self)
    }
}

/// How an input is cut into reads, and after which reads `release()` is called.
#[derive(Clone, Debug)]
struct Plan {
    /// Lengths of the chunks, summing to the input's length.
    chunks: Vec<usize>,
    /// `release[i]`: release after chunk i.
    release: Vec<bool>,
}

impl Plan {
    fn whole(len: usize) -> Plan {
        Plan {
            chunks: vec![len],
            release: vec![false],
        }
    }

    fn fixed(len: usize, size: usize, release: bool) -> Plan {
        let chunks: Vec<usize> = (0..len)
            .step_by(size)
            .map(|start| size.min(len - start))
            .collect();
        let release = vec![release; chunks.len()];
        Plan { chunks, release }
    }

    fn random(rng: &mut StdRng, len: usize) -> Plan {
        let max = *[1, 2, 3, 5, 8, 16, 64, 256, 4096].choose(rng).unwrap();
        let release_p = *[0.0, 0.0, 0.25, 1.0].choose(rng).unwrap();
        let mut chunks = Vec::new();
        let mut left = len;
        while left > 0 {
            let size = rng.random_range(1..=max).min(left);
            chunks.push(size);
            left -= size;
        }
        let release = chunks.iter().map(|_| rng.random_bool(release_p)).collect();
        Plan { chunks, release }
    }

    fn describe(&self) -> String {
        let sizes: Vec<String> = self.chunks.iter().map(usize::to_string).collect();
        let releases: Vec<String> = self
            .release
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(i, _)| i.to_string())
            .collect();
        format!(
            "chunks [{}], release after chunks [{}]",
            sizes.join(","),
            releases.join(",")
        )
    }
}

#[derive(Clone, Debug)]
struct Outcome {
    events: Vec<StreamEvent>,
    /// The first error, and the index of the chunk that caused it.
    error: Option<(usize, StreamParserError)>,
    /// How many `release()` calls left the parser released.
    releases: usize,
}

fn run(parser: &mut dyn Parser, input: &[u8], plan: &Plan) -> Outcome {
    let mut events = Vec::new();
    let mut releases = 0;
    let mut start = 0;
    for (i, (&size, &release)) in plan.chunks.iter().zip(&plan.release).enumerate() {
        let chunk = &input[start..start + size];
        start += size;
        if let Err(error) = parser.feed(chunk, &mut events) {
            return Outcome {
                events,
                error: Some((i, error)),
                releases,
            };
        }
        if release {
            parser.release();
            releases += usize::from(parser.is_released());
        }
    }
    Outcome {
        events,
        error: None,
        releases,
    }
}

fn run_both(input: &[u8], plan: &Plan, limits: Limits) -> (Outcome, Outcome) {
    let reference = run(&mut reference::StreamParser::new(limits), input, plan);
    let new = run(&mut stream::StreamParser::new(limits), input, plan);
    (reference, new)
}

/// `element` with the attributes of it and its descendants sorted by key.
fn sorted_attrs(element: &Element) -> Element {
    let mut out = element.clone();
    sort_attrs(&mut out);
    out
}

fn sort_attrs(element: &mut Element) {
    element.attrs.sort();
    for child in element.elements_mut() {
        sort_attrs(child);
    }
}

fn sorted_events(events: &[StreamEvent]) -> Vec<StreamEvent> {
    events
        .iter()
        .map(|event| match event {
            StreamEvent::Open(element) => StreamEvent::Open(sorted_attrs(element)),
            StreamEvent::Stanza(element) => StreamEvent::Stanza(sorted_attrs(element)),
            StreamEvent::Close => StreamEvent::Close,
        })
        .collect()
}

/// Two outcomes' events as compared: with attributes sorted unless
/// [`STRICT_ATTRIBUTE_ORDER`]; and whether only the order of attributes differs.
fn comparable(reference: &Outcome, new: &Outcome) -> (Vec<StreamEvent>, Vec<StreamEvent>, bool) {
    if STRICT_ATTRIBUTE_ORDER {
        return (reference.events.clone(), new.events.clone(), false);
    }
    let a = sorted_events(&reference.events);
    let b = sorted_events(&new.events);
    let order_only = a == b && reference.events != new.events;
    (a, b, order_only)
}

/// How the two parsers' results compare, when they don't contradict each other.
#[derive(Debug, PartialEq, Eq)]
enum Agreement {
    BothAccepted,
    BothRejected {
        /// The reference's and the new parser's conditions, when they differ within
        /// not-well-formed / restricted-xml / policy-violation / unsupported-encoding.
        conditions: Option<(StreamErrorCondition, StreamErrorCondition)>,
        /// The new parser emitted fewer events before its error than the reference
        /// (a prefix of them).
        fewer_events: bool,
    },
    /// Difference (b): the reference ignored non-whitespace after `</stream:stream>`
    /// in the same chunk, the new parser refused it.
    AfterClose,
}

/// The conditions whose mismatch is only counted: the reference names some
/// errors differently (`&foo;` is not-well-formed for it, restricted-xml by RFC
/// 6120 §11.1; an encoding other than UTF-8 is restricted-xml for it,
/// unsupported-encoding by RFC 6120 §4.9.3.22).
fn is_syntax_class(condition: StreamErrorCondition) -> bool {
    matches!(
        condition,
        StreamErrorCondition::NotWellFormed
            | StreamErrorCondition::RestrictedXml
            | StreamErrorCondition::PolicyViolation
            | StreamErrorCondition::UnsupportedEncoding
    )
}

/// Compares two outcomes of the same input and plan: `Err` describes a
/// disagreement that fails the test.
fn compare(reference: &Outcome, new: &Outcome) -> Result<Agreement, String> {
    let (ref_events, new_events, _) = comparable(reference, new);
    match (&reference.error, &new.error) {
        (None, None) => {
            if ref_events == new_events {
                Ok(Agreement::BothAccepted)
            } else {
                Err(format!(
                    "both accepted, different events:\n{}",
                    event_diff(&ref_events, &new_events)
                ))
            }
        }
        (None, Some((chunk, error))) => {
            if ref_events == new_events
                && new.events.last() == Some(&StreamEvent::Close)
                && error.condition == StreamErrorCondition::NotWellFormed
            {
                return Ok(Agreement::AfterClose);
            }
            Err(format!(
                "the reference accepted, the new parser refused at chunk {chunk}: {error:?}\n{}",
                event_diff(&ref_events, &new_events)
            ))
        }
        (Some((chunk, error)), None) => Err(format!(
            "the reference refused at chunk {chunk} ({error:?}), the new parser accepted\n{}",
            event_diff(&ref_events, &new_events)
        )),
        (Some((_, ref_error)), Some((_, new_error))) => {
            if !ref_events.starts_with(&new_events) {
                return Err(format!(
                    "both refused ({:?} / {:?}), but the new parser emitted events the reference did not:\n{}",
                    ref_error.condition,
                    new_error.condition,
                    event_diff(&ref_events, &new_events)
                ));
            }
            let conditions = if ref_error.condition == new_error.condition {
                None
            } else if is_syntax_class(ref_error.condition) && is_syntax_class(new_error.condition) {
                Some((ref_error.condition, new_error.condition))
            } else {
                return Err(format!(
                    "both refused, with different conditions: reference {ref_error:?}, new {new_error:?}"
                ));
            };
            Ok(Agreement::BothRejected {
                conditions,
                fewer_events: new.events.len() < reference.events.len(),
            })
        }
    }
}

fn event_diff(reference: &[StreamEvent], new: &[StreamEvent]) -> String {
    let same = reference
        .iter()
        .zip(new)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = format!(
        "  reference: {} events, new: {} events, the first {same} equal\n",
        reference.len(),
        new.len()
    );
    match (reference.get(same), new.get(same)) {
        (
            Some(StreamEvent::Open(a) | StreamEvent::Stanza(a)),
            Some(StreamEvent::Open(b) | StreamEvent::Stanza(b)),
        ) => {
            let _ = writeln!(
                out,
                "  event {same} differs at {}",
                element_diff(a, b, &format!("/{}", a.name))
            );
        }
        (a, b) => {
            let _ = writeln!(
                out,
                "  reference[{same}]: {a:?}\n  new[{same}]:       {b:?}"
            );
        }
    }
    out
}

/// Where two different elements first differ, as a path and the two sides.
fn element_diff(a: &Element, b: &Element, path: &str) -> String {
    if a.ns != b.ns || a.name != b.name {
        return format!(
            "{path}: name {{{}}}{} vs {{{}}}{}",
            a.ns, a.name, b.ns, b.name
        );
    }
    if a.attrs != b.attrs {
        return format!(
            "{path}: attributes\n    reference: {:?}\n    new:       {:?}",
            a.attrs, b.attrs
        );
    }
    for (i, (x, y)) in a.children.iter().zip(&b.children).enumerate() {
        match (x, y) {
            (Node::Element(x), Node::Element(y)) if x != y => {
                return element_diff(x, y, &format!("{path}/{i}:{}", x.name));
            }
            (x, y) if x != y => {
                return format!("{path}/{i}\n    reference: {x:?}\n    new:       {y:?}");
            }
            _ => {}
        }
    }
    format!(
        "{path}: {} children vs {}\n    reference: {:?}\n    new:       {:?}",
        a.children.len(),
        b.children.len(),
        a.children.get(b.children.len()),
        b.children.get(a.children.len())
    )
}

/// Bytes as a Rust string literal would spell them, invalid UTF-8 as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() || c == '\u{FEFF}' => {
                    let _ = write!(out, "{}", c.escape_unicode());
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Intended differences
// ---------------------------------------------------------------------------

/// Where the new parser deliberately differs from the reference, because rxml
/// deviates from XML 1.0, Namespaces in XML 1.0 or RFC 6120 there; and where the
/// two differ only by when they decide.
///
/// A disagreement is put down to (A) to (G) by rewriting the input so that the
/// cause is gone, in a way that leaves one parser's result as it was (checked),
/// and running both again: only if they then agree is the disagreement counted
/// instead of failed. Each rewrite changes nothing but the bytes of its cause, so
/// any other disagreement in the same input still fails. (H) is a difference of
/// condition, counted by [`compare`]; the last three are differences of timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Intended {
    /// (A) A CR not followed by LF in an attribute value: the new parser makes it a
    /// space (XML 1.0 §2.11, then §3.3.3); rxml refuses or drops it. Rewrite: a
    /// space, for which the new parser's result is the same.
    LoneCrInAttribute,
    /// (B) A CR right after `]` in a CDATA section: the new parser normalises CR LF
    /// and CR to LF (XML 1.0 §2.11); rxml keeps the CR (in character data it
    /// normalises it too, as far as seen). Rewrite, in CDATA and character data:
    /// CR LF to LF, CR to LF, for which the new parser's result is the same.
    CrAfterBracket,
    /// (C) Two `xmlns='…'` on one element: the new parser refuses them (XML 1.0
    /// §3.1, Unique Att Spec); rxml takes the last. Rewrite: all but the last
    /// blanked out, for which the reference's result is the same.
    DuplicateDefaultNamespace,
    /// (D) Whitespace before the root element without an XML declaration, or before
    /// a fragment's element: the new parser accepts it (XML 1.0 §2.1, §2.8: `Misc`
    /// includes `S`); rxml refuses it. Rewrite: the whitespace removed, for which the
    /// new parser's result is the same.
    LeadingWhitespace,
    /// (E) `standalone='yes'|'no'` in the XML declaration: the new parser accepts it
    /// (XML 1.0 §2.9); rxml takes only `yes`, after `encoding`. Rewrite: blanked
    /// out, for which the new parser's result is the same.
    Standalone,
    /// (F) Between stanzas (or after a fragment's element), a character reference, a
    /// CDATA section or a non-ASCII character that is whitespace to
    /// `char::is_whitespace`: the new parser refuses it, only `S` is whitespace
    /// there (RFC 6120 §4.6.1, XML 1.0 §2.3, §2.8); rxml accepts it. Rewrite:
    /// spaces instead, for which the reference's result is the same.
    NotSpaceBetweenStanzas,
    /// (G) A prefix bound to, or the default namespace declared as, the xmlns
    /// namespace: the new parser refuses it (Namespaces in XML 1.0 §3, Reserved
    /// Prefixes and Namespace Names); rxml accepts it. Rewrite: another namespace of
    /// the same length, for which the reference's result is the same but for that
    /// namespace.
    XmlnsNamespace,
    /// The input ended inside the stream header (or the XML declaration before
    /// it), which the reference refused while the new parser (which parses the
    /// header once its `>` arrives) was still reading it.
    UnfinishedHeader,
    /// The input ended inside a stanza (or the closing tag) the reference refused,
    /// which the new parser (which parses a stanza once its end tag arrives) was
    /// still reading.
    UnfinishedStanza,
    /// The input ended in text or a CDATA section (between stanzas, or before the
    /// header) the new parser refused, which the reference had not read yet (it
    /// holds text back until it sees what follows).
    PendingText,
}

impl Intended {
    fn describe(self) -> &'static str {
        match self {
            Intended::LoneCrInAttribute => "(A) lone CR in an attribute value",
            Intended::CrAfterBracket => "(B) CR after ']' in CDATA",
            Intended::DuplicateDefaultNamespace => "(C) duplicate xmlns='...'",
            Intended::LeadingWhitespace => "(D) whitespace around the root / fragment",
            Intended::Standalone => "(E) standalone in the XML declaration",
            Intended::NotSpaceBetweenStanzas => "(F) non-S whitespace between stanzas",
            Intended::XmlnsNamespace => "(G) the xmlns namespace declared",
            Intended::UnfinishedHeader => "input ended in a header the reference refused",
            Intended::UnfinishedStanza => {
                "input ended in a stanza (or the close) the reference refused"
            }
            Intended::PendingText => "input ended in text/CDATA the reference had not read",
        }
    }
}

/// Which parser's result a rewrite leaves as it was.
#[derive(Clone, Copy)]
enum Unchanged {
    New,
    Reference,
}

/// What an input is fed to.
#[derive(Clone)]
enum Subject {
    Stream { plan: Plan, limits: Limits },
    Fragment { limits: Limits },
}

impl Subject {
    fn run(&self, input: &[u8]) -> (Outcome, Outcome) {
        match self {
            Subject::Stream { plan, limits } => run_both(input, plan, *limits),
            Subject::Fragment { limits } => (
                fragment_outcome(reference::parse_fragment(input, *limits)),
                fragment_outcome(stream::parse_fragment(input, *limits)),
            ),
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self, Subject::Stream { .. })
    }

    /// The subject for the input with the bytes at `deleted` removed.
    fn without(&self, deleted: &[usize]) -> Subject {
        match self {
            Subject::Stream { plan, limits } => Subject::Stream {
                plan: plan.without(deleted),
                limits: *limits,
            },
            Subject::Fragment { .. } => self.clone(),
        }
    }
}

/// A `parse_fragment` result as the outcome of a stream: its element as a stanza.
fn fragment_outcome(result: Result<Element, StreamParserError>) -> Outcome {
    match result {
        Ok(element) => Outcome {
            events: vec![StreamEvent::Stanza(element)],
            error: None,
            releases: 0,
        },
        Err(error) => Outcome {
            events: Vec::new(),
            error: Some((0, error)),
            releases: 0,
        },
    }
}

impl Plan {
    /// This plan for the input with the bytes at `deleted` (sorted positions)
    /// removed: a chunk left empty is dropped, its release moved to the chunk
    /// before it.
    fn without(&self, deleted: &[usize]) -> Plan {
        let mut plan = Plan {
            chunks: Vec::new(),
            release: Vec::new(),
        };
        let mut deleted = deleted.iter().peekable();
        let mut end = 0;
        for (&size, &release) in self.chunks.iter().zip(&self.release) {
            end += size;
            let mut left = size;
            while deleted.next_if(|&&at| at < end).is_some() {
                left -= 1;
            }
            if left > 0 {
                plan.chunks.push(left);
                plan.release.push(release);
            } else if let Some(last) = plan.release.last_mut() {
                *last |= release;
            }
        }
        plan
    }
}

/// An input rewritten: the bytes, and the positions of the original's bytes
/// removed (sorted).
struct Rewritten {
    input: Vec<u8>,
    deleted: Vec<usize>,
}

/// Applies `edits` (sorted, not overlapping: at, length, bytes no longer than
/// the length); `None` if there are none. The bytes a replacement is shorter by
/// count as removed.
fn apply(input: &[u8], edits: &[(usize, usize, Vec<u8>)]) -> Option<Rewritten> {
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut deleted = Vec::new();
    let mut at = 0;
    for (start, len, bytes) in edits {
        assert!(*start >= at && bytes.len() <= *len, "edits out of order");
        out.extend_from_slice(&input[at..*start]);
        out.extend_from_slice(bytes);
        deleted.extend(start + bytes.len()..start + len);
        at = start + len;
    }
    out.extend_from_slice(&input[at..]);
    Some(Rewritten {
        input: out,
        deleted,
    })
}

fn blank(range: &std::ops::Range<usize>) -> (usize, usize, Vec<u8>) {
    (range.start, range.len(), vec![b' '; range.len()])
}

fn is_s(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// What a lenient scan of a (possibly mutated) input finds: only a guide to
/// where a rewrite may apply, every rewrite is checked by running the parsers.
enum Token {
    /// Character data, and how many elements are open around it (the stream's
    /// root counts).
    Text {
        range: std::ops::Range<usize>,
        depth: usize,
    },
    CData {
        whole: std::ops::Range<usize>,
        content: std::ops::Range<usize>,
        depth: usize,
    },
    StartTag {
        attrs: Vec<Attr>,
    },
}

struct Attr {
    /// From the whitespace before the name through the closing quote.
    whole: std::ops::Range<usize>,
    name: std::ops::Range<usize>,
    /// Between the quotes.
    value: std::ops::Range<usize>,
}

fn find(input: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    input
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

fn scan(input: &[u8]) -> Vec<Token> {
    let len = input.len();
    let after =
        |from: usize, needle: &[u8]| find(input, from, needle).map_or(len, |at| at + needle.len());
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < len {
        let rest = &input[i..];
        if rest.starts_with(b"<![CDATA[") {
            let start = i + b"<![CDATA[".len();
            let end = find(input, start, b"]]>").unwrap_or(len);
            let whole_end = (end + 3).min(len);
            tokens.push(Token::CData {
                whole: i..whole_end,
                content: start..end,
                depth,
            });
            i = whole_end;
        } else if rest.starts_with(b"<?") {
            i = after(i, b"?>");
        } else if rest.starts_with(b"<!--") {
            i = after(i, b"-->");
        } else if rest.starts_with(b"<!") {
            i = after(i, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = after(i, b">");
        } else if rest[0] == b'<' {
            let (attrs, end, empty) = scan_start_tag(input, i);
            tokens.push(Token::StartTag { attrs });
            depth += usize::from(!empty);
            i = end;
        } else {
            let end = memchr_lt(input, i);
            tokens.push(Token::Text {
                range: i..end,
                depth,
            });
            i = end;
        }
    }
    tokens
}

fn memchr_lt(input: &[u8], from: usize) -> usize {
    input[from..]
        .iter()
        .position(|&b| b == b'<')
        .map_or(input.len(), |at| from + at)
}

/// The attributes of the start tag at `at`, where it ends, whether it is empty.
fn scan_start_tag(input: &[u8], at: usize) -> (Vec<Attr>, usize, bool) {
    let len = input.len();
    let give_up = |attrs, from: usize| {
        let end = find(input, from, b">").map_or(len, |end| end + 1);
        (attrs, end, end >= 2 && input[end - 2] == b'/')
    };
    let mut i = at + 1;
    while i < len && !is_s(input[i]) && !matches!(input[i], b'>' | b'/' | b'<') {
        i += 1;
    }
    let mut attrs = Vec::new();
    loop {
        let space = i;
        while i < len && is_s(input[i]) {
            i += 1;
        }
        match input.get(i..i + 2) {
            None if i >= len => return (attrs, len, false),
            _ if input[i] == b'>' => return (attrs, i + 1, false),
            Some(b"/>") => return (attrs, i + 2, true),
            _ => {}
        }
        let name_start = i;
        while i < len && !is_s(input[i]) && !matches!(input[i], b'=' | b'>' | b'/' | b'\'' | b'"') {
            i += 1;
        }
        let name = name_start..i;
        while i < len && is_s(input[i]) {
            i += 1;
        }
        if name.is_empty() || input.get(i) != Some(&b'=') {
            return give_up(attrs, i);
        }
        i += 1;
        while i < len && is_s(input[i]) {
            i += 1;
        }
        let Some(&quote) = input.get(i).filter(|&&q| q == b'\'' || q == b'"') else {
            return give_up(attrs, i);
        };
        let Some(end) = find(input, i + 1, &[quote]) else {
            return (attrs, len, false);
        };
        attrs.push(Attr {
            whole: space..end + 1,
            name,
            value: i + 1..end,
        });
        i = end + 1;
    }
}

/// A stand-in for the xmlns namespace, of the same length.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";
const XMLNS_STAND_IN: &str = "http://www.w3.org/2000/xmlnX/";

/// `outcome` with the stand-in for the xmlns namespace turned back into it.
fn without_stand_in(outcome: &Outcome) -> Outcome {
    fn restore(element: &mut Element) {
        if element.ns == XMLNS_STAND_IN {
            element.ns = XMLNS_NS.into();
        }
        let stand_in = format!("{{{XMLNS_STAND_IN}}}");
        for (key, _) in &mut element.attrs {
            if let Some(local) = key.strip_prefix(&stand_in) {
                *key = format!("{{{XMLNS_NS}}}{local}").into();
            }
        }
        for child in element.elements_mut() {
            restore(child);
        }
    }
    let mut out = outcome.clone();
    for event in &mut out.events {
        if let StreamEvent::Open(e) | StreamEvent::Stanza(e) = event {
            restore(e);
        }
    }
    out
}

/// The rewrite that removes the cause of `what` from `input`, if it has one.
fn rewrite(what: Intended, input: &[u8], tokens: &[Token], stream: bool) -> Option<Rewritten> {
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    match what {
        Intended::LoneCrInAttribute => {
            for token in tokens {
                let Token::StartTag { attrs } = token else {
                    continue;
                };
                for attr in attrs {
                    for at in attr.value.clone() {
                        if input[at] == b'\r' && input.get(at + 1) != Some(&b'\n') {
                            edits.push((at, 1, b" ".to_vec()));
                        }
                    }
                }
            }
        }
        Intended::CrAfterBracket => {
            for token in tokens {
                let range = match token {
                    Token::Text { range, .. } => range,
                    Token::CData { content, .. } => content,
                    Token::StartTag { .. } => continue,
                };
                for at in range.start + 1..range.end {
                    if input[at] == b'\r' && input[at - 1] == b']' {
                        let lf = input.get(at + 1) == Some(&b'\n');
                        edits.push((at, 1, if lf { Vec::new() } else { b"\n".to_vec() }));
                    }
                }
            }
        }
        Intended::DuplicateDefaultNamespace => {
            for token in tokens {
                let Token::StartTag { attrs } = token else {
                    continue;
                };
                let defaults: Vec<&Attr> = attrs
                    .iter()
                    .filter(|attr| &input[attr.name.clone()] == b"xmlns")
                    .collect();
                if let Some((_, earlier)) = defaults.split_last() {
                    edits.extend(earlier.iter().map(|attr| blank(&attr.whole)));
                }
            }
        }
        Intended::LeadingWhitespace => {
            let spaces = input.iter().take_while(|&&b| is_s(b)).count();
            let rest = &input[spaces..];
            if spaces > 0 && rest.starts_with(b"<") && !rest.starts_with(b"<?xml") {
                edits.push((0, spaces, Vec::new()));
            }
            // rxml also refuses a fragment ending in a CR after its element
            // ("invalid eof in text node"); trailing `S` is `Misc` (XML 1.0 §2.1).
            let trailing = input.iter().rev().take_while(|&&b| is_s(b)).count();
            let tail = &input[input.len() - trailing..];
            if !stream && trailing > 0 && trailing < input.len() && tail.contains(&b'\r') {
                edits.push((input.len() - trailing, trailing, Vec::new()));
            }
        }
        Intended::Standalone => edits.extend(standalone(input)),
        Intended::NotSpaceBetweenStanzas => {
            // Between stanzas: inside the stream's root; after a fragment's element:
            // outside any.
            let between = usize::from(stream);
            let mut after_header = false;
            for token in tokens {
                match token {
                    Token::StartTag { .. } => after_header = true,
                    Token::Text { range, depth } if after_header && *depth == between => {
                        let text = &input[range.clone()];
                        if !text.iter().all(|&b| is_s(b)) && decoded_whitespace(text) {
                            edits.push(blank(range));
                        }
                    }
                    Token::CData {
                        whole,
                        content,
                        depth,
                    } if after_header
                        && *depth == between
                        && std::str::from_utf8(&input[content.clone()])
                            .is_ok_and(|text| text.chars().all(char::is_whitespace)) =>
                    {
                        edits.push(blank(whole));
                    }
                    _ => {}
                }
            }
        }
        Intended::XmlnsNamespace => {
            for token in tokens {
                let Token::StartTag { attrs } = token else {
                    continue;
                };
                for attr in attrs {
                    let name = &input[attr.name.clone()];
                    if (name == b"xmlns" || name.starts_with(b"xmlns:"))
                        && &input[attr.value.clone()] == XMLNS_NS.as_bytes()
                    {
                        edits.push((
                            attr.value.start,
                            attr.value.len(),
                            XMLNS_STAND_IN.as_bytes().to_vec(),
                        ));
                    }
                }
            }
        }
        Intended::UnfinishedHeader | Intended::UnfinishedStanza | Intended::PendingText => {}
    }
    apply(input, &edits)
}

/// Where ` standalone='yes'|'no'` is in the XML declaration `input` starts with,
/// as an edit that blanks it out.
fn standalone(input: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    if !input.starts_with(b"<?xml") || !input.get(5).is_some_and(|&b| is_s(b)) {
        return None;
    }
    let end = find(input, 0, b"?>")?;
    let at = find(&input[..end], 0, b"standalone")?;
    let start = input[..at].iter().rposition(|&b| !is_s(b))? + 1;
    let skip_s = |mut i: usize| {
        while i < end && is_s(input[i]) {
            i += 1;
        }
        i
    };
    let i = skip_s(at + b"standalone".len());
    if input[i] != b'=' || start == at {
        return None;
    }
    let i = skip_s(i + 1);
    let value = [&b"'yes'"[..], b"\"yes\"", b"'no'", b"\"no\""]
        .into_iter()
        .find(|value| input[i..end].starts_with(value))?;
    Some(blank(&(start..i + value.len())))
}

/// Whether `text` (character data with references) is, decoded, nothing but
/// characters `char::is_whitespace` accepts.
fn decoded_whitespace(text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '&' {
            let Some(end) = rest.find(';') else {
                return false;
            };
            let code = match rest[1..end].strip_prefix("#x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => rest[1..end].strip_prefix('#').and_then(|d| d.parse().ok()),
            };
            if !code
                .and_then(char::from_u32)
                .is_some_and(char::is_whitespace)
            {
                return false;
            }
            rest = &rest[end + 1..];
        } else {
            if !c.is_whitespace() {
                return false;
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    true
}

/// The rewrites tried, in order, and whose result each leaves as it was.
const REWRITES: &[(Intended, Unchanged)] = &[
    (Intended::LoneCrInAttribute, Unchanged::New),
    (Intended::CrAfterBracket, Unchanged::New),
    (Intended::DuplicateDefaultNamespace, Unchanged::Reference),
    (Intended::LeadingWhitespace, Unchanged::New),
    (Intended::Standalone, Unchanged::New),
    (Intended::NotSpaceBetweenStanzas, Unchanged::Reference),
    (Intended::XmlnsNamespace, Unchanged::Reference),
];

/// When `reference` and `new` (the results of `subject` on `input`) disagree:
/// the intended differences that explain it all; or, if they don't, what is left
/// of the disagreement once those found are rewritten away (empty if none was).
///
/// The rewrites are applied in turn (see [`rewrite_chain`]); the two parsers must
/// then agree on what is left, or differ only by when they decide. The causes
/// counted are the rewrites the agreement needs (all of those kept if none is
/// needed alone), and that difference of timing.
fn intended_differences(
    input: &[u8],
    subject: &Subject,
    reference: &Outcome,
    new: &Outcome,
) -> Result<Vec<Intended>, String> {
    let Chain {
        kept,
        end,
        input: rewritten,
        left,
    } = rewrite_chain(input, subject, reference, new, None);
    let Some(end) = end else {
        if kept.is_empty() {
            return Err(String::new());
        }
        let kept: Vec<&str> = kept.iter().map(|cause| cause.describe()).collect();
        return Err(format!(
            "\n  with {} rewritten away, the input is {}\n  and still: {left}",
            kept.join(", "),
            escape(&rewritten),
        ));
    };
    let mut causes: Vec<Intended> = kept
        .iter()
        .copied()
        .filter(|&cause| {
            rewrite_chain(input, subject, reference, new, Some(cause)).end != Some(end)
        })
        .collect();
    if causes.is_empty() {
        causes = kept;
    }
    causes.extend(end);
    if causes.is_empty() {
        return Err(String::new());
    }
    Ok(causes)
}

/// What [`rewrite_chain`] found.
struct Chain {
    /// The rewrites kept.
    kept: Vec<Intended>,
    /// How the parsers' results on what is left compare: `None` if they disagree,
    /// `Some(None)` if they agree, `Some(Some(timing))` if they differ only by when
    /// they decide.
    end: Option<Option<Intended>>,
    /// The input with those rewrites applied.
    input: Vec<u8>,
    /// Why the parsers disagree on it, if they do.
    left: String,
}

/// Applies the rewrites (but `skip`) one after the other: each whose cause the
/// input has is kept if the parser it is for gives the same result (events and
/// condition) on the rewritten input.
fn rewrite_chain(
    input: &[u8],
    subject: &Subject,
    reference: &Outcome,
    new: &Outcome,
    skip: Option<Intended>,
) -> Chain {
    let mut kept = Vec::new();
    let mut input = input.to_vec();
    let mut subject = subject.clone();
    let mut reference = reference.clone();
    let mut new = new.clone();
    for &(what, unchanged) in REWRITES {
        if skip == Some(what) {
            continue;
        }
        let tokens = scan(&input);
        let Some(rewritten) = rewrite(what, &input, &tokens, subject.is_stream()) else {
            continue;
        };
        let next = subject.without(&rewritten.deleted);
        let (next_reference, next_new) = next.run(&rewritten.input);
        let same = match unchanged {
            Unchanged::New => same_result(&new, &next_new),
            Unchanged::Reference => same_result(&reference, &without_stand_in(&next_reference)),
        };
        if same {
            kept.push(what);
            (input, subject, reference, new) = (rewritten.input, next, next_reference, next_new);
        }
    }
    let (end, left) = match compare(&reference, &new) {
        Ok(_) => (Some(None), String::new()),
        Err(why) => {
            let timing = match &subject {
                Subject::Stream { plan, limits } => timing(&input, plan, *limits, &reference, &new),
                Subject::Fragment { .. } => None,
            };
            (timing.map(Some), why)
        }
    };
    Chain {
        kept,
        end,
        input,
        left,
    }
}

/// Whether the two parsers differ only by when they decide, on an input that
/// ends before the reference or the new parser has read what it would refuse:
/// - the reference refused the item (header or stanza) the input ends in, which
///   the new parser (which parses an item once it has all of it) had not finished;
/// - the new parser refused the text or CDATA section the input ends in, which
///   the reference (which holds text back until it sees what follows it) had not
///   read: given what ends it (`]]><`), it refuses it too.
///
/// They must agree up to there.
fn timing(
    input: &[u8],
    plan: &Plan,
    limits: Limits,
    reference: &Outcome,
    new: &Outcome,
) -> Option<Intended> {
    let (a, b, _) = comparable(reference, new);
    if a != b || new.events.last() == Some(&StreamEvent::Close) {
        return None;
    }
    match (&reference.error, &new.error) {
        (Some(_), None) => {
            if input.iter().all(|&b| is_s(b)) {
                return None;
            }
            // Fed whole, the new parser is inside an item, not between stanzas.
            let mut parser = stream::StreamParser::new(limits);
            if parser.feed(input, &mut Vec::new()).is_err() || parser.releasable() {
                return None;
            }
            if !new.events.is_empty() {
                return Some(Intended::UnfinishedStanza);
            }
            // Not inside an XML declaration that has already gone wrong: no `<` or
            // `>` may come before its `?>` (see the report on the framer).
            let declaration = input.strip_prefix(b"<?").unwrap_or_default();
            let ended = find(declaration, 0, b"?>").is_some();
            let wrong = declaration.iter().any(|&b| b == b'<' || b == b'>');
            (ended || !wrong).then_some(Intended::UnfinishedHeader)
        }
        (None, Some((_, error))) => {
            // Whatever the reference holds back ends: text, a CDATA section.
            const END: &[u8] = b"]]><";
            let mut longer = input.to_vec();
            longer.extend_from_slice(END);
            let mut plan = plan.clone();
            *plan.chunks.last_mut()? += END.len();
            let reference = run(&mut reference::StreamParser::new(limits), &longer, &plan);
            let refused = reference
                .error
                .is_some_and(|(_, e)| e.condition == error.condition);
            (refused && sorted_events(&reference.events) == b).then_some(Intended::PendingText)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Running many cases
// ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: not a number")),
    )
}

/// Counts what a randomised test saw, to print at its end.
#[derive(Default)]
struct Summary {
    cases: usize,
    runs: usize,
    accepted: usize,
    rejected: usize,
    after_close: usize,
    fewer_events: usize,
    fragments: usize,
    fragments_accepted: usize,
    releases_reference: usize,
    releases_new: usize,
    /// Runs and fragments whose results differ only in the order of attributes.
    attribute_order: usize,
    /// Runs where the reference's own result (events and condition) differed from
    /// its result on the whole input.
    reference_chunking: usize,
    /// (reference, new) condition pairs that differ within the syntax class.
    conditions: BTreeMap<(&'static str, &'static str), usize>,
    /// Reference conditions of rejected runs.
    rejected_as: BTreeMap<&'static str, usize>,
    /// Runs and fragments whose disagreement is all intended, by cause.
    intended: BTreeMap<Intended, usize>,
    /// Runs the new parser accepted (whether or not the reference did).
    new_accepted: usize,
    failures: Vec<String>,
}

impl Summary {
    fn record(&mut self, agreement: &Agreement, reference: &Outcome, new: &Outcome) {
        self.runs += 1;
        self.attribute_order += usize::from(comparable(reference, new).2);
        self.releases_reference += reference.releases;
        self.releases_new += new.releases;
        match agreement {
            Agreement::BothAccepted => self.accepted += 1,
            Agreement::AfterClose => self.after_close += 1,
            Agreement::BothRejected {
                conditions,
                fewer_events,
            } => {
                self.rejected += 1;
                if let Some((_, error)) = &reference.error {
                    *self
                        .rejected_as
                        .entry(error.condition.as_str())
                        .or_default() += 1;
                }
                self.fewer_events += usize::from(*fewer_events);
                if let Some((a, b)) = conditions {
                    *self.conditions.entry((a.as_str(), b.as_str())).or_default() += 1;
                }
            }
        }
    }

    /// A run or fragment whose disagreement is put down to `causes`.
    fn record_intended(&mut self, causes: &[Intended], input: &[u8]) {
        if std::env::var_os("DIFF_SHOW_INTENDED").is_some() {
            let causes: Vec<&str> = causes.iter().map(|c| c.describe()).collect();
            println!("intended: {}: {}", causes.join(", "), escape(input));
        }
        for &cause in causes {
            *self.intended.entry(cause).or_default() += 1;
        }
    }

    fn finish(self, test: &str, seed: u64, started: std::time::Instant) {
        println!(
            "{test} (seed {seed}): {} cases, {} runs in {:.2?}: {} both accepted, {} both rejected, {} after-close differences",
            self.cases,
            self.runs,
            started.elapsed(),
            self.accepted,
            self.rejected,
            self.after_close,
        );
        if self.fragments > 0 {
            println!(
                "  parse_fragment: {} fragments, {} accepted by both",
                self.fragments, self.fragments_accepted
            );
        }
        println!(
            "  release(): the reference released {} times, the new parser {}",
            self.releases_reference, self.releases_new
        );
        if !self.rejected_as.is_empty() {
            println!("  rejected by the reference as: {:?}", self.rejected_as);
        }
        println!(
            "  rejected with fewer events from the new parser: {}",
            self.fewer_events
        );
        println!(
            "  results differing only in the order of attributes (not failed): {}",
            self.attribute_order
        );
        println!(
            "  runs where the reference itself depended on the chunking (not failed): {}",
            self.reference_chunking
        );
        let mismatches: usize = self.conditions.values().sum();
        println!("  condition mismatches (reference -> new), not failed: {mismatches}");
        for ((a, b), count) in &self.conditions {
            println!("    {a} -> {b}: {count}");
        }
        let intended: usize = self.intended.values().sum();
        println!(
            "  intended differences (by cause; a run may have several), not failed: {intended}"
        );
        for (cause, count) in &self.intended {
            println!("    {}: {count}", cause.describe());
        }
        if !self.failures.is_empty() {
            let show = env_u64("DIFF_SHOW").map_or(5, |n| n as usize);
            let shown: Vec<&String> = self.failures.iter().take(show).collect();
            panic!(
                "{test}: {} of {} cases disagree; the first {}:\n\n{}",
                self.failures.len(),
                self.cases,
                shown.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n")
            );
        }
    }
}

/// Runs `cases` cases of a randomised test: `case` gets an rng seeded from the test's
/// seed and the case's number, and the summary. A panic inside a case (of either
/// parser) is reported with its case number, then re-raised.
fn cases(
    test: &str,
    seed: u64,
    default_cases: usize,
    mut case: impl FnMut(&mut StdRng, &mut Summary) -> Result<(), String>,
) {
    let started = std::time::Instant::now();
    let seed = env_u64("DIFF_SEED").unwrap_or(seed);
    let count = env_u64("DIFF_CASES").map_or(default_cases, |n| n as usize);
    let only = env_u64("DIFF_CASE");
    let mut summary = Summary::default();
    for i in 0..count as u64 {
        if only.is_some_and(|only| only != i) {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        summary.cases += 1;
        let result = catch_unwind(AssertUnwindSafe(|| case(&mut rng, &mut summary)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => summary.failures.push(format!(
                "{test}, seed {seed}, case {i} (DIFF_SEED={seed} DIFF_CASE={i}):\n{failure}"
            )),
            Err(panic) => {
                eprintln!(
                    "{test}: panic in seed {seed}, case {i} (DIFF_SEED={seed} DIFF_CASE={i})"
                );
                resume_unwind(panic);
            }
        }
    }
    summary.finish(test, seed, started);
}

/// Compares both parsers on `input` under `plans`, recording into `summary`; the
/// first disagreement is returned with the input and the plan.
fn check_plans(
    input: &[u8],
    plans: &[Plan],
    limits: Limits,
    summary: &mut Summary,
) -> Result<(), String> {
    if std::env::var_os("DIFF_CASE").is_some() {
        println!("input: {}", escape(input));
    }
    let mut first: Option<Outcome> = None;
    for plan in plans {
        let (reference, new) = run_both(input, plan, limits);
        match &first {
            None => first = Some(reference.clone()),
            Some(first) => {
                if !same_result(first, &reference) {
                    summary.reference_chunking += 1;
                    println!(
                        "the reference depends on the chunking: {}\n  {}\n  first plan: {:?}\n  this plan: {:?}",
                        escape(input),
                        plan.describe(),
                        first.error,
                        reference.error
                    );
                }
            }
        }
        summary.new_accepted += usize::from(new.error.is_none());
        match compare(&reference, &new) {
            Ok(agreement) => summary.record(&agreement, &reference, &new),
            Err(why) => {
                let subject = Subject::Stream {
                    plan: plan.clone(),
                    limits,
                };
                let left = match intended_differences(input, &subject, &reference, &new) {
                    Ok(causes) => {
                        summary.runs += 1;
                        summary.record_intended(&causes, input);
                        continue;
                    }
                    Err(left) => left,
                };
                return Err(format!(
                    "{why}\n  input ({} bytes): {}\n  {}\n  {limits:?}{left}",
                    input.len(),
                    escape(input),
                    plan.describe()
                ));
            }
        }
    }
    Ok(())
}

/// Whether two outcomes of the same input (under different plans) are the same
/// events and the same verdict.
fn same_result(a: &Outcome, b: &Outcome) -> bool {
    a.events == b.events
        && a.error.as_ref().map(|(_, e)| e.condition) == b.error.as_ref().map(|(_, e)| e.condition)
}

fn some_plans(rng: &mut StdRng, len: usize, random: usize) -> Vec<Plan> {
    let mut plans = vec![Plan::whole(len)];
    plans.extend((0..random).map(|_| Plan::random(rng, len)));
    plans
}

// ---------------------------------------------------------------------------
// The generator of valid streams
// ---------------------------------------------------------------------------

const STREAM_NS: &str = "http://etherx.jabber.org/streams";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Namespaces a generated declaration binds (as written, with the value's
/// references; and as parsed).
const URIS: &[(&str, &str)] = &[
    ("jabber:client", "jabber:client"),
    ("urn:example:a", "urn:example:a"),
    ("urn:example:b", "urn:example:b"),
    ("urn:xmpp:ping", "urn:xmpp:ping"),
    (STREAM_NS, STREAM_NS),
    ("urn:ex:é", "urn:ex:é"),
    ("urn:a&amp;b", "urn:a&b"),
    ("urn:&#x1F600;", "urn:\u{1F600}"),
];

struct Generator<'a> {
    rng: &'a mut StdRng,
    /// Prefix bindings in scope, innermost last: (prefix, namespace as parsed).
    scopes: Vec<Vec<(String, String)>>,
}

/// A generated stream: its header and stanzas as written.
struct Generated {
    /// Everything before the first stanza: XML declaration, stream header.
    header: String,
    /// (whitespace before it, stanza).
    stanzas: Vec<(String, String)>,
    /// The closing tag and what precedes it, if the stream is closed.
    close: Option<String>,
}

impl Generated {
    fn bytes(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        for (space, stanza) in &self.stanzas {
            out.push_str(space);
            out.push_str(stanza);
        }
        if let Some(close) = &self.close {
            out.push_str(close);
        }
        out.into_bytes()
    }
}

impl Generator<'_> {
    fn p(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items.choose(self.rng).unwrap()
    }

    /// An NCName: ASCII and non-ASCII name characters, never starting with `xml`.
    fn ncname(&mut self) -> String {
        const START: &[&str] = &[
            "a", "b", "c", "m", "q", "x", "z", "A", "Q", "_", "é", "É", "ß", "Ω", "中", "ø",
        ];
        const REST: &[&str] = &[
            "a", "e", "n", "s", "t", "Z", "0", "1", "9", "-", ".", "_", "é", "·", "\u{300}", "中",
            "ü",
        ];
        loop {
            let mut name = String::from(self.pick(START));
            for _ in 0..self.rng.random_range(0..6) {
                name.push_str(self.pick(REST));
            }
            if !name.to_ascii_lowercase().starts_with("xml") {
                return name;
            }
        }
    }

    /// A namespace: (as written, as parsed).
    fn uri(&mut self) -> (&'static str, &'static str) {
        *URIS.choose(self.rng).unwrap()
    }

    /// The prefixes in scope with their namespaces (inner bindings shadow outer).
    fn in_scope(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for scope in &self.scopes {
            for (prefix, uri) in scope {
                out.retain(|(p, _)| p != prefix);
                out.push((prefix.clone(), uri.clone()));
            }
        }
        out
    }

    fn space(&mut self) -> &'static str {
        self.pick(&[" ", " ", " ", "  ", "\n", "\t", "\r\n", " \n\t"])
    }

    fn eq(&mut self) -> &'static str {
        if self.p(0.1) {
            self.pick(&[" =", "= ", " = ", "\n=\t"])
        } else {
            "="
        }
    }

    /// A quoted attribute value.
    fn attr_value(&mut self) -> String {
        let quote = if self.p(0.5) { '\'' } else { '"' };
        let other = if quote == '\'' { "\"" } else { "'" };
        let mut value = String::new();
        for _ in 0..self.rng.random_range(0..6) {
            let piece = self.pick(&[
                "v",
                "val",
                "1",
                "a b",
                "@",
                "/",
                "=",
                "é",
                "😀",
                "中",
                "&amp;",
                "&lt;",
                "&gt;",
                "&quot;",
                "&apos;",
                "&#60;",
                "&#x1F600;",
                "&#38;",
                ">",
                "]]>",
                "\t",
                "\r\r\n",
                "\n",
                "\r\n",
                "&#9;",
                "&#10;",
                "&#13;",
                "&#x20;",
                "\u{85}",
                "\u{2028}",
                " ",
                "OTHER",
            ]);
            value.push_str(if piece == "OTHER" { other } else { piece });
        }
        format!("{quote}{value}{quote}")
    }

    /// Text content: references, line ends of every kind, `>`, `]]` not followed by
    /// `>`, emoji.
    fn text(&mut self) -> String {
        let mut text = String::new();
        for _ in 0..self.rng.random_range(1..6) {
            text.push_str(self.pick(&[
                "hello",
                "a b",
                " ",
                "42",
                "é",
                "😀",
                "中文",
                "'",
                "\"",
                "=",
                "/",
                "&amp;",
                "&lt;",
                "&gt;",
                "&quot;",
                "&apos;",
                "&#60;",
                "&#x1F600;",
                "&#38;",
                "&#x3c;",
                "&#9;",
                "&#13;",
                "&#xD;",
                "&#x10FFFF;",
                "\r\n",
                "\r",
                "\n",
                "\t",
                ">",
                "]]",
                "]",
                "\u{85}",
                "\u{2028}",
                "\u{A0}",
            ]));
        }
        // `]]>` may not appear in text.
        text.replace("]]>", "]]&gt;")
    }

    fn cdata(&mut self) -> String {
        let mut content = String::new();
        for _ in 0..self.rng.random_range(0..4) {
            content.push_str(self.pick(&[
                " <x> & ",
                "]] >",
                "]",
                "]]",
                "<![CDATA[",
                "&amp;",
                "\r\n",
                "\r",
                "é😀",
                "<a/>",
                "]>",
            ]));
        }
        format!("<![CDATA[{}]]>", content.replace("]]>", "]] >"))
    }

    /// One element, `depth` levels below the stream root (a stanza is depth 1).
    fn element(&mut self, out: &mut String, depth: usize) {
        let mut bindings: Vec<(String, String)> = Vec::new();
        // Attributes as written, in the order they will be shuffled into.
        let mut attrs: Vec<String> = Vec::new();
        if self.p(0.25) {
            let (written, _) = if self.p(0.1) { ("", "") } else { self.uri() };
            let eq = self.eq();
            let quote = if self.p(0.5) { "'" } else { "\"" };
            attrs.push(format!("xmlns{eq}{quote}{written}{quote}"));
        }
        let declarations = if self.p(0.25) {
            self.rng.random_range(1..=2)
        } else {
            0
        };
        for _ in 0..declarations {
            let prefix = self.ncname();
            if bindings.iter().any(|(p, _)| *p == prefix) {
                continue;
            }
            let (written, parsed) = self.uri();
            let eq = self.eq();
            let quote = if self.p(0.5) { "'" } else { "\"" };
            attrs.push(format!("xmlns:{prefix}{eq}{quote}{written}{quote}"));
            bindings.push((prefix, parsed.to_owned()));
        }
        self.scopes.push(bindings);
        let in_scope = self.in_scope();

        let name = if !in_scope.is_empty() && self.p(0.3) {
            let (prefix, _) = in_scope.choose(self.rng).unwrap();
            format!("{prefix}:{}", self.ncname())
        } else {
            self.ncname()
        };

        // Expanded names of the attributes so far: (namespace, local name).
        let mut expanded: Vec<(String, String)> = Vec::new();
        for _ in 0..self.rng.random_range(0..4) {
            let roll = self.rng.random_range(0..10);
            let (key, ns, local) = if roll < 2 && !in_scope.is_empty() {
                let (prefix, uri) = in_scope.choose(self.rng).unwrap().clone();
                let local = self.ncname();
                (format!("{prefix}:{local}"), uri, local)
            } else if roll == 2 {
                ("xml:lang".to_owned(), XML_NS.to_owned(), "lang".to_owned())
            } else {
                let local = self.ncname();
                (local.clone(), String::new(), local)
            };
            if expanded.contains(&(ns.clone(), local.clone())) {
                continue;
            }
            expanded.push((ns, local));
            let eq = self.eq();
            let value = if key == "xml:lang" {
                format!("'{}'", self.pick(&["en", "fr-CA", "", "é"]))
            } else {
                self.attr_value()
            };
            attrs.push(format!("{key}{eq}{value}"));
        }
        attrs.shuffle(self.rng);

        out.push('<');
        out.push_str(&name);
        for attr in &attrs {
            out.push_str(self.space());
            out.push_str(attr);
        }
        if self.p(0.1) {
            out.push_str(self.space());
        }
        let leaf = depth >= 6 || self.p(0.3);
        if leaf && self.p(0.6) {
            out.push_str(if self.p(0.7) { "/>" } else { " />" });
        } else {
            out.push('>');
            if !leaf {
                let children = self.rng.random_range(0..=(7 - depth).min(4));
                for _ in 0..children {
                    match self.rng.random_range(0..10) {
                        0..=3 => self.element(out, depth + 1),
                        4..=6 => {
                            let mut text = self.text();
                            // Nor may two texts in a row make `]]>`.
                            let brackets = out.bytes().rev().take_while(|&b| b == b']').count();
                            if (brackets >= 2 && text.starts_with('>'))
                                || (brackets >= 1 && text.starts_with("]>"))
                            {
                                text = text.replacen('>', "&gt;", 1);
                            }
                            out.push_str(&text);
                        }
                        7 => {
                            let cdata = self.cdata();
                            out.push_str(&cdata);
                        }
                        _ => out.push_str(self.space()),
                    }
                }
            }
            out.push_str("</");
            out.push_str(&name);
            if self.p(0.15) {
                out.push_str(self.space());
            }
            out.push('>');
        }
        self.scopes.pop();
    }

    fn stream(&mut self, max_stanzas: usize) -> Generated {
        let mut header = String::new();
        if self.p(0.05) {
            // Intended difference (E): the reference refuses these.
            header.push_str(self.pick(&[
                "<?xml version='1.0' standalone='yes'?>",
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>",
            ]));
        } else if self.p(0.7) {
            header.push_str(self.pick(&[
                "<?xml version='1.0'?>",
                "<?xml version=\"1.0\"?>",
                "<?xml version='1.0' encoding='UTF-8'?>",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
                "<?xml version='1.0' encoding='utf-8'?>",
                "<?xml version = '1.0'  encoding = \"UTF-8\" ?>",
            ]));
            if self.p(0.5) {
                header.push_str(self.space());
            }
        } else if self.p(0.1) {
            // Intended difference (D): the reference refuses it.
            header.push_str(self.space());
        }
        // The stream's prefix; `None`: the root is unprefixed, in the stream namespace.
        let prefix = if self.p(0.05) {
            None
        } else if self.p(0.7) {
            Some("stream".to_owned())
        } else {
            Some(self.ncname())
        };
        let root = match &prefix {
            Some(prefix) => format!("{prefix}:stream"),
            None => "stream".to_owned(),
        };
        let mut attrs: Vec<String> = Vec::new();
        let mut bindings: Vec<(String, String)> = Vec::new();
        match &prefix {
            Some(prefix) => {
                attrs.push(format!("xmlns:{prefix}='{STREAM_NS}'"));
                bindings.push((prefix.clone(), STREAM_NS.to_owned()));
                if self.p(0.9) {
                    let ns = self.pick(&["jabber:client", "jabber:client", "jabber:server"]);
                    attrs.push(format!("xmlns=\"{ns}\""));
                }
            }
            None => attrs.push(format!("xmlns='{STREAM_NS}'")),
        }
        if self.p(0.8) {
            attrs.push("to='localhost'".to_owned());
        }
        if self.p(0.8) {
            attrs.push("version=\"1.0\"".to_owned());
        }
        if self.p(0.4) {
            attrs.push(format!("xml:lang='{}'", self.pick(&["en", "de", "é"])));
        }
        if self.p(0.2) {
            attrs.push("from='juliet@example.com'".to_owned());
        }
        for _ in 0..self.rng.random_range(0..3) {
            let extra = self.ncname();
            if bindings.iter().any(|(p, _)| *p == extra) {
                continue;
            }
            let (written, parsed) = self.uri();
            attrs.push(format!("xmlns:{extra}='{written}'"));
            bindings.push((extra, parsed.to_owned()));
        }
        if self.p(0.2) && bindings.len() > 1 {
            // A namespaced attribute on the header itself.
            let (extra, _) = bindings[bindings.len() - 1].clone();
            attrs.push(format!("{extra}:id='h1'"));
        }
        attrs.shuffle(self.rng);
        header.push('<');
        header.push_str(&root);
        for attr in &attrs {
            header.push_str(self.space());
            header.push_str(attr);
        }
        if self.p(0.1) {
            header.push_str(self.space());
        }
        header.push('>');

        self.scopes = vec![bindings];
        let mut stanzas = Vec::new();
        for _ in 0..self.rng.random_range(0..=max_stanzas) {
            let space = if self.p(0.5) {
                String::new()
            } else {
                let mut space = String::new();
                for _ in 0..self.rng.random_range(1..3) {
                    space.push_str(self.space());
                }
                space
            };
            let mut stanza = String::new();
            self.element(&mut stanza, 1);
            stanzas.push((space, stanza));
        }
        let close = self.p(0.5).then(|| {
            let space = if self.p(0.5) { "" } else { self.space() };
            let end_space = if self.p(0.2) { self.space() } else { "" };
            format!("{space}</{root}{end_space}>")
        });
        Generated {
            header,
            stanzas,
            close,
        }
    }
}

fn generate(rng: &mut StdRng, max_stanzas: usize) -> Generated {
    Generator {
        rng,
        scopes: Vec::new(),
    }
    .stream(max_stanzas)
}

// ---------------------------------------------------------------------------
// Randomised tests
// ---------------------------------------------------------------------------

/// Valid streams, in random chunks with random releases: both parsers accept them
/// and emit the same events; and each stanza alone gives the same `parse_fragment`
/// result from both.
#[test]
fn valid_streams_agree() {
    cases(
        "valid_streams_agree",
        0x6B69_7468_0001,
        500,
        |rng, summary| {
            let generated = generate(rng, 8);
            let input = generated.bytes();
            let plans = some_plans(rng, input.len(), 3);
            // Valid input: the new parser must accept it (and so the reference, but
            // for intended differences).
            let accepted = summary.new_accepted;
            check_plans(&input, &plans, Limits::default(), summary)?;
            if summary.new_accepted - accepted != plans.len() {
                let whole = run(
                    &mut stream::StreamParser::new(Limits::default()),
                    &input,
                    &Plan::whole(input.len()),
                );
                return Err(format!(
                    "the new parser refused a valid stream ({:?}): {}",
                    whole.error,
                    escape(&input)
                ));
            }
            for (_, stanza) in &generated.stanzas {
                let mut fragment = stanza.clone();
                if rng.random_bool(0.1) {
                    fragment.insert_str(0, "<?xml version='1.0'?>");
                }
                if rng.random_bool(0.1) {
                    fragment.push_str(" \n");
                }
                check_fragment(fragment.as_bytes(), Limits::default(), summary)?;
            }
            Ok(())
        },
    );
}

fn check_fragment(input: &[u8], limits: Limits, summary: &mut Summary) -> Result<(), String> {
    let reference = reference::parse_fragment(input, limits);
    let new = stream::parse_fragment(input, limits);
    summary.fragments += 1;
    summary.fragments_accepted += usize::from(reference.is_ok() && new.is_ok());
    let agree = match (&reference, &new) {
        (Ok(a), Ok(b)) if STRICT_ATTRIBUTE_ORDER => a == b,
        (Ok(a), Ok(b)) => {
            summary.attribute_order += usize::from(a != b && sorted_attrs(a) == sorted_attrs(b));
            sorted_attrs(a) == sorted_attrs(b)
        }
        (Err(a), Err(b)) => {
            if a.condition != b.condition {
                if is_syntax_class(a.condition) && is_syntax_class(b.condition) {
                    *summary
                        .conditions
                        .entry((a.condition.as_str(), b.condition.as_str()))
                        .or_default() += 1;
                } else {
                    return Err(format!(
                        "parse_fragment: different conditions, reference {a:?}, new {b:?}\n  input: {}",
                        escape(input)
                    ));
                }
            }
            true
        }
        _ => false,
    };
    if agree {
        return Ok(());
    }
    let subject = Subject::Fragment { limits };
    let (a, b) = (
        fragment_outcome(reference.clone()),
        fragment_outcome(new.clone()),
    );
    match intended_differences(input, &subject, &a, &b) {
        Ok(causes) => {
            summary.record_intended(&causes, input);
            Ok(())
        }
        Err(left) => Err(format!(
            "parse_fragment disagrees:\n  reference: {reference:?}\n  new:       {new:?}\n  input: {}{left}",
            escape(input)
        )),
    }
}

/// Valid streams under a depth limit of 1 to 6: the generator nests up to 6 levels,
/// so some stanzas are too deep. Both must refuse the same ones.
#[test]
fn depth_limits_agree() {
    cases(
        "depth_limits_agree",
        0x6B69_7468_0002,
        300,
        |rng, summary| {
            let generated = generate(rng, 4);
            let input = generated.bytes();
            let limits = Limits {
                max_depth: rng.random_range(1..=6),
                ..Limits::default()
            };
            let plans = some_plans(rng, input.len(), 1);
            check_plans(&input, &plans, limits, summary)?;
            for (_, stanza) in &generated.stanzas {
                check_fragment(stanza.as_bytes(), limits, summary)?;
            }
            Ok(())
        },
    );
}

/// Fixed snippets a mutation inserts anywhere.
const SNIPPETS: &[&str] = &[
    "<!-- c -->",
    "<?pi x?>",
    "<!DOCTYPE a>",
    "<!DOCTYPE a [<!ENTITY e 'x'>]>",
    "<!ENTITY e 'x'>",
    "&foo;",
    "&#0;",
    "&#xD800;",
    "&#xDFFF;",
    "&#xFFFE;",
    "&#xFFFF;",
    "&#x110000;",
    "&#1114112;",
    "&#x10FFFF;",
    "&#x1;",
    "&#;",
    "&#x;",
    "&#65",
    "&amp",
    "&",
    "<p:x/>",
    "<x:y xmlns:x=''/>",
    "]]>",
    "<![CDATA[x]]>",
    "<![CDATA[",
    "<![cdata[x]]>",
    "<?xml version='1.0'?>",
    "<?xml-stylesheet x?>",
    "</x>",
    "<a>",
    "<a/>",
    "<>",
    "</>",
    "< a/>",
    "<a:/>",
    "<:a/>",
    "<a:b:c/>",
    "<1a/>",
    "<-a/>",
    "<a\u{85}/>",
    "<stream:stream>",
    "</stream:stream>",
    "<xml:a/>",
    "<xmlns:a/>",
    "\u{FEFF}",
    "\u{FFFE}",
    "\u{FFFF}",
    "\u{85}",
    "\u{A0}",
    "\u{2028}",
    "\u{1}",
    "\u{7F}",
    "\u{0}",
    "\u{C}",
    "&#32;",
    "&#xA0;",
    "&#x85;",
    "&#x2028;",
    "text",
];

/// Attribute-like snippets a mutation inserts into a tag, before its `>` or `/>`.
const TAG_SNIPPETS: &[&str] = &[
    " xmlns:p=''",
    " xmlns=''",
    " xmlns:xml='urn:x'",
    " xmlns:xml='http://www.w3.org/XML/1998/namespace'",
    " xmlns:xmlns='u'",
    " xmlns:p='http://www.w3.org/2000/xmlns/'",
    " xmlns='http://www.w3.org/2000/xmlns/'",
    " xmlns='http://www.w3.org/XML/1998/namespace'",
    " xmlns:l='http://www.w3.org/XML/1998/namespace' l:lang='x'",
    " xmlns:l='http://www.w3.org/XML/1998/namespace'",
    " xml:lang='a' xml:lang='b'",
    " xml:lang='a'",
    " xml:space='preserve'",
    " xml:foo='1'",
    " xmlns:a='u' xmlns:b='u' a:x='1' b:x='2'",
    " xmlns:p='u' p:x='1' p:x='2'",
    " xmlns:a='u' a:x='1' x='2'",
    " a",
    " a=",
    " a='1",
    " a=1",
    " a='1'b='2'",
    " p:x='1'",
    " b='<'",
    " b='&'",
    " b='&#0;'",
    " b='&#x9;&#xA;&#xD;'",
    " :a='1'",
    " a:='1'",
    " a:b:c='1'",
    " id='x'",
    " id='y'",
    " to='x'",
    " xmlns:stream='urn:other'",
    " xmlns:stream='http://etherx.jabber.org/streams'",
    "/",
    " /",
    "=",
    "'",
];

/// Bytes a mutation inserts or writes over one: the markup alphabet, some
/// non-ASCII, and invalid UTF-8.
const BYTES: &[&[u8]] = &[
    b"<",
    b">",
    b"/",
    b"'",
    b"\"",
    b"=",
    b"&",
    b";",
    b"#",
    b"x",
    b"!",
    b"[",
    b"]",
    b"?",
    b"-",
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\t",
    b"\0",
    b"\x0b",
    b"\x0c",
    "é".as_bytes(),
    "\u{85}".as_bytes(),
    b"\xc0\x80",
    b"\xff",
    b"\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"a",
    b"1",
];

fn positions_of(input: &[u8], needle: &[u8]) -> Vec<usize> {
    input
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Applies one random mutation to `input`; returns what it did.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) -> String {
    let at = rng.random_range(0..=input.len());
    match rng.random_range(0..12) {
        0 if !input.is_empty() => {
            let at = at.min(input.len() - 1);
            input.remove(at);
            format!("delete byte {at}")
        }
        1 => {
            let bytes = *BYTES.choose(rng).unwrap();
            input.splice(at..at, bytes.iter().copied());
            format!("insert {} at {at}", escape(bytes))
        }
        2 if !input.is_empty() => {
            let at = at.min(input.len() - 1);
            let byte: u8 = if rng.random_bool(0.3) {
                rng.random()
            } else {
                BYTES.choose(rng).unwrap()[0]
            };
            input[at] = byte;
            format!("replace byte {at} with {byte:#04x}")
        }
        3 => {
            // Duplicate an attribute: from the space before a name to the closing
            // quote after `='` or `="`.
            let eqs: Vec<usize> = input
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w[0] == b'=' && (w[1] == b'\'' || w[1] == b'"'))
                .map(|(i, _)| i)
                .collect();
            let Some(&eq) = eqs.choose(rng) else {
                return "no attribute to duplicate".to_owned();
            };
            let start = input[..eq]
                .iter()
                .rposition(|b| b.is_ascii_whitespace())
                .unwrap_or(0);
            let quote = input[eq + 1];
            let Some(len) = input[eq + 2..].iter().position(|&b| b == quote) else {
                return "no attribute to duplicate".to_owned();
            };
            let end = eq + 2 + len + 1;
            let copy = input[start..end].to_vec();
            input.splice(end..end, copy.iter().copied());
            format!("duplicate attribute {} at {end}", escape(&copy))
        }
        4 => {
            // Swap the names of two end tags.
            let ends = positions_of(input, b"</");
            if ends.len() < 2 {
                return "no end tags to swap".to_owned();
            }
            let a = *ends.choose(rng).unwrap();
            let b = *ends.choose(rng).unwrap();
            let (a, b) = (a.min(b), a.max(b));
            let name_end = |at: usize| {
                input[at + 2..]
                    .iter()
                    .position(|&c| c == b'>' || c.is_ascii_whitespace())
                    .map(|len| at + 2 + len)
            };
            let (Some(a_end), Some(b_end)) = (name_end(a), name_end(b)) else {
                return "no end tags to swap".to_owned();
            };
            if a_end > b {
                return "no end tags to swap".to_owned();
            }
            let a_name = input[a + 2..a_end].to_vec();
            let b_name = input[b + 2..b_end].to_vec();
            input.splice(b + 2..b_end, a_name.iter().copied());
            input.splice(a + 2..a_end, b_name.iter().copied());
            format!(
                "swap end tags {} at {a} and {} at {b}",
                escape(&a_name),
                escape(&b_name)
            )
        }
        5 | 6 => {
            let snippet = *SNIPPETS.choose(rng).unwrap();
            // Half of them right after a tag: between stanzas, more often than not.
            let after_tags = positions_of(input, b">");
            let at = match after_tags.choose(rng) {
                Some(&end) if rng.random_bool(0.5) => end + 1,
                _ => at,
            };
            input.splice(at..at, snippet.bytes());
            format!("insert {} at {at}", escape(snippet.as_bytes()))
        }
        7 | 8 => {
            // Into a tag: before a `>`, or before the `/` of `/>`.
            let ends = positions_of(input, b">");
            let Some(&end) = ends.choose(rng) else {
                return "no tag".to_owned();
            };
            let at = if end > 0 && input[end - 1] == b'/' {
                end - 1
            } else {
                end
            };
            let snippet = *TAG_SNIPPETS.choose(rng).unwrap();
            input.splice(at..at, snippet.bytes());
            format!("insert {} at {at}", escape(snippet.as_bytes()))
        }
        9 => {
            input.truncate(at);
            format!("truncate at {at}")
        }
        10 if !input.is_empty() => {
            // Copy a random range somewhere else (repeats tags, splits tokens).
            let start = rng.random_range(0..input.len());
            let end = rng.random_range(start..=input.len().min(start + 40));
            let copy = input[start..end].to_vec();
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, copy.iter().copied());
            format!("copy {}..{end} to {at}", start)
        }
        _ => {
            // Change the case of, or replace, one ASCII letter of a name.
            let letters: Vec<usize> = input
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_alphabetic())
                .map(|(i, _)| i)
                .collect();
            let Some(&at) = letters.choose(rng) else {
                return "no letters".to_owned();
            };
            input[at] ^= 0x20;
            format!("flip the case of byte {at}")
        }
    }
}

/// Valid streams with one to three random mutations: both parsers accept or refuse
/// each alike, with the same events up to the error (the new parser may stop
/// earlier within the failing read, never later), and with the same condition (a
/// difference between not-well-formed, restricted-xml and policy-violation is only
/// counted).
#[test]
fn mutated_streams_agree() {
    cases(
        "mutated_streams_agree",
        0x6B69_7468_0003,
        2000,
        |rng, summary| {
            let generated = generate(rng, 4);
            let mut input = generated.bytes();
            let mut done = Vec::new();
            let mutations = *[1, 1, 1, 2, 3].choose(rng).unwrap();
            for _ in 0..mutations {
                done.push(mutate(rng, &mut input));
            }
            let plans = some_plans(rng, input.len(), 1);
            check_plans(&input, &plans, Limits::default(), summary)
                .map_err(|why| format!("mutations: {}\n{why}", done.join("; ")))?;
            // Some mutations of single stanzas, as WebSocket frames.
            if let Some((_, stanza)) = generated.stanzas.choose(rng) {
                let mut fragment = stanza.clone().into_bytes();
                let what = mutate(rng, &mut fragment);
                check_fragment(&fragment, Limits::default(), summary)
                    .map_err(|why| format!("fragment mutation: {what}\n{why}"))?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Hand-written edge cases
// ---------------------------------------------------------------------------

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// What the reference does with a whole input.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Accepted, with this many events.
    Accept(usize),
    /// Refused, after this many events, with this condition.
    Reject(usize, StreamErrorCondition),
}

/// Feeds `input` to both parsers whole, byte by byte, byte by byte releasing after
/// every byte, and in chunks of 7, asserting they agree under each; returns the
/// reference's verdict (on the whole input) and its events.
fn edge(input: &[u8]) -> (Verdict, Vec<StreamEvent>) {
    let plans = edge_plans(input.len());
    let mut verdict: Option<(Verdict, Vec<StreamEvent>)> = None;
    let mut first: Option<Outcome> = None;
    for plan in &plans {
        let (reference, new) = run_both(input, plan, Limits::default());
        match &first {
            None => first = Some(reference.clone()),
            Some(first) => assert!(
                same_result(first, &reference),
                "the reference depends on the chunking: {}\n  {}\n  whole: {first:?}\n  this plan: {reference:?}",
                escape(input),
                plan.describe()
            ),
        }
        match compare(&reference, &new) {
            Ok(Agreement::BothRejected {
                conditions: Some((a, b)),
                ..
            }) => println!(
                "condition mismatch (not failed) on {}: reference {a}, new {b}",
                escape(input)
            ),
            Ok(_) => {}
            Err(why) => panic!(
                "{why}\n  input: {}\n  {}\n  reference: {reference:?}\n  new: {new:?}",
                escape(input),
                plan.describe()
            ),
        }
        if verdict.is_none() {
            let v = match &reference.error {
                None => Verdict::Accept(reference.events.len()),
                Some((_, error)) => {
                    println!("{}: {error}", escape(input));
                    Verdict::Reject(reference.events.len(), error.condition)
                }
            };
            verdict = Some((v, reference.events));
        }
    }
    verdict.unwrap()
}

/// Whole, byte by byte, byte by byte releasing after every byte, in chunks of 7.
fn edge_plans(len: usize) -> [Plan; 4] {
    [
        Plan::whole(len),
        Plan::fixed(len, 1, false),
        Plan::fixed(len, 1, true),
        Plan::fixed(len, 7, true),
    ]
}

fn verdict_of(outcome: &Outcome) -> Verdict {
    match &outcome.error {
        None => Verdict::Accept(outcome.events.len()),
        Some((_, error)) => Verdict::Reject(outcome.events.len(), error.condition),
    }
}

/// An intended difference: asserts the new parser's verdict on `input` (the same
/// under every plan `edge` uses) and, to show the difference, the reference's (on
/// the whole input). Returns the new parser's events.
fn differs(input: &[u8], new: Verdict, rxml: Verdict) -> Vec<StreamEvent> {
    let mut first: Option<Outcome> = None;
    for plan in &edge_plans(input.len()) {
        let outcome = run(
            &mut stream::StreamParser::new(Limits::default()),
            input,
            plan,
        );
        match &first {
            None => first = Some(outcome),
            Some(first) => assert!(
                same_result(first, &outcome),
                "the new parser depends on the chunking: {}\n  {}\n  whole: {first:?}\n  this plan: {outcome:?}",
                escape(input),
                plan.describe()
            ),
        }
    }
    let outcome = first.expect("plans");
    let reference = run(
        &mut reference::StreamParser::new(Limits::default()),
        input,
        &Plan::whole(input.len()),
    );
    let (got_new, got_rxml) = (verdict_of(&outcome), verdict_of(&reference));
    if std::env::var_os("DIFF_LEARN").is_some() {
        if (&got_new, &got_rxml) != (&new, &rxml) {
            println!(
                "LEARN {} expected new {new:?} rxml {rxml:?}, got new {got_new:?} rxml {got_rxml:?}",
                escape(input)
            );
        }
        return outcome.events;
    }
    assert_eq!(got_new, new, "the new parser on {}", escape(input));
    assert_eq!(got_rxml, rxml, "the reference on {}", escape(input));
    outcome.events
}

/// `differs` on `HEADER` + `body`.
fn differs_in_stream(body: &str, new: Verdict, rxml: Verdict) -> Vec<StreamEvent> {
    differs(format!("{HEADER}{body}").as_bytes(), new, rxml)
}

/// An intended difference of `parse_fragment`: asserts both parsers' results (the
/// condition if refused); returns the new parser's element.
fn fragment_differs(
    input: &[u8],
    new: Option<StreamErrorCondition>,
    rxml: Option<StreamErrorCondition>,
) -> Option<Element> {
    let got_new = stream::parse_fragment(input, Limits::default());
    let got_rxml = reference::parse_fragment(input, Limits::default());
    let condition = |r: &Result<Element, StreamParserError>| r.as_ref().err().map(|e| e.condition);
    assert_eq!(
        condition(&got_new),
        new,
        "the new parser on {}",
        escape(input)
    );
    assert_eq!(
        condition(&got_rxml),
        rxml,
        "the reference on {}",
        escape(input)
    );
    got_new.ok()
}

/// `edge` on `HEADER` + `body`, asserting the reference's verdict (what the new
/// parser must match).
fn edge_in_stream(body: &str, expected: Verdict) -> Vec<StreamEvent> {
    edge_bytes(format!("{HEADER}{body}").as_bytes(), expected)
}

fn edge_bytes(input: &[u8], expected: Verdict) -> Vec<StreamEvent> {
    let (verdict, events) = edge(input);
    if std::env::var_os("DIFF_LEARN").is_some() {
        if verdict != expected {
            println!(
                "LEARN {} expected {expected:?} got {verdict:?}",
                escape(input)
            );
        }
        return events;
    }
    assert_eq!(verdict, expected, "the reference on {}", escape(input));
    events
}

/// Both parsers' `parse_fragment` agree on `input`; returns the reference's result.
fn edge_fragment(input: &[u8]) -> Result<Element, StreamParserError> {
    let mut summary = Summary::default();
    if let Err(why) = check_fragment(input, Limits::default(), &mut summary) {
        panic!("{why}");
    }
    if let Some(((a, b), _)) = summary.conditions.first_key_value() {
        println!(
            "fragment condition mismatch (not failed) on {}: reference {a}, new {b}",
            escape(input)
        );
    }
    reference::parse_fragment(input, Limits::default())
}

fn stanza(events: &[StreamEvent], index: usize) -> &Element {
    match &events[index] {
        StreamEvent::Stanza(element) => element,
        other => panic!("event {index}: expected a stanza, got {other:?}"),
    }
}

use StreamErrorCondition::{InvalidNamespace, NotWellFormed, RestrictedXml, UnsupportedEncoding};
use Verdict::{Accept, Reject};

#[test]
fn duplicate_attribute_after_namespace_expansion() {
    edge_in_stream(
        "<a xmlns:p='u' p:b='1' xmlns:q='u' q:b='2'/>",
        Reject(1, NotWellFormed),
    );
    edge_in_stream("<a b='1' b='2'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a xmlns:p='u' p:b='1' p:b='2'/>", Reject(1, NotWellFormed));
    // A repeated prefix declaration is a duplicate attribute, even with the same
    // namespace.
    edge_in_stream("<a xmlns:p='u' xmlns:p='u'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a xmlns:p='u' xmlns:p='v'/>", Reject(1, NotWellFormed));
    // (C) So is a repeated `xmlns` (XML 1.0 §3.1, Unique Att Spec); rxml takes the last.
    differs_in_stream(
        "<a xmlns='u' xmlns='v'/>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs_in_stream(
        "<a xmlns='u' xmlns='u'/>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs_in_stream(
        "<a xmlns='' xmlns='u'/>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs_in_stream(
        "<a><b xmlns='u' xmlns='v'/></a>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs(
        b"<stream:stream xmlns='jabber:client' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        Reject(0, NotWellFormed),
        Accept(1),
    );
    // Same local name, different namespaces (none and u): fine.
    let events = edge_in_stream("<a xmlns:p='u' p:b='1' b='2'/>", Accept(2));
    assert_eq!(stanza(&events, 1).get_attr("{u}b"), Some("1"));
    assert_eq!(stanza(&events, 1).get_attr("b"), Some("2"));
    // A prefix bound to the XML namespace under another name would give a second
    // `xml:lang`.
    edge_in_stream(
        "<a xml:lang='en' xmlns:l='http://www.w3.org/XML/1998/namespace' l:lang='de'/>",
        Reject(1, NotWellFormed),
    );
}

#[test]
fn reserved_prefixes() {
    // Binding `xml` to its own namespace is allowed; to another one is not.
    edge_in_stream(
        "<a xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>",
        Accept(2),
    );
    edge_in_stream("<a xmlns:xml='urn:x'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a xmlns:xmlns='urn:x'/>", Reject(1, NotWellFormed));
    // (G) A prefix or the default namespace bound to the xmlns namespace (Namespaces
    // in XML 1.0 §3, Reserved Prefixes and Namespace Names); rxml accepts both.
    differs_in_stream(
        "<a xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs_in_stream(
        "<a xmlns='http://www.w3.org/2000/xmlns/'/>",
        Reject(1, NotWellFormed),
        Accept(2),
    );
    differs(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='http://www.w3.org/2000/xmlns/'>",
        Reject(0, NotWellFormed),
        Accept(1),
    );
    // The default namespace bound to the XML namespace: refused by both.
    edge_in_stream(
        "<a xmlns='http://www.w3.org/XML/1998/namespace'/>",
        Reject(1, NotWellFormed),
    );
    edge_in_stream(
        "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        Reject(1, NotWellFormed),
    );
    // An element in the XML namespace.
    let events = edge_in_stream("<xml:a/>", Accept(2));
    assert!(stanza(&events, 1).is("a", XML_NS));
    // Undeclaring a prefix (XML 1.1 namespaces only), and using an undeclared one.
    edge_in_stream("<a xmlns:p=''/>", Reject(1, NotWellFormed));
    edge_in_stream("<p:x/>", Reject(1, NotWellFormed));
    edge_in_stream("<a p:x='1'/>", Reject(1, NotWellFormed));
    // Undeclaring the default namespace is allowed.
    let events = edge_in_stream("<a xmlns=''><b/></a>", Accept(2));
    assert_eq!(stanza(&events, 1).ns, "");
}

#[test]
fn names_with_colons() {
    edge_in_stream("<a:b:c xmlns:a='u'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a x:y:z='1'/>", Reject(1, NotWellFormed));
    edge_in_stream("<:a/>", Reject(1, NotWellFormed));
    edge_in_stream("<a:/>", Reject(1, NotWellFormed));
    edge_in_stream("<a :b='1'/>", Reject(1, NotWellFormed));
}

#[test]
fn prolog() {
    let stream =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    edge_bytes(stream.as_bytes(), Accept(1));
    // A byte order mark at the start: refused ("unexpected Text token at beginning
    // of document"), with or without an XML declaration.
    edge_bytes(
        format!("\u{FEFF}{stream}").as_bytes(),
        Reject(0, NotWellFormed),
    );
    edge_bytes(
        format!("\u{FEFF}<?xml version='1.0'?>{stream}").as_bytes(),
        Reject(0, NotWellFormed),
    );
    // Whitespace before the XML declaration, which must come first (XML 1.0 §2.8).
    edge_bytes(
        format!(" <?xml version='1.0'?>{stream}").as_bytes(),
        Reject(0, NotWellFormed),
    );
    // (D) Whitespace before the root without one (XML 1.0 §2.1, §2.8: `Misc` includes `S`); rxml refuses it.
    differs(
        format!("\n{stream}").as_bytes(),
        Accept(1),
        Reject(0, NotWellFormed),
    );
    differs(
        format!(" \t\r\n{stream}<a/>").as_bytes(),
        Accept(2),
        Reject(0, NotWellFormed),
    );
    // Whitespace after the declaration is fine.
    edge_bytes(
        format!("<?xml version='1.0'?>\r\n {stream}").as_bytes(),
        Accept(1),
    );
    // Another version: restricted-xml for the reference.
    edge_bytes(
        format!("<?xml version='1.1'?>{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
    // (H) Another encoding: unsupported-encoding (RFC 6120 §4.9.3.22); rxml says restricted-xml.
    differs(
        format!("<?xml version='1.0' encoding='latin1'?>{stream}").as_bytes(),
        Reject(0, UnsupportedEncoding),
        Reject(0, RestrictedXml),
    );
    differs(
        format!("<?xml version='1.0' encoding='ISO-8859-1'?>{stream}").as_bytes(),
        Reject(0, UnsupportedEncoding),
        Reject(0, RestrictedXml),
    );
    edge_bytes(
        format!("<?xml version='1.0' encoding='utf-8'?>{stream}").as_bytes(),
        Accept(1),
    );
    // (E) `standalone='yes'|'no'` (XML 1.0 §2.9); rxml takes only `yes` after `encoding`.
    for (declaration, rxml) in [
        ("<?xml version='1.0' standalone='yes'?>", NotWellFormed),
        ("<?xml version=\"1.0\" standalone=\"no\" ?>", NotWellFormed),
        (
            "<?xml version='1.0' encoding='UTF-8' standalone='no'?>",
            RestrictedXml,
        ),
    ] {
        differs(
            format!("{declaration}{stream}").as_bytes(),
            Accept(1),
            Reject(0, rxml),
        );
    }
    edge_bytes(
        format!("<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>{stream}").as_bytes(),
        Accept(1),
    );
    // Malformed declarations (XML 1.0 §2.8, §2.9, §4.3.3): refused by both.
    for declaration in [
        "<?xml encoding='UTF-8'?>",
        "<?xml encoding='UTF-8' version='1.0'?>",
        "<?xml version='1.0'encoding='UTF-8'?>",
        "<?xml version='1.0' encoding='UTF-8'standalone='yes'?>",
        "<?xml?>",
        "<?xml ?>",
        "<?xml version='1.0' version='1.0'?>",
        "<?xml version='1.0' encoding='UTF-8' encoding='UTF-8'?>",
        "<?xml version=1.0?>",
        "<?xml version='1.0\"?>",
        "<?xml version='1.0' standalone='maybe'?>",
        "<?xml version='1.0' standalone='yes' encoding='UTF-8'?>",
        "<?xml version='1.0' standalone='yes' standalone='yes'?>",
        "<?xml version='1.0' foo='bar'?>",
    ] {
        edge_bytes(
            format!("{declaration}{stream}").as_bytes(),
            Reject(0, NotWellFormed),
        );
    }
    edge_bytes(
        format!("<?XML version='1.0'?>{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
    edge_bytes(
        format!("<?xml version='1.0'?><?xml version='1.0'?>{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
    edge_bytes(
        format!("<!DOCTYPE stream>{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
    edge_bytes(
        format!("<!-- hi -->{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
}

/// A disagreement these tests found, fixed: the framer read an XML declaration
/// (any `<?` at the start) up to `?>` without looking at what it read, so a
/// malformed one without `?>` made the new parser wait for more (up to the
/// stanza size limit) where the reference refuses it at once. Neither `<` nor a
/// `>` not preceded by `?` can be part of a well-formed declaration (XML 1.0
/// §2.8, §4.3.3), and a target other than `xml` is a processing instruction.
#[test]
fn a_broken_xml_declaration_is_refused_at_once() {
    let stream = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    for declaration in [
        "<?xml version='1.0'>",
        "<?xml version='1.0'? >",
        "<?xml version='1.0' encoding='UTF-8'? a='1'>",
        "<?xml version='1.0'?",
    ] {
        edge_bytes(
            format!("{declaration}{stream}").as_bytes(),
            Reject(0, NotWellFormed),
        );
    }
    edge_bytes(
        format!("<?pi x>{stream}").as_bytes(),
        Reject(0, RestrictedXml),
    );
}

#[test]
fn stream_root() {
    // Unprefixed root in the stream namespace: a stream.
    edge_bytes(
        b"<stream xmlns='http://etherx.jabber.org/streams'><a/></stream>",
        Accept(3),
    );
    edge_bytes(
        b"<stream:stream xmlns:stream='urn:other'>",
        Reject(0, InvalidNamespace),
    );
    edge_bytes(
        b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>",
        Reject(0, InvalidNamespace),
    );
    edge_bytes(b"<stream:stream>", Reject(0, NotWellFormed));
    // A self-closing header: opened and closed.
    edge_bytes(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>",
        Accept(2),
    );
    // Closing with another prefix, even one bound to the same namespace.
    edge_in_stream("<a/></s:stream>", Reject(2, NotWellFormed));
    edge_bytes(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:s='http://etherx.jabber.org/streams'></s:stream>",
        Reject(1, NotWellFormed),
    );
    edge_in_stream("</stream:stream >", Accept(2));
    edge_in_stream("</stream:stream\n>", Accept(2));
    // Whitespace after the close, in the same and in a later read.
    edge_in_stream("</stream:stream> \n", Accept(2));
    // Stanzas in the header's prefixes.
    let events = edge_in_stream("<stream:features/>", Accept(2));
    assert!(stanza(&events, 1).is("features", STREAM_NS));
}

#[test]
fn character_references() {
    let events = edge_in_stream("<a>&#x10FFFF;&#x1F600;&#38;&#x3C;</a>", Accept(2));
    assert_eq!(stanza(&events, 1).text_content(), "\u{10FFFF}\u{1F600}&<");
    edge_in_stream("<a>&#1114112;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#x110000;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#0;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#x1;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#xD800;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#xFFFE;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#xFFFF;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#x;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&#X41;</a>", Reject(1, NotWellFormed));
    // An undeclared entity: not-well-formed, not restricted-xml.
    edge_in_stream("<a>&foo;</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>&amp</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>a & b</a>", Reject(1, NotWellFormed));
    // Leading zeros.
    let events = edge_in_stream("<a>&#0065;&#x0041;</a>", Accept(2));
    assert_eq!(stanza(&events, 1).text_content(), "AA");
    // Character references for line ends and tabs are kept as they are, in text and
    // in attributes.
    let events = edge_in_stream("<a b='&#9;&#10;&#13;'>&#13;&#10;</a>", Accept(2));
    assert_eq!(stanza(&events, 1).get_attr("b"), Some("\t\n\r"));
    assert_eq!(stanza(&events, 1).text_content(), "\r\n");
}

#[test]
fn raw_characters() {
    // U+FFFE, U+FFFF: not XML characters.
    edge_in_stream("<a>\u{FFFE}</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>\u{FFFF}</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a b='\u{FFFE}'/>", Reject(1, NotWellFormed));
    // Control characters.
    edge_in_stream("<a>\0</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a b='\0'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a>\u{B}</a>", Reject(1, NotWellFormed));
    edge_in_stream("<a>\u{7F}</a>", Accept(2));
    // U+0085 (NEL) and U+2028: characters, not line ends, in XML 1.0.
    let events = edge_in_stream("<a b='\u{85}'>\u{85}\u{2028}</a>", Accept(2));
    assert_eq!(stanza(&events, 1).get_attr("b"), Some("\u{85}"));
    assert_eq!(stanza(&events, 1).text_content(), "\u{85}\u{2028}");
    edge_in_stream("<a\u{85}/>", Reject(1, NotWellFormed));
    // A byte order mark anywhere but the start: a plain character.
    let events = edge_in_stream("<a>\u{FEFF}</a>", Accept(2));
    assert_eq!(stanza(&events, 1).text_content(), "\u{FEFF}");
    // Invalid UTF-8.
    for bad in [
        &b"\xff"[..],
        b"\x80",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82<",
    ] {
        let mut input = format!("{HEADER}<a>").into_bytes();
        input.extend_from_slice(bad);
        input.extend_from_slice(b"</a>");
        edge_bytes(&input, Reject(1, NotWellFormed));
    }
}

#[test]
fn line_ends_and_whitespace() {
    // CRLF and CR become LF in text and, then as a space, in attribute values;
    // tabs in attribute values become spaces.
    let events = edge_in_stream("<a b='x\r\ny\r\r\nz\n\tw'>1\r\n2\r3\r\r\n4</a>", Accept(2));
    assert_eq!(stanza(&events, 1).get_attr("b"), Some("x y  z  w"));
    assert_eq!(stanza(&events, 1).text_content(), "1\n2\n3\n\n4");
    // (A) A CR not followed by LF in an attribute value: a space (XML 1.0 §2.11, then §3.3.3).
    // rxml refuses it before any other character ("invalid codepoint U+79 in
    // attribute value"), drops it before the closing quote or a reference.
    for (value, normalised) in [("x\ry", "x y"), ("x\r y", "x  y"), ("x\r\ry", "x  y")] {
        let events = differs_in_stream(
            &format!("<a b='{value}'/>"),
            Accept(2),
            Reject(1, NotWellFormed),
        );
        assert_eq!(stanza(&events, 1).get_attr("b"), Some(normalised));
    }
    let events = differs_in_stream(
        "<a b='x\r' c='\r' d='x\r&amp;' e='\r&#13;'/>",
        Accept(2),
        Accept(2),
    );
    let a = stanza(&events, 1);
    assert_eq!(a.get_attr("b"), Some("x "));
    assert_eq!(a.get_attr("c"), Some(" "));
    assert_eq!(a.get_attr("d"), Some("x &"));
    assert_eq!(a.get_attr("e"), Some(" \r"));
    // In the stream header too.
    let events = differs(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='a\rb'>",
        Accept(1),
        Reject(0, NotWellFormed),
    );
    let StreamEvent::Open(header) = &events[0] else {
        panic!("expected the header, got {:?}", events[0]);
    };
    assert_eq!(header.get_attr("to"), Some("a b"));
    // CR before a chunk boundary (byte-by-byte plans cover it too).
    let events = edge_in_stream("<a>\r</a>", Accept(2));
    assert_eq!(stanza(&events, 1).text_content(), "\n");
    // End tags with whitespace; attributes with whitespace around `=`.
    let events = edge_in_stream("<a\n b \t= \"1\"\r\n></a \t\r\n>", Accept(2));
    assert_eq!(stanza(&events, 1).get_attr("b"), Some("1"));
    edge_in_stream("< a/>", Reject(1, NotWellFormed));
    edge_in_stream("<a></ a>", Reject(1, NotWellFormed));
    edge_in_stream("<a b='1'c='2'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a b/>", Reject(1, NotWellFormed));
    edge_in_stream("<a b=1/>", Reject(1, NotWellFormed));
    edge_in_stream("<a b='<'/>", Reject(1, NotWellFormed));
    edge_in_stream("<a>]]></a>", Reject(1, NotWellFormed));
    let events = edge_in_stream("<a b=']]>'>]] ]]&gt;</a>", Accept(2));
    assert_eq!(stanza(&events, 1).text_content(), "]] ]]>");
}

#[test]
fn between_stanzas() {
    // Whitespace keepalives: the four `S` characters.
    edge_in_stream(" \t\r\n<a/>\r\n <b/> ", Accept(3));
    // Text is refused...
    edge_in_stream("<a/>x<b/>", Reject(2, NotWellFormed));
    edge_in_stream("<a/>&amp;<b/>", Reject(2, NotWellFormed));
    edge_in_stream("<a/><![CDATA[x]]>", Reject(2, NotWellFormed));
    // (F) ...and so is anything but `S` (RFC 6120 §4.6.1 whitespace keepalives, XML 1.0 §2.3);
    // rxml tests "whitespace" after decoding, with `char::is_whitespace`.
    for between in [
        "&#32;",
        "&#x20;",
        "<![CDATA[ \n]]>",
        "<![CDATA[]]>",
        "\u{A0}",
        "\u{85}",
        "\u{2028}",
        "\u{3000}",
        "&#xA0;",
        " \u{A0} ",
    ] {
        differs_in_stream(
            &format!("<a/>{between}<b/>"),
            Reject(2, NotWellFormed),
            Accept(3),
        );
    }
    // Before the first stanza too.
    differs_in_stream("&#32;<a/>", Reject(1, NotWellFormed), Accept(2));
    // Not XML characters at all.
    edge_in_stream("<a/>\u{C}<b/>", Reject(2, NotWellFormed));
    edge_in_stream("<a/>\0", Reject(2, NotWellFormed));
    // Markup XMPP forbids, between stanzas and inside one.
    edge_in_stream("<a/><!-- c --><b/>", Reject(2, RestrictedXml));
    edge_in_stream("<a><!-- c --></a>", Reject(1, RestrictedXml));
    edge_in_stream("<a/><?pi x?>", Reject(2, RestrictedXml));
    edge_in_stream("<a><?pi x?></a>", Reject(1, RestrictedXml));
    edge_in_stream("<a/><!DOCTYPE a>", Reject(2, RestrictedXml));
    edge_in_stream("<a/><?xml version='1.0'?>", Reject(2, RestrictedXml));
}

#[test]
fn cdata_sections() {
    let events = edge_in_stream(
        "<a>x<![CDATA[ <x> & ]] > ]]]]>y<![CDATA[]]>\r\n</a>",
        Accept(2),
    );
    assert_eq!(
        stanza(&events, 1).text_content(),
        "x <x> & ]] > ]]y\n",
        "one text node from text and CDATA"
    );
    assert_eq!(stanza(&events, 1).children.len(), 1);
    // (B) CRLF and CR become LF in CDATA sections too, right after `]` or `]]` included
    // (XML 1.0 §2.11); rxml keeps that CR (with the LF after it).
    let events = differs_in_stream(
        "<a><![CDATA[]\r]]></a><a><![CDATA[x]\ry]]></a><a><![CDATA[]]\r\ny]]></a><a><![CDATA[]x\r\ny\rz]]></a><a>]\r\nx]]\ry</a><a><![CDATA[\r]\r]]]\r\n]]></a>",
        Accept(7),
        Accept(7),
    );
    let texts: Vec<String> = (1..7).map(|i| stanza(&events, i).text_content()).collect();
    assert_eq!(
        texts,
        [
            "]\n",
            "x]\ny",
            "]]\ny",
            "]x\ny\nz",
            "]\nx]]\ny",
            "\n]\n]]]\n"
        ]
    );
    edge_in_stream("<a><![CDATA[x]]</a>", Accept(1));
    edge_in_stream("<a><![cdata[x]]></a>", Reject(1, RestrictedXml));
    edge_in_stream("<a><![CDATA [x]]></a>", Reject(1, RestrictedXml));
}

#[test]
fn names() {
    let events = edge_in_stream("<é.-_9·a\u{300} Ω-1='1' 中='2'/>", Accept(2));
    assert_eq!(stanza(&events, 1).name, "é.-_9·a\u{300}");
    edge_in_stream("<1a/>", Reject(1, NotWellFormed));
    edge_in_stream("<-a/>", Reject(1, NotWellFormed));
    edge_in_stream("<a b1='1' 1b='2'/>", Reject(1, NotWellFormed));
    // Names starting with `xml` are reserved, not forbidden.
    edge_in_stream("<xmlfoo xmlbar='1'/>", Accept(2));
    // Mismatched end tags.
    edge_in_stream("<a></b>", Reject(1, NotWellFormed));
    edge_in_stream(
        "<a xmlns:p='u' xmlns:q='u'><p:b></q:b></a>",
        Reject(1, NotWellFormed),
    );
}

#[test]
fn fragments() {
    let cases: &[(&[u8], Option<StreamErrorCondition>)] = &[
        (b"<a/>", None),
        (b"<?xml version='1.0'?><a/>", None),
        (b"<?xml version='1.0'?>\n<a/>", None),
        // Like a stream, a fragment may not start with a byte order mark, nor with
        // whitespace before an XML declaration.
        (b"\xef\xbb\xbf<a/>", Some(NotWellFormed)),
        (
            b"\xef\xbb\xbf<?xml version='1.0'?><a/>",
            Some(NotWellFormed),
        ),
        (b" <?xml version='1.0'?><a/>", Some(NotWellFormed)),
        (b"<a/> \n", None),
        (b"", Some(NotWellFormed)),
        (b" ", Some(NotWellFormed)),
        (b"text", Some(NotWellFormed)),
        (b"<a/>text", Some(NotWellFormed)),
        (b"<a/><b/>", Some(NotWellFormed)),
        (b"<a>", Some(NotWellFormed)),
        (b"<a></a", Some(NotWellFormed)),
        // After the element, a comment is "unexpected '<!--' token at end of
        // document" (not-well-formed), a processing instruction restricted-xml.
        (b"<a/><!-- c -->", Some(NotWellFormed)),
        (b"<a><!-- c --></a>", Some(RestrictedXml)),
        (b"<!-- c --><a/>", Some(RestrictedXml)),
        (b"<a/><?pi?>", Some(RestrictedXml)),
        (b"<p:a/>", Some(NotWellFormed)),
        (b"<p:a xmlns:p='u'/>", None),
        (b"<a b='1' b='2'/>", Some(NotWellFormed)),
        (b"<a>&#x10FFFF;</a>", None),
        (b"<a>&#1114112;</a>", Some(NotWellFormed)),
        (
            b"<a xmlns='http://www.w3.org/XML/1998/namespace'/>",
            Some(NotWellFormed),
        ),
        (
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            Some(NotWellFormed),
        ),
    ];
    for &(input, expected) in cases {
        let result = edge_fragment(input);
        match &result {
            Ok(_) => println!("fragment {}: accepted", escape(input)),
            Err(error) => println!("fragment {}: {error}", escape(input)),
        }
        let got = result.as_ref().err().map(|e| e.condition);
        if std::env::var_os("DIFF_LEARN").is_some() && got != expected {
            println!("LEARN {} expected {expected:?} got {got:?}", escape(input));
            continue;
        }
        assert_eq!(
            got,
            expected,
            "the reference's parse_fragment on {}",
            escape(input)
        );
    }
    let element = edge_fragment(b"<a xmlns='urn:x' b='1'><c>t</c></a>").unwrap();
    assert!(element.is("a", "urn:x"));
    assert_eq!(element.get_attr("b"), Some("1"));
    assert!(element.get_child("c", "urn:x").is_some());

    // (D) Whitespace before the element (XML 1.0 §2.1, §2.8: `Misc` includes `S`); rxml refuses it.
    for input in [&b" <a/>"[..], b"\r\n\t<a/> ", b"<?xml version='1.0'?> <a/>"] {
        let rxml = (input[0] != b'<').then_some(NotWellFormed);
        let element = fragment_differs(input, None, rxml).expect("accepted");
        assert!(element.is("a", ""));
    }
    // (A) A CR not followed by LF in an attribute value: a space (XML 1.0 §2.11, then §3.3.3).
    let element = fragment_differs(b"<a b='x\ry'/>", None, Some(NotWellFormed)).expect("accepted");
    assert_eq!(element.get_attr("b"), Some("x y"));
    // (C) A repeated `xmlns` (XML 1.0 §3.1, Unique Att Spec); rxml takes the last.
    fragment_differs(b"<a xmlns='u' xmlns='v'/>", Some(NotWellFormed), None);
    // (F) After the element, only `S` (XML 1.0 §2.8: `Misc`); rxml takes what decodes to whitespace.
    fragment_differs(b"<a/>&#32;", Some(NotWellFormed), None);
    fragment_differs(b"<a/>&#x20;\n", Some(NotWellFormed), None);
    // (G) The xmlns namespace declared (Namespaces in XML 1.0 §3); rxml accepts it.
    fragment_differs(
        b"<a xmlns='http://www.w3.org/2000/xmlns/'/>",
        Some(NotWellFormed),
        None,
    );
    fragment_differs(
        b"<a xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        Some(NotWellFormed),
        None,
    );
}
