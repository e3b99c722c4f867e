//! Incremental parsing of an XMPP stream (RFC 6120 §4) into stanzas.
//!
//! [`StreamParser`] is fed raw bytes as they arrive and returns [`StreamEvent`]s: the
//! stream header, each complete top-level element, and the stream close. It works
//! in two steps:
//!
//! - a *framer* runs over every byte once, with a few bytes of state carried from
//!   one read to the next, and finds where the header, each stanza and the closing
//!   tag end (it follows tags, quoted attribute values and CDATA sections, and
//!   counts depth). It enforces, *while reading*, the maximum size of one stanza
//!   (bytes from its `<` to its closing `>`, so a peer can't make the server buffer
//!   an unbounded element), the maximum nesting depth, and that nothing but
//!   whitespace comes between stanzas; it refuses comments, processing
//!   instructions and DTDs (RFC 6120 §11.1) as soon as they begin;
//! - each complete stanza is then parsed whole (`element`) — straight from the
//!   bytes read when it arrived in one read, else from the bytes kept of it — with
//!   every check XML 1.0 and Namespaces in XML 1.0 make, in the namespace
//!   context of the stream header.
//!
//! Between stanzas the parser holds no buffer; [`StreamParser::release`] drops the
//! one a stanza split across reads needed.
//!
//! [`parse_fragment`] parses one complete element, as RFC 7395 frames it on a
//! WebSocket.

mod element;

use self::element::{Scope, is_space};
use crate::error::StreamErrorCondition;
use crate::ns;
use crate::xml::Element;

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
    pub(crate) fn new(condition: StreamErrorCondition, detail: impl Into<String>) -> Self {
        StreamParserError {
            condition,
            detail: detail.into(),
        }
    }
}

/// Turns a byte stream into [`StreamEvent`]s. Create a new one at every stream
/// restart (after STARTTLS and after SASL success, RFC 6120 §5.4.3.3, §6.4.6).
pub struct StreamParser {
    limits: Limits,
    /// Where the framer is in the markup.
    lex: Lex,
    /// Elements open in the stanza being read; 0 between stanzas.
    depth: usize,
    /// Where the names of the open elements (and of one whose start tag is being
    /// read) are in the item's bytes: (offset, length). The framer checks each end
    /// tag against its start tag, so that a stanza missing one fails at once
    /// rather than when the size limit is reached.
    names: Vec<(u32, u32)>,
    /// Whether an item (the header, a stanza, the closing tag) has begun and not
    /// ended: its bytes so far are in `partial`, or in the bytes being fed.
    in_item: bool,
    /// The bytes of an item begun in an earlier read.
    partial: Vec<u8>,
    /// Whether no byte of the stream has been read: the XML declaration may only
    /// come first (XML 1.0 §2.8).
    at_start: bool,
    /// Whether the `<` just read was the stream's first byte.
    declaration_allowed: bool,
    /// The header's namespace context and name, once read.
    stream: Option<Box<OpenStream>>,
    closed: bool,
    released: bool,
    /// The error that ended the stream, if one did (its state is then not
    /// fit to read on from).
    failed: Option<Box<StreamParserError>>,
}

struct OpenStream {
    scope: Scope,
    qname: Box<str>,
}

/// The framer's state: what the last byte read was part of.
#[derive(Clone, Copy, Debug)]
enum Lex {
    /// Character data (between stanzas: whitespace only).
    Text,
    /// Just after a `<`.
    Open,
    /// In a start tag's name, which began at this offset in the item.
    StartName { at: u32 },
    /// In a start tag outside quotes; whether the last byte was `/`.
    StartTag { slash: bool },
    /// In a start tag's attribute value quoted by this byte.
    Quoted(u8),
    /// In an end tag's name, having matched this many bytes of the name it
    /// must repeat.
    EndName { matched: u32 },
    /// In an end tag, after its name.
    EndTag,
    /// After `<!`, having matched this many bytes of `[CDATA[`.
    Bang(u8),
    /// In a CDATA section, after this many `]` (at most 2).
    CData(u8),
    /// In the XML declaration, having matched this many bytes of `xml` and the
    /// space after it; whether the last byte was `?`.
    Declaration { matched: u8, question: bool },
}

/// What ends where the framer stopped.
enum Item {
    Header,
    Stanza,
    Close,
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            limits,
            lex: Lex::Text,
            depth: 0,
            names: Vec::new(),
            in_item: false,
            partial: Vec::new(),
            at_start: true,
            declaration_allowed: false,
            stream: None,
            closed: false,
            released: false,
            failed: None,
        }
    }

    /// Drops the buffer a stanza split across reads needed, if the stream is
    /// between stanzas. Call it once the client has been quiet for a while.
    pub fn release(&mut self) {
        if self.releasable() {
            self.partial = Vec::new();
            self.names = Vec::new();
            self.released = true;
        }
    }

    /// Whether [`release`](Self::release) would release the parser now: the
    /// stream is between stanzas.
    pub fn releasable(&self) -> bool {
        !self.released && ((!self.in_item && self.stream.is_some()) || self.closed)
    }

    /// Whether the parser was released and has not been fed since.
    pub fn is_released(&self) -> bool {
        self.released
    }

    /// The namespace the stream header declared for its content (`jabber:client`
    /// on a client's stream; `""` if it declared none), once it has been read.
    pub fn content_namespace(&self) -> Option<&str> {
        self.stream
            .as_ref()
            .map(|stream| stream.scope.default_ns.as_str())
    }

    /// Feeds bytes; appends the events they complete to `events`.
    ///
    /// After an error the stream must be closed with that error's condition; the
    /// parser answers every later call with the same error.
    pub fn feed(
        &mut self,
        data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        if let Some(error) = &self.failed {
            return Err(StreamParserError::clone(error));
        }
        let result = self.read(data, events);
        if let Err(error) = &result {
            self.failed = Some(Box::new(error.clone()));
        }
        result
    }

    fn read(
        &mut self,
        data: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        self.released = false;
        if self.closed {
            return after_close(data);
        }
        // Where the current item begins in `data` (0: in an earlier read).
        let mut start = self.in_item.then_some(0);
        // `data[checked.0..]` as far as `element::checked_prefix` accepts it.
        let mut checked: (usize, &str) = (0, "");
        let mut i = 0;
        while i < data.len() {
            let byte = data[i];
            let mut ended = None;
            match self.lex {
                Lex::Text if self.depth == 0 => {
                    if byte == b'<' {
                        if start.is_none()
                            && let Some(taken) = self.whole_stanza(data, i, &mut checked, events)
                        {
                            i += taken;
                            continue;
                        }
                        self.declaration_allowed = self.at_start;
                        self.at_start = false;
                        if start.is_none() {
                            start = Some(i);
                            self.in_item = true;
                        }
                        self.lex = Lex::Open;
                    } else if is_space(byte) {
                        self.at_start = false;
                    } else {
                        return Err(not_well_formed(if self.stream.is_some() {
                            "text between stanzas"
                        } else {
                            "text before the stream header"
                        }));
                    }
                    i += 1;
                }
                Lex::Text => match memchr::memchr(b'<', &data[i..]) {
                    Some(offset) => {
                        i += offset + 1;
                        self.lex = Lex::Open;
                    }
                    None => i = data.len(),
                },
                Lex::Open => {
                    // The first byte of a name is read again as part of it.
                    i += 1;
                    self.lex = match byte {
                        b'/' if self.stream.is_none() => {
                            return Err(not_well_formed("end tag before the stream header"));
                        }
                        b'/' => Lex::EndName { matched: 0 },
                        b'!' => Lex::Bang(0),
                        b'?' if self.declaration_allowed => Lex::Declaration {
                            matched: 0,
                            question: false,
                        },
                        b'?' => return Err(restricted("processing instructions are not allowed")),
                        _ => {
                            if self.stream.is_some() && self.depth >= self.limits.max_depth {
                                return Err(too_deep());
                            }
                            i -= 1;
                            let from = start.unwrap_or(0);
                            Lex::StartName {
                                at: self.item_offset(from, i),
                            }
                        }
                    };
                }
                Lex::StartName { at } => {
                    let Some(offset) = data[i..].iter().position(|&byte| is_name_end(byte)) else {
                        i = data.len();
                        continue;
                    };
                    // The byte after the name is read again as part of the tag.
                    i += offset;
                    let from = start.unwrap_or(0);
                    let end = self.item_offset(from, i);
                    if end == at {
                        return Err(not_well_formed("expected a name"));
                    }
                    if self.stream.is_some() {
                        self.names.push((at, end - at));
                    }
                    self.lex = Lex::StartTag { slash: false };
                }
                Lex::StartTag { slash } => {
                    let Some(offset) = data[i..].iter().position(|&byte| {
                        matches!(byte, b'>' | b'\'' | b'"' | b'/' | b'<') || slash
                    }) else {
                        i = data.len();
                        continue;
                    };
                    i += offset;
                    let byte = data[i];
                    i += 1;
                    match byte {
                        b'>' => {
                            self.lex = Lex::Text;
                            if self.stream.is_none() && self.depth == 0 {
                                ended = Some(Item::Header);
                            } else if slash {
                                self.names.pop();
                                ended = (self.depth == 0).then_some(Item::Stanza);
                            } else {
                                self.depth += 1;
                            }
                        }
                        _ if slash => return Err(not_well_formed("expected '>' after '/'")),
                        b'\'' | b'"' => self.lex = Lex::Quoted(byte),
                        b'/' => self.lex = Lex::StartTag { slash: true },
                        _ => return Err(not_well_formed("'<' in a tag")),
                    }
                }
                Lex::Quoted(quote) => match memchr::memchr2(quote, b'<', &data[i..]) {
                    Some(offset) if data[i + offset] == b'<' => {
                        return Err(not_well_formed("'<' in an attribute value"));
                    }
                    Some(offset) => {
                        i += offset + 1;
                        self.lex = Lex::StartTag { slash: false };
                    }
                    None => i = data.len(),
                },
                Lex::EndName { matched } => {
                    let from = start.unwrap_or(0);
                    let expected = self.open_name_byte(data, from, matched);
                    if is_name_end(byte) {
                        if expected.is_some() {
                            return Err(not_well_formed("end tag does not match its start tag"));
                        }
                        self.lex = Lex::EndTag;
                    } else if expected == Some(byte) {
                        self.lex = Lex::EndName {
                            matched: matched + 1,
                        };
                        i += 1;
                    } else {
                        return Err(not_well_formed("end tag does not match its start tag"));
                    }
                }
                Lex::EndTag => match memchr::memchr(b'>', &data[i..]) {
                    Some(offset) => {
                        i += offset + 1;
                        self.lex = Lex::Text;
                        if self.depth == 0 {
                            ended = Some(Item::Close);
                        } else {
                            self.names.pop();
                            self.depth -= 1;
                            ended = (self.depth == 0).then_some(Item::Stanza);
                        }
                    }
                    None => i = data.len(),
                },
                Lex::Bang(matched) => {
                    i += 1;
                    if byte != CDATA_OPEN[usize::from(matched)] {
                        // `<!--` and `<!DOCTYPE` (and the other declarations).
                        return Err(
                            if matched == 0 && (byte == b'-' || byte.is_ascii_uppercase()) {
                                restricted("comments and markup declarations are not allowed")
                            } else {
                                not_well_formed("malformed markup")
                            },
                        );
                    }
                    self.lex = if usize::from(matched) + 1 < CDATA_OPEN.len() {
                        Lex::Bang(matched + 1)
                    } else if self.depth == 0 {
                        return Err(not_well_formed("text between stanzas"));
                    } else {
                        Lex::CData(0)
                    };
                }
                Lex::CData(brackets) => {
                    i += 1;
                    self.lex = match byte {
                        b']' => Lex::CData((brackets + 1).min(2)),
                        b'>' if brackets == 2 => Lex::Text,
                        _ => Lex::CData(0),
                    };
                }
                Lex::Declaration { matched, question } => {
                    i += 1;
                    self.lex = match (matched, byte) {
                        // `<?xml` and a space, else a processing instruction.
                        (0..3, _) if byte == b"xml"[usize::from(matched)] => Lex::Declaration {
                            matched: matched + 1,
                            question: false,
                        },
                        (3, _) if is_space(byte) => Lex::Declaration {
                            matched: 4,
                            question: false,
                        },
                        (0..4, _) => {
                            return Err(restricted("processing instructions are not allowed"));
                        }
                        // Neither `<` nor `>` is part of a declaration: refused at
                        // once rather than read on until `?>`.
                        (_, b'>') if question => Lex::Text,
                        (_, b'<' | b'>') => {
                            return Err(not_well_formed("malformed XML declaration"));
                        }
                        _ => Lex::Declaration {
                            matched,
                            question: byte == b'?',
                        },
                    };
                }
            }
            if let Some(item) = ended {
                let from = start.take().unwrap_or(0);
                self.in_item = false;
                self.item_ended(item, &data[from..i], events)?;
                if self.closed {
                    return after_close(&data[i..]);
                }
            }
        }
        if let Some(from) = start {
            let rest = &data[from..];
            check_size(self.partial.len() + rest.len(), self.limits)?;
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }

    /// A stanza that begins at `data[i]` and ends in `data`, read at once: the
    /// framer's pass over its bytes (to find where it ends) is not needed when
    /// all of it is there, as it is in most reads. Its length once its event is
    /// queued; `None` if it doesn't end in `data` or has anything wrong with
    /// it: the framer then reads it (and says what is wrong, or waits for
    /// more). `checked` holds what [`element::checked_prefix`] let through of
    /// `data` from an earlier stanza of this read on, so each byte is checked
    /// once a read.
    fn whole_stanza<'d>(
        &self,
        data: &'d [u8],
        i: usize,
        checked: &mut (usize, &'d str),
        events: &mut Vec<StreamEvent>,
    ) -> Option<usize> {
        let stream = self.stream.as_ref()?;
        // Not an end tag, comment, CDATA section or processing instruction.
        if matches!(data.get(i + 1), None | Some(b'/' | b'!' | b'?')) {
            return None;
        }
        let (from, text) = *checked;
        let text = match text.get(i.checked_sub(from)?..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => {
                let rest = element::checked_prefix(&data[i..]);
                *checked = (i, rest);
                rest
            }
        };
        // A longer stanza is refused by the framer.
        let mut limit = text.len().min(self.limits.max_stanza_size);
        while !text.is_char_boundary(limit) {
            limit -= 1;
        }
        let (stanza, taken) = element::leading_stanza(&text[..limit], &stream.scope, self.limits)?;
        events.push(StreamEvent::Stanza(stanza));
        Some(taken)
    }

    /// Where `data[i]` is in the current item, which begins at `data[from]` or,
    /// if it began in an earlier read, in `partial`.
    fn item_offset(&self, from: usize, i: usize) -> u32 {
        // Items are at most `max_stanza_size` long, checked at each read's end.
        u32::try_from(self.partial.len() + (i - from)).unwrap_or(u32::MAX)
    }

    /// Byte `k` of the name the end tag being read must repeat: the innermost
    /// open element's, or the stream header's at depth 0; `None` past its end.
    fn open_name_byte(&self, data: &[u8], from: usize, k: u32) -> Option<u8> {
        let k = k as usize;
        let Some(&(at, len)) = self.names.last().filter(|_| self.depth > 0) else {
            let qname = self.stream.as_ref().map_or("", |stream| &stream.qname);
            return qname.as_bytes().get(k).copied();
        };
        if k >= len as usize {
            return None;
        }
        let offset = at as usize + k;
        match offset.checked_sub(self.partial.len()) {
            None => self.partial.get(offset).copied(),
            Some(in_data) => data.get(from + in_data).copied(),
        }
    }

    /// An item ended with `tail`, the part of it in this read.
    fn item_ended(
        &mut self,
        item: Item,
        tail: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        check_size(self.partial.len() + tail.len(), self.limits)?;
        let mut partial = std::mem::take(&mut self.partial);
        let bytes = if partial.is_empty() {
            tail
        } else {
            partial.extend_from_slice(tail);
            &partial[..]
        };
        let result = self.parse_item(item, bytes, events);
        partial.clear();
        self.partial = partial;
        result
    }

    fn parse_item(
        &mut self,
        item: Item,
        bytes: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamParserError> {
        match item {
            Item::Header => {
                let header = element::header(bytes, self.limits)?;
                if !header.element.is("stream", ns::STREAM) {
                    return Err(StreamParserError::new(
                        StreamErrorCondition::InvalidNamespace,
                        "the stream root must be <stream:stream/>",
                    ));
                }
                events.push(StreamEvent::Open(header.element));
                self.stream = Some(Box::new(OpenStream {
                    scope: header.scope,
                    qname: header.qname,
                }));
                if header.empty {
                    self.closed = true;
                    events.push(StreamEvent::Close);
                }
            }
            Item::Stanza => {
                let outside = Scope::default();
                let scope = self
                    .stream
                    .as_ref()
                    .map_or(&outside, |stream| &stream.scope);
                let stanza = element::stanza(bytes, scope, self.limits)?;
                events.push(StreamEvent::Stanza(stanza));
            }
            Item::Close => {
                let qname = self.stream.as_ref().map_or("", |stream| &stream.qname);
                if !element::closes(bytes, qname) {
                    return Err(not_well_formed("end tag does not match the stream header"));
                }
                self.closed = true;
                events.push(StreamEvent::Close);
            }
        }
        Ok(())
    }
}

/// Whether `byte` ends a name in a tag.
fn is_name_end(byte: u8) -> bool {
    is_space(byte) || matches!(byte, b'>' | b'/' | b'<' | b'\'' | b'"' | b'=')
}

/// After `</stream:stream>` only whitespace may follow.
fn after_close(data: &[u8]) -> Result<(), StreamParserError> {
    if data.iter().all(|&byte| is_space(byte)) {
        Ok(())
    } else {
        Err(not_well_formed("data after the end of the stream"))
    }
}

fn not_well_formed(detail: &'static str) -> StreamParserError {
    StreamParserError::new(StreamErrorCondition::NotWellFormed, detail)
}

/// What RFC 6120 §11.1 forbids: comments, processing instructions, DTDs, entity
/// references other than the predefined ones.
fn restricted(detail: &'static str) -> StreamParserError {
    StreamParserError::new(StreamErrorCondition::RestrictedXml, detail)
}

/// A limit of this server's (RFC 6120 §4.9.3.18).
fn policy_violation(detail: &'static str) -> StreamParserError {
    StreamParserError::new(StreamErrorCondition::PolicyViolation, detail)
}

fn too_deep() -> StreamParserError {
    policy_violation("stanza nested too deeply")
}

/// A stanza (or the header) of `size` bytes is within the limit.
fn check_size(size: usize, limits: Limits) -> Result<(), StreamParserError> {
    if size > limits.max_stanza_size {
        return Err(policy_violation("stanza exceeds the maximum size"));
    }
    Ok(())
}

/// Parses exactly one complete element, such as a WebSocket frame (RFC 7395 §3.3.3).
pub fn parse_fragment(data: &[u8], limits: Limits) -> Result<Element, StreamParserError> {
    check_size(data.len(), limits)?;
    element::fragment(data, limits)
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

    /// Stanzas that arrive whole are read in one pass (`whole_stanza`); what
    /// they give, and what is wrong with a bad one, is what the framer finds
    /// when every byte arrives alone.
    #[test]
    fn whole_stanzas_read_at_once_agree_with_bytes_read_one_by_one() {
        let stanzas = [
            "<message to='a@b' id='1'><body>one</body></message>",
            "<iq type='get' id='2'><query xmlns='jabber:iq:roster'/></iq>",
            "<message to='a@b'><body><![CDATA[x < y]]> &amp; \u{e9}\u{1F600}</body></message>",
            "<presence/>",
        ];
        let small = Limits {
            max_stanza_size: 60,
            max_depth: 3,
        };
        let cases = [
            (stanzas.concat(), Limits::default()),
            // Split mid-stanza and mid-character (the read ends inside 😀).
            (
                format!("{}{}", stanzas[0], &stanzas[2][..40]),
                Limits::default(),
            ),
            // The second is bad in each way the reader refuses.
            (
                format!("{}<message><body></message>", stanzas[0]),
                Limits::default(),
            ),
            (
                format!("{}<message><!-- c --></message>", stanzas[0]),
                Limits::default(),
            ),
            (
                format!("{}<message>\u{1}</message>", stanzas[0]),
                Limits::default(),
            ),
            (
                format!("{}<message>\u{FFFF}</message>", stanzas[0]),
                Limits::default(),
            ),
            (format!("{}<a><b><c><d/></c></b></a>", stanzas[0]), small),
            (format!("<a/>{}", stanzas[1]), small),
            (format!("{}<x:a/>", stanzas[0]), Limits::default()),
        ];
        for (body, limits) in cases {
            let doc = format!("{HEADER}{body}");
            let mut bytes = doc.into_bytes();
            if body.contains('\u{1}') {
                // Not valid UTF-8 past here either.
                bytes.push(0xFF);
            }
            let whole = parse_all(&[&bytes], limits);
            let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
            let one_by_one = parse_all(&one_by_one, limits);
            match (whole, one_by_one) {
                (Ok(whole), Ok(one_by_one)) => assert_eq!(whole, one_by_one, "{body}"),
                (Err(whole), Err(one_by_one)) => {
                    assert_eq!(whole.condition, one_by_one.condition, "{body}");
                }
                (whole, one_by_one) => panic!("{body}: {whole:?} / {one_by_one:?}"),
            }
        }
        let doc = format!("{HEADER}{}", stanzas.concat());
        let events = parse_all(&[doc.as_bytes()], Limits::default()).expect("valid");
        assert_eq!(events.len(), 1 + stanzas.len());
    }

    /// XML 1.0 §3.1: no attribute twice in a tag, `xmlns:xml` (which may be
    /// declared, to its one namespace) included.
    #[test]
    fn the_xml_prefix_declared_twice_is_a_duplicate_attribute() {
        let xml = "xmlns:xml='http://www.w3.org/XML/1998/namespace'";
        let once = format!("{HEADER}<message {xml} xml:lang='en'/>");
        let events = parse_all(&[once.as_bytes()], Limits::default()).expect("declared once");
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("expected a stanza, got {:?}", events[1]);
        };
        assert_eq!(message.get_attr("xml:lang"), Some("en"));
        let twice = format!("{HEADER}<message {xml} {xml}/>");
        let error = parse_all(&[twice.as_bytes()], Limits::default()).expect_err("twice");
        assert_eq!(error.condition, StreamErrorCondition::NotWellFormed);
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
    fn release_waits_for_the_end_of_a_stanza() {
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
    fn a_long_header_is_like_any_other() {
        let long = "x".repeat(4096);
        let doc = format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='{long}'><presence/><presence/>"
        );
        let (events, releases) =
            parse_releasing(&[doc.as_bytes(), b"<presence/>"], Limits::default())
                .expect("valid stream");
        assert_eq!(events.len(), 4);
        assert_eq!(releases, 2);
    }

    #[test]
    fn long_text_is_one_node() {
        let body = "é".repeat(24 * 1024);
        let doc = format!("{HEADER}<message><body>{body}</body></message>");
        let chunks: Vec<&[u8]> = doc.as_bytes().chunks(1000).collect();
        let (events, _) = parse_releasing(&chunks, Limits::default()).expect("valid stream");
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("expected a stanza");
        };
        assert_eq!(message.child_text("body", ns::CLIENT), Some(body));
    }

    #[test]
    fn long_values_and_names_are_bounded_by_the_stanza_size() {
        let limits = Limits {
            max_stanza_size: 16 * 1024,
            max_depth: 8,
        };
        let value = "a".repeat(12 * 1024);
        let doc = format!("{HEADER}<message id='{value}'/><{value}/>");
        let events = parse_all(&[doc.as_bytes()], limits).expect("under the limit");
        assert_eq!(events.len(), 3);
        let value = "a".repeat(16 * 1024);
        for doc in [
            format!("{HEADER}<message id='{value}'/>"),
            format!("{HEADER}<{value}/>"),
        ] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(4096).collect();
            let error = parse_all(&chunks, limits).expect_err("over the limit");
            assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        }
    }

    #[test]
    fn the_xml_declaration_comes_first_or_not_at_all() {
        let declaration = "<?xml version='1.0' encoding='utf-8'?>\n";
        let header = &HEADER["<?xml version='1.0'?>".len()..];
        let doc = format!("{declaration}{header}<presence/>");
        for size in [1, 3, 50] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let events = parse_all(&chunks, Limits::default()).expect("valid stream");
            assert_eq!(events.len(), 2, "chunks of {size}");
        }
        for doc in [
            format!(" {declaration}{header}"),
            format!("{header}{declaration}"),
            format!("{header}<presence>{declaration}</presence>"),
        ] {
            let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err(&doc);
            assert_eq!(
                error.condition,
                StreamErrorCondition::RestrictedXml,
                "{doc}"
            );
        }
        let doc = format!("<?xml version='1.0' encoding='ISO-8859-1'?>{header}");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("latin-1");
        assert_eq!(error.condition, StreamErrorCondition::UnsupportedEncoding);
        // Not an encoding name at all (XML 1.0 §4.3.3 EncName): not well-formed.
        for name in ["UTF-8\r", "8bit", "", "utf 8"] {
            let doc = format!("<?xml version='1.0' encoding='{name}'?>{header}");
            let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err(&doc);
            assert_eq!(
                error.condition,
                StreamErrorCondition::NotWellFormed,
                "{doc:?}"
            );
        }
    }

    #[test]
    fn character_data_is_normalised_as_xml_says() {
        let doc = format!(
            "{HEADER}<message a='x\r\ny\tz&#10;'><body>1\r\n2\r3 &lt;&#x41;&#66;&gt; ]] ><![CDATA[<not> & ]]]]><![CDATA[>\r\n]]>!</body></message>"
        );
        for size in [1, 7, 4096] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let events = parse_all(&chunks, Limits::default()).expect("valid stream");
            let StreamEvent::Stanza(message) = &events[1] else {
                panic!("expected a stanza");
            };
            assert_eq!(message.get_attr("a"), Some("x y z\n"));
            let body = message.get_child("body", ns::CLIENT).expect("body");
            assert_eq!(body.children.len(), 1, "one text node");
            assert_eq!(body.text_content(), "1\n2\n3 <AB> ]] ><not> & ]]>\n!");
        }
    }

    #[test]
    fn refuses_what_xml_refuses_inside_stanzas() {
        for bad in [
            "<message><body>a ]]> b</body></message>",
            "<message a='1' a='2'/>",
            "<message xmlns:p='urn:x' xmlns:q='urn:x' p:a='1' q:a='2'/>",
            "<p:message/>",
            "<message xmlns:p=''/>",
            "<message a='<'/>",
            "<message a=1/>",
            "<message><body>&#0;</body></message>",
            "<message><body>&#xFFFE;</body></message>",
            "<message><body>\u{1}</body></message>",
            "<message><body>\u{FFFF}</body></message>",
            "<message><body>&</body></message>",
            "<message><a:b:c/></message>",
            "<message><1a/></message>",
            "<message></messag>",
            "<message/ >",
        ] {
            let doc = format!("{HEADER}{bad}");
            for size in [1, 4096] {
                let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
                let error = parse_all(&chunks, Limits::default()).expect_err(bad);
                assert_eq!(
                    error.condition,
                    StreamErrorCondition::NotWellFormed,
                    "{bad}"
                );
            }
        }
        let doc = format!("{HEADER}<message><body>&lol;</body></message>");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("entity");
        assert_eq!(error.condition, StreamErrorCondition::RestrictedXml);
    }

    #[test]
    fn the_close_must_match_the_header_and_end_the_stream() {
        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        parser.feed(HEADER.as_bytes(), &mut events).expect("header");
        let error = parser
            .feed(b"</stream>", &mut events)
            .expect_err("wrong name");
        assert_eq!(error.condition, StreamErrorCondition::NotWellFormed);
        let doc = format!("{HEADER}<presence/></stream:stream> \n");
        let events = parse_all(&[doc.as_bytes(), b"\t"], Limits::default()).expect("valid");
        assert_eq!(events.last(), Some(&StreamEvent::Close));
        let doc = format!("{HEADER}</stream:stream><presence/>");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("after close");
        assert_eq!(error.condition, StreamErrorCondition::NotWellFormed);
    }

    #[test]
    fn long_and_many_namespaces_are_bounded() {
        let long = "u".repeat(2000);
        for doc in [
            format!("{HEADER}<message xmlns='{long}'/>"),
            format!("{HEADER}<message xmlns:p='{long}'/>"),
            format!(
                "<stream:stream xmlns='{long}' xmlns:stream='http://etherx.jabber.org/streams'>"
            ),
        ] {
            let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("too long");
            assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        }
        // A namespace of 1,000 bytes inherited by many elements: the tree would
        // hold a copy per element.
        let namespace = "u".repeat(1000);
        let doc = format!(
            "{HEADER}<message xmlns='{namespace}'>{}</message>",
            "<a/>".repeat(20_000)
        );
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("expands");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        let prefixes: String = (0..100)
            .map(|i| format!(" xmlns:p{i}='urn:x:{i}'"))
            .collect();
        let doc = format!("{HEADER}<message{prefixes}/>");
        let error = parse_all(&[doc.as_bytes()], Limits::default()).expect_err("prefixes");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        // What real stanzas do is fine.
        let doc = format!(
            "{HEADER}<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>{}</query></iq>",
            "<feature var='urn:xmpp:x'/>".repeat(500)
        );
        assert_eq!(
            parse_all(&[doc.as_bytes()], Limits::default())
                .expect("valid")
                .len(),
            2
        );
    }

    #[test]
    fn the_content_namespace_is_the_headers_default() {
        let mut parser = StreamParser::new(Limits::default());
        assert_eq!(parser.content_namespace(), None);
        parser
            .feed(HEADER.as_bytes(), &mut Vec::new())
            .expect("header");
        assert_eq!(parser.content_namespace(), Some(ns::CLIENT));
        let mut parser = StreamParser::new(Limits::default());
        parser
            .feed(
                b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
                &mut Vec::new(),
            )
            .expect("header");
        assert_eq!(parser.content_namespace(), Some(""));
    }

    #[test]
    fn an_error_is_final() {
        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        let doc = format!("{HEADER}<a<");
        let error = parser
            .feed(doc.as_bytes(), &mut events)
            .expect_err("malformed");
        // The bytes after the error could look like anything to the state it
        // stopped in: they are not read.
        let again = parser
            .feed("é/><b/>".as_bytes(), &mut events)
            .expect_err("still failed");
        assert_eq!(again, error);
        assert_eq!(events.len(), 1, "only the header");
    }

    #[test]
    fn invalid_utf8_is_unsupported_encoding() {
        let doc = [HEADER.as_bytes(), b"<message>\xff</message>"].concat();
        let error = parse_all(&[&doc], Limits::default()).expect_err("not UTF-8");
        assert_eq!(error.condition, StreamErrorCondition::UnsupportedEncoding);
    }

    #[test]
    fn a_split_stanza_is_buffered_until_it_ends_and_released_after() {
        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        parser.feed(HEADER.as_bytes(), &mut events).expect("header");
        parser
            .feed(b"<message id='a&amp;", &mut events)
            .expect("part");
        assert!(!parser.releasable());
        parser
            .feed(b"b'><body>x</body>", &mut events)
            .expect("part");
        assert!(parser.partial.capacity() > 0);
        parser.feed(b"</message>", &mut events).expect("end");
        assert!(parser.releasable());
        parser.release();
        assert_eq!(parser.partial.capacity(), 0);
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("expected a stanza");
        };
        assert_eq!(message.get_attr("id"), Some("a&b"));
    }
}
