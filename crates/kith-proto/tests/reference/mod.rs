//! The rxml-based stream parser kith used before its own, kept as a reference to
//! check `kith_proto::stream` against (see `differential.rs`).
//!
//! This is `crates/kith-proto/src/stream.rs` as of commit f2b04c5, without its unit
//! tests, with `crate::` paths turned into `kith_proto::` ones and the public types
//! (`Limits`, `StreamEvent`, `StreamParserError`) taken from `kith_proto::stream`, so
//! both parsers' results compare with `==`. Its behaviour must not change: it is
//! the definition the new parser is tested against.

use kith_proto::error::StreamErrorCondition;
use kith_proto::ns;
use kith_proto::stream::{Limits, StreamEvent, StreamParserError};
use kith_proto::xml::{Element, Name, Node};
use rxml::{Event, Parse, Parser, WithOptions};

/// `StreamParserError::new`, which is private to `kith_proto`.
fn parser_error(condition: StreamErrorCondition, detail: impl Into<String>) -> StreamParserError {
    StreamParserError {
        condition,
        detail: detail.into(),
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
                Err(parser_error(
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
            return Err(parser_error(
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
        Err(parser_error(
            StreamErrorCondition::InternalServerError,
            "stream header could not be replayed",
        ))
    }

    /// Counting consumed bytes (not emitted events) matters: rxml buffers a partial
    /// token of up to [`MAX_TOKEN_LENGTH`] before it emits anything.
    fn check_partial_size(&self) -> Result<(), StreamParserError> {
        if self.stanza_bytes > self.limits.max_stanza_size {
            return Err(parser_error(
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
                        return Err(parser_error(
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
                    return Err(parser_error(
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
                        return Err(parser_error(
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
        return Err(parser_error(
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
                    return Err(parser_error(
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
                return Err(parser_error(
                    StreamErrorCondition::NotWellFormed,
                    "incomplete element",
                ));
            }
            Err(rxml::error::EndOrError::Error(error)) => return Err(map_xml_error(&error)),
        }
    }
    done.ok_or_else(|| parser_error(StreamErrorCondition::NotWellFormed, "no element"))
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

fn convert_attrs(attrs: rxml::AttrMap) -> Vec<(Name, Name)> {
    let mut out = Vec::with_capacity(attrs.len());
    for ((attr_ns, name), value) in attrs.into_iter() {
        let key = if attr_ns.is_none() {
            Name::new(name.as_str())
        } else if attr_ns.as_str() == ns::XML {
            Name::from(format!("xml:{}", name.as_str()))
        } else {
            Name::from(format!("{{{}}}{}", attr_ns.as_str(), name.as_str()))
        };
        out.push((key, Name::from(value)));
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
    parser_error(condition, error.to_string())
}
