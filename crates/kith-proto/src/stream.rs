//! Incremental parsing of an XMPP stream (RFC 6120 §4) into stanzas.
//!
//! [`StreamParser`] is fed raw bytes as they arrive and returns [`StreamEvent`]s: the
//! stream header, each complete top-level element, and the stream close. It builds
//! on `rxml`, which already refuses what RFC 6120 §11.1 forbids (DTDs, entity
//! declarations and references other than the predefined ones, processing
//! instructions, comments). On top of that it enforces, *while parsing*:
//!
//! - the maximum size of one stanza (bytes from its `<` to its closing `>`), so a
//!   peer can't make the server buffer an unbounded element;
//! - the maximum nesting depth of a stanza;
//! - that nothing but whitespace appears between stanzas.
//!
//! Between stanzas the parser can be [released](StreamParser::release): an idle
//! stream then holds no parser at all, only the bytes of its stream header, which
//! are replayed into a fresh parser when the next bytes arrive (so the stream's
//! namespace declarations still apply).
//!
//! [`parse_fragment`] parses one complete element, as RFC 7395 frames it on a
//! WebSocket.

use rxml::{Event, Parse, Parser, WithOptions};

use crate::error::StreamErrorCondition;
use crate::ns;
use crate::xml::{Element, Name, Node};

/// Limits applied while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_stanza_size: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 48,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The `<stream:stream …>` header, with its attributes.
    Open(Element),
    /// A complete top-level element (stanza or nonza).
    Stanza(Element),
    /// The peer closed its stream with `</stream:stream>`.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{condition}: {detail}")]
pub struct StreamParserError {
    pub condition: StreamErrorCondition,
    pub detail: String,
}

impl StreamParserError {
    fn new(condition: StreamErrorCondition, detail: impl Into<String>) -> Self {
        StreamParserError {
            condition,
            detail: detail.into(),
        }
    }
}

/// Turns a byte stream into [`StreamEvent`]s. Create a new one at every stream
/// restart (after STARTTLS and after SASL success, RFC 6120 §5.4.3.3, §6.4.6).
pub struct StreamParser {
    /// The rxml parser; `None` once released between stanzas (boxed, so a released
    /// parser costs a pointer).
    parser: Option<Box<Parser>>,
    header: Header,
    limits: Limits,
    /// Elements open inside the current stanza; empty between stanzas.
    stack: Vec<Element>,
    /// Bytes consumed since the last stanza boundary: the stanza being parsed,
    /// including any partial token rxml holds in its buffer.
    stanza_bytes: usize,
    /// Whether everything consumed since the last stanza boundary (the header's or
    /// a stanza's closing `>`) is whitespace: a fresh parser primed with the header
    /// is then in the same state as this one.
    at_boundary: bool,
    opened: bool,
    closed: bool,
}

/// The stream header's bytes, kept to prime a fresh parser after a release.
enum Header {
    /// Before the header is complete: what was consumed so far.
    Reading(Vec<u8>),
    /// From the start of the stream through the header's closing `>`.
    Kept(Box<[u8]>),
    /// Longer than [`MAX_KEPT_HEADER`]: the parser is kept instead.
    TooLong,
}

/// A stream header longer than this (typically ≈200 bytes) is not kept, and the
/// stream keeps its parser while idle.
const MAX_KEPT_HEADER: usize = 2048;

/// rxml's cap on one token: a name, an attribute value, or a piece of text (text
/// longer than this arrives in several pieces, which [`push_text`] joins). rxml
/// reserves this much per parser, so it is not the stanza limit; JIDs, the longest
/// attribute values XMPP defines, are at most 3,071 bytes (RFC 7622 §3.1).
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            parser: Some(Box::new(new_parser(limits))),
            header: Header::Reading(Vec::new()),
            limits,
            stack: Vec::new(),
            stanza_bytes: 0,
            at_boundary: false,
            opened: false,
            closed: false,
        }
    }

    /// Drops the rxml parser (and its buffers) if the stream is between stanzas;
    /// the next [`feed`](Self::feed) builds a new one from the kept header. Call it
    /// once the client has been quiet for a while: building one costs about as
    /// much as parsing a small stanza.
    pub fn release(&mut self) {
        if self.releasable() {
            self.parser = None;
            self.stack = Vec::new();
            // Whitespace the old parser held is dropped with it.
            self.stanza_bytes = 0;
        }
    }

    /// Whether [`release`](Self::release) would drop the parser now.
    pub fn releasable(&self) -> bool {
        let between_stanzas = self.at_boundary && self.stack.is_empty();
        self.parser.is_some()
            && ((between_stanzas && matches!(self.header, Header::Kept(_))) || self.closed)
    }

    /// Whether the rxml parser is currently released.
    pub fn is_released(&self) -> bool {
        self.parser.is_none()
    }

    /// Feeds bytes; appends the events they complete to `events`.
    ///
    /// After an error the stream must be closed with that error's condition.
    pub fn feed(
        &mut self,
        data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        if self.closed {
            return if data.iter().all(u8::is_ascii_whitespace) {
                Ok(())
            } else {
                Err(StreamParserError::new(
                    StreamErrorCondition::NotWellFormed,
                    "data after the end of the stream",
                ))
            };
        }
        let mut parser = match self.parser.take() {
            Some(parser) => parser,
            None => self.rebuild()?,
        };
        let result = self.feed_parser(&mut parser, data, events);
        self.parser = Some(parser);
        result
    }

    fn feed_parser(
        &mut self,
        parser: &mut Parser,
        mut data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        loop {
            let before = data;
            let result = parser.parse(&mut data, false);
            let consumed = &before[..before.len() - data.len()];
            self.stanza_bytes += consumed.len();
            self.check_partial_size()?;
            if let Header::Reading(bytes) = &mut self.header {
                if bytes.len() + consumed.len() > MAX_KEPT_HEADER {
                    self.header = Header::TooLong;
                } else {
                    bytes.extend_from_slice(consumed);
                }
            }
            let event = match result {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.closed = true;
                    events.push(StreamEvent::Close);
                    return Ok(());
                }
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    self.note_consumed(consumed);
                    if data.is_empty() {
                        return Ok(());
                    }
                    continue;
                }
                Err(rxml::error::EndOrError::Error(error)) => return Err(map_xml_error(&error)),
            };
            let Some(out) = self.on_event(event)? else {
                self.note_consumed(consumed);
                continue;
            };
            match out {
                StreamEvent::Open(_) => self.header_complete(consumed),
                StreamEvent::Stanza(_) => self.boundary(consumed),
                StreamEvent::Close => {
                    self.closed = true;
                    events.push(out);
                    return Ok(());
                }
            }
            events.push(out);
        }
    }

    /// A stanza or the header ended within `consumed`, at its last `>`: what
    /// follows must be whitespace for the parser to be at a boundary.
    fn boundary(&mut self, consumed: &[u8]) {
        let tail = consumed
            .iter()
            .rposition(|&b| b == b'>')
            .map_or(consumed, |end| &consumed[end + 1..]);
        self.at_boundary = tail.iter().all(u8::is_ascii_whitespace);
    }

    /// Bytes consumed without completing a stanza: anything but whitespace starts one.
    fn note_consumed(&mut self, consumed: &[u8]) {
        if !consumed.iter().all(u8::is_ascii_whitespace) {
            self.at_boundary = false;
        }
    }

    fn header_complete(&mut self, consumed: &[u8]) {
        self.boundary(consumed);
        let Header::Reading(bytes) = &mut self.header else {
            return;
        };
        // The header ends at the last `>` consumed (rxml stops right after it).
        let tail = consumed
            .iter()
            .rev()
            .position(|&b| b == b'>')
            .unwrap_or(consumed.len());
        bytes.truncate(bytes.len() - tail);
        self.header = if bytes.len() <= MAX_KEPT_HEADER {
            Header::Kept(std::mem::take(bytes).into_boxed_slice())
        } else {
            Header::TooLong
        };
    }

    /// A fresh parser that has read the kept stream header.
    fn rebuild(&self) -> Result<Box<Parser>, StreamParserError> {
        let Header::Kept(header) = &self.header else {
            // `release` keeps the parser unless the header is kept.
            return Err(StreamParserError::new(
                StreamErrorCondition::InternalServerError,
                "stream parser lost",
            ));
        };
        let mut parser = Box::new(new_parser(self.limits));
        let mut data: &[u8] = header;
        loop {
            match parser.parse(&mut data, false) {
                Ok(Some(Event::StartElement(..))) => return Ok(parser),
                Ok(Some(_)) => {}
                Ok(None) | Err(rxml::error::EndOrError::NeedMoreData) => break,
                Err(rxml::error::EndOrError::Error(error)) => return Err(map_xml_error(&error)),
            }
        }
        Err(StreamParserError::new(
            StreamErrorCondition::InternalServerError,
            "stream header could not be replayed",
        ))
    }

    /// Counting consumed bytes (not emitted events) matters: rxml buffers a partial
    /// token of up to [`MAX_TOKEN_LENGTH`] before it emits anything.
    fn check_partial_size(&self) -> Result<(), StreamParserError> {
        if self.stanza_bytes > self.limits.max_stanza_size {
            return Err(StreamParserError::new(
                StreamErrorCondition::PolicyViolation,
                "stanza exceeds the maximum size",
            ));
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event) -> Result<Option<StreamEvent>, StreamParserError> {
        match event {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (element_ns, name), attrs) => {
                if !self.opened {
                    self.opened = true;
                    if element_ns.as_str() != ns::STREAM || name.as_str() != "stream" {
                        return Err(StreamParserError::new(
                            StreamErrorCondition::InvalidNamespace,
                            "the stream root must be <stream:stream/>",
                        ));
                    }
                    self.stanza_bytes = 0;
                    let mut header = Element::new(ns::STREAM, "stream");
                    header.attrs = convert_attrs(attrs);
                    return Ok(Some(StreamEvent::Open(header)));
                }
                if self.stack.len() >= self.limits.max_depth {
                    return Err(StreamParserError::new(
                        StreamErrorCondition::PolicyViolation,
                        "stanza nested too deeply",
                    ));
                }
                let mut element = Element::new(element_ns.as_str(), name.as_str());
                element.attrs = convert_attrs(attrs);
                self.stack.push(element);
                Ok(None)
            }
            Event::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(parent) => push_text(parent, text),
                    // Whitespace keepalives (RFC 6120 §4.6.1) mark a boundary.
                    None if text.chars().all(char::is_whitespace) => self.stanza_bytes = 0,
                    None => {
                        return Err(StreamParserError::new(
                            StreamErrorCondition::NotWellFormed,
                            "text between stanzas",
                        ));
                    }
                }
                Ok(None)
            }
            Event::EndElement(_) => {
                let Some(element) = self.stack.pop() else {
                    // The stream root itself closed.
                    return Ok(Some(StreamEvent::Close));
                };
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(Node::Element(element));
                        Ok(None)
                    }
                    None => {
                        self.stanza_bytes = 0;
                        Ok(Some(StreamEvent::Stanza(element)))
                    }
                }
            }
        }
    }
}

/// Parses exactly one complete element, such as a WebSocket frame (RFC 7395 §3.3.3).
pub fn parse_fragment(data: &[u8], limits: Limits) -> Result<Element, StreamParserError> {
    if data.len() > limits.max_stanza_size {
        return Err(StreamParserError::new(
            StreamErrorCondition::PolicyViolation,
            "stanza exceeds the maximum size",
        ));
    }
    let mut parser = new_parser(limits);
    let mut input = data;
    let mut stack: Vec<Element> = Vec::new();
    let mut done: Option<Element> = None;
    loop {
        match parser.parse(&mut input, true) {
            Ok(Some(Event::XmlDeclaration(..))) => {}
            Ok(Some(Event::StartElement(_, (element_ns, name), attrs))) => {
                if stack.len() >= limits.max_depth {
                    return Err(StreamParserError::new(
                        StreamErrorCondition::PolicyViolation,
                        "stanza nested too deeply",
                    ));
                }
                let mut element = Element::new(element_ns.as_str(), name.as_str());
                element.attrs = convert_attrs(attrs);
                stack.push(element);
            }
            Ok(Some(Event::Text(_, text))) => {
                if let Some(parent) = stack.last_mut() {
                    push_text(parent, text);
                }
            }
            Ok(Some(Event::EndElement(_))) => {
                let Some(element) = stack.pop() else {
                    break;
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => done = Some(element),
                }
            }
            Ok(None) => break,
            Err(rxml::error::EndOrError::NeedMoreData) => {
                return Err(StreamParserError::new(
                    StreamErrorCondition::NotWellFormed,
                    "incomplete element",
                ));
            }
            Err(rxml::error::EndOrError::Error(error)) => return Err(map_xml_error(&error)),
        }
    }
    done.ok_or_else(|| StreamParserError::new(StreamErrorCondition::NotWellFormed, "no element"))
}

/// An rxml parser whose token cap is [`MAX_TOKEN_LENGTH`], or the stanza limit if
/// that is lower (a token can't be longer than its stanza).
fn new_parser(limits: Limits) -> Parser {
    Parser::with_options(rxml::Options {
        max_token_length: limits.max_stanza_size.clamp(1024, MAX_TOKEN_LENGTH),
        ..rxml::Options::default()
    })
}

fn push_text(parent: &mut Element, text: String) {
    // rxml may split long text into several events: keep one text node.
    if let Some(Node::Text(previous)) = parent.children.last_mut() {
        previous.push_str(&text);
    } else {
        parent.children.push(Node::Text(text));
    }
}

fn convert_attrs(attrs: rxml::AttrMap) -> Vec<(Name, String)> {
    let mut out = Vec::with_capacity(attrs.len());
    for ((attr_ns, name), value) in attrs.into_iter() {
        let key = if attr_ns.is_none() {
            Name::new(name.as_str())
        } else if attr_ns.as_str() == ns::XML {
            compact_str::format_compact!("xml:{}", name.as_str())
        } else {
            compact_str::format_compact!("{{{}}}{}", attr_ns.as_str(), name.as_str())
        };
        out.push((key, value));
    }
    out
}

fn map_xml_error(error: &rxml::Error) -> StreamParserError {
    let condition = match error {
        // A name or attribute value over the token cap: a size limit, like the
        // stanza's (rxml says "long name or reference").
        rxml::Error::RestrictedXml(detail) if detail.contains("long") => {
            StreamErrorCondition::PolicyViolation
        }
        rxml::Error::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
        // rxml reports `<!DOCTYPE`/`<!ENTITY` as a malformed `<!` section: these are
        // the markup declarations RFC 6120 §11.1 forbids, so say restricted-xml.
        rxml::Error::InvalidSyntax(detail) if detail.contains("section start") => {
            StreamErrorCondition::RestrictedXml
        }
        _ => StreamErrorCondition::NotWellFormed,
    };
    StreamParserError::new(condition, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    fn parse_all(chunks: &[&[u8]], limits: Limits) -> Result<Vec<StreamEvent>, StreamParserError> {
        let mut parser = StreamParser::new(limits);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut events)?;
        }
        Ok(events)
    }

    #[test]
    fn parses_header_stanzas_and_close_byte_by_byte() {
        let doc = format!(
            "{HEADER} <message to='a@b' xml:lang='en'><body>h&amp;i &#x1F600;</body></message>\n </stream:stream>"
        );
        let bytes: Vec<&[u8]> = doc.as_bytes().chunks(1).collect();
        let events = parse_all(&bytes, Limits::default()).expect("valid stream");
        assert_eq!(events.len(), 3);
        let StreamEvent::Open(header) = &events[0] else {
            panic!("expected header, got {:?}", events[0]);
        };
        assert_eq!(header.get_attr("to"), Some("localhost"));
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("expected stanza");
        };
        assert!(message.is("message", ns::CLIENT));
        assert_eq!(message.get_attr("xml:lang"), Some("en"));
        assert_eq!(
            message.child_text("body", ns::CLIENT).as_deref(),
            Some("h&i \u{1F600}")
        );
        assert_eq!(events[2], StreamEvent::Close);
    }

    #[test]
    fn rejects_doctype_and_entities_as_restricted_xml() {
        let doc = "<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("DTD refused");
        assert_eq!(error.condition, StreamErrorCondition::RestrictedXml);
    }

    #[test]
    fn rejects_processing_instructions_and_comments() {
        for bad in ["<?foo bar?>", "<!-- hi -->"] {
            let doc = format!("{HEADER}{bad}");
            let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("refused");
            assert!(
                matches!(
                    error.condition,
                    StreamErrorCondition::RestrictedXml | StreamErrorCondition::NotWellFormed
                ),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_xml() {
        let doc = format!("{HEADER}<message><body></message>");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("refused");
        assert_eq!(error.condition, StreamErrorCondition::NotWellFormed);
    }

    #[test]
    fn enforces_stanza_size_while_parsing() {
        let limits = Limits {
            max_stanza_size: 1024,
            max_depth: 16,
        };
        let mut parser = StreamParser::new(limits);
        let mut events = Vec::new();
        parser
            .feed(format!("{HEADER}<message><body>").as_bytes(), &mut events)
            .expect("header");
        let chunk = [b'x'; 100];
        let mut failed = None;
        // An unterminated stanza must fail after about 1 KiB, not when it ends.
        for i in 0..100 {
            if let Err(error) = parser.feed(&chunk, &mut events) {
                failed = Some((i, error));
                break;
            }
        }
        let (at, error) = failed.expect("limit enforced");
        assert!(at < 20, "failed only after {at} chunks");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
    }

    #[test]
    fn enforces_depth() {
        let limits = Limits {
            max_stanza_size: 1 << 20,
            max_depth: 8,
        };
        let doc = format!("{HEADER}{}", "<a>".repeat(20));
        let error = parse_all(&[doc.as_bytes()], limits).expect_err("too deep");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
    }

    #[test]
    fn wrong_root_is_invalid_namespace() {
        let error = parse_all(&[b"<stream xmlns='jabber:client'>"], Limits::default())
            .expect_err("refused");
        assert_eq!(error.condition, StreamErrorCondition::InvalidNamespace);
    }

    #[test]
    fn fragment_parsing_for_websocket_frames() {
        let element = parse_fragment(
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>",
            Limits::default(),
        )
        .expect("valid frame");
        assert!(element.is("open", ns::FRAMING));
        assert!(parse_fragment(b"<a><b></a>", Limits::default()).is_err());
        assert!(parse_fragment(b"<a/><b/>", Limits::default()).is_err());
    }
    /// Feeds `chunks`, releasing the parser after each one as an idle link does.
    fn parse_releasing(
        chunks: &[&[u8]],
        limits: Limits,
    ) -> Result<(Vec<StreamEvent>, usize), StreamParserError> {
        let mut parser = StreamParser::new(limits);
        let mut events = Vec::new();
        let mut releases = 0;
        for chunk in chunks {
            parser.feed(chunk, &mut events)?;
            parser.release();
            releases += usize::from(parser.is_released());
        }
        Ok((events, releases))
    }

    #[test]
    fn releasing_between_stanzas_changes_nothing() {
        // A prefix for the stream namespace and a second declared prefix: both must
        // still be bound after the parser is rebuilt from the kept header.
        let header = "<?xml version='1.0'?>\n<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' xmlns:x='urn:example:x' to='localhost' version='1.0' xml:lang='en'>";
        let doc = format!(
            "{header}\n<message to='a@b'><body>one &amp; two</body></message> <presence/>\n\t<x:y x:a='1'><z/></x:y><iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq></s:stream>"
        );
        let whole = parse_all(&[doc.as_bytes()], Limits::default()).expect("valid stream");
        assert_eq!(whole.len(), 6);
        for size in [1, 2, 3, 7, 64] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let (events, releases) =
                parse_releasing(&chunks, Limits::default()).expect("valid stream");
            assert_eq!(events, whole, "chunks of {size}");
            // Released wherever a chunk ended between stanzas: after every stanza
            // when fed byte by byte.
            let expected = if size == 1 { 4 } else { 1 };
            assert!(
                releases >= expected,
                "chunks of {size}: released {releases} times"
            );
        }
        let StreamEvent::Stanza(custom) = &whole[3] else {
            panic!("expected a stanza");
        };
        assert!(custom.is("y", "urn:example:x"));
        assert_eq!(custom.get_attr("{urn:example:x}a"), Some("1"));
    }

    #[test]
    fn release_keeps_a_parser_inside_a_stanza() {
        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        parser.release();
        assert!(!parser.is_released(), "no header yet");
        parser
            .feed(format!("{HEADER}<message><bo").as_bytes(), &mut events)
            .expect("header");
        parser.release();
        assert!(!parser.is_released(), "inside a stanza");
        parser
            .feed(b"dy>hi</body></message>", &mut events)
            .expect("stanza");
        parser.release();
        assert!(parser.is_released(), "between stanzas");
        // A stanza that ended with the start of the next one in the same read.
        parser.feed(b"<presence/><mess", &mut events).expect("more");
        parser.release();
        assert!(!parser.is_released(), "the next stanza has begun");
        parser.feed(b"age/>", &mut events).expect("rest");
        let stanzas = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Stanza(_)))
            .count();
        assert_eq!(stanzas, 3);
    }

    #[test]
    fn a_long_header_keeps_its_parser() {
        let long = "x".repeat(MAX_KEPT_HEADER);
        let doc = format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='{long}'><presence/><presence/>"
        );
        let (events, releases) =
            parse_releasing(&[doc.as_bytes(), b"<presence/>"], Limits::default())
                .expect("valid stream");
        assert_eq!(events.len(), 4);
        assert_eq!(releases, 0);
    }

    #[test]
    fn long_text_is_joined_into_one_node() {
        // Text longer than the token cap arrives from rxml in pieces.
        let body = "é".repeat(3 * MAX_TOKEN_LENGTH);
        let doc = format!("{HEADER}<message><body>{body}</body></message>");
        let chunks: Vec<&[u8]> = doc.as_bytes().chunks(1000).collect();
        let (events, _) = parse_releasing(&chunks, Limits::default()).expect("valid stream");
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("expected a stanza");
        };
        assert_eq!(message.child_text("body", ns::CLIENT), Some(body));
    }

    #[test]
    fn an_attribute_over_the_token_cap_is_policy_violation() {
        // Below the stanza limit, above the token cap: a clean stream error.
        let value = "a".repeat(MAX_TOKEN_LENGTH + 1);
        let doc = format!("{HEADER}<message id='{value}'/>");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("refused");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        // A JID-sized value (RFC 7622 allows 3,071 bytes) is fine.
        let value = "a".repeat(3071);
        let doc = format!("{HEADER}<message to='{value}'/>");
        let events = parse_all(&[doc.as_bytes()], Limits::default()).expect("accepted");
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_long_name_is_policy_violation() {
        let doc = format!("{HEADER}<{}/>", "n".repeat(MAX_TOKEN_LENGTH + 1));
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("refused");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
    }
}
