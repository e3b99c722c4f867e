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
//! [`parse_fragment`] parses one complete element, as RFC 7395 frames it on a
//! WebSocket.

use rxml::{Event, Parse, Parser, WithOptions};

use crate::error::StreamErrorCondition;
use crate::ns;
use crate::xml::{Element, Node};

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
    parser: Parser,
    limits: Limits,
    /// Elements open inside the current stanza; empty between stanzas.
    stack: Vec<Element>,
    /// Bytes consumed since the last stanza boundary: the stanza being parsed,
    /// including any partial token rxml holds in its buffer.
    stanza_bytes: usize,
    opened: bool,
    closed: bool,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            parser: new_parser(limits),
            limits,
            stack: Vec::new(),
            stanza_bytes: 0,
            opened: false,
            closed: false,
        }
    }

    /// Feeds bytes; appends the events they complete to `events`.
    ///
    /// After an error the stream must be closed with that error's condition.
    pub fn feed(
        &mut self,
        mut data: &[u8],
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
        loop {
            let before = data.len();
            let result = self.parser.parse(&mut data, false);
            self.stanza_bytes += before - data.len();
            self.check_partial_size()?;
            match result {
                Ok(Some(event)) => {
                    if let Some(out) = self.on_event(event)? {
                        let close = out == StreamEvent::Close;
                        events.push(out);
                        if close {
                            self.closed = true;
                            return Ok(());
                        }
                    }
                }
                Ok(None) => {
                    self.closed = true;
                    events.push(StreamEvent::Close);
                    return Ok(());
                }
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    if data.is_empty() {
                        return Ok(());
                    }
                }
                Err(rxml::error::EndOrError::Error(error)) => return Err(map_xml_error(&error)),
            }
        }
    }

    /// Counting consumed bytes (not emitted events) matters: rxml buffers a partial
    /// token of up to 8 KiB before it emits anything.
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

/// rxml caps one token (name, attribute value) at 8 KiB by default; a token that long
/// is legal XML, and the stanza size limit already bounds memory, so the token cap
/// follows the stanza limit and an over-size stanza gets `policy-violation`.
fn new_parser(limits: Limits) -> Parser {
    Parser::with_options(rxml::Options {
        max_token_length: limits.max_stanza_size.max(1024),
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

fn convert_attrs(attrs: rxml::AttrMap) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(attrs.len());
    for ((attr_ns, name), value) in attrs.into_iter() {
        let key = if attr_ns.is_none() {
            name.as_str().to_owned()
        } else if attr_ns.as_str() == ns::XML {
            format!("xml:{}", name.as_str())
        } else {
            format!("{{{}}}{}", attr_ns.as_str(), name.as_str())
        };
        out.push((key, value));
    }
    out
}

fn map_xml_error(error: &rxml::Error) -> StreamParserError {
    let condition = match error {
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
}
