//! Parsing one complete element (a stanza the stream's framer cut out, the stream
//! header's start tag, a WebSocket frame, a stored stanza) into an [`Element`].
//!
//! The input is whole, so this is a plain recursive descent over a string: no
//! token buffers, no parser state between calls. It checks what XML 1.0 and
//! Namespaces in XML 1.0 require of a well-formed, namespace-well-formed element,
//! and refuses what RFC 6120 §11.1 forbids (comments, processing instructions,
//! markup declarations, entity references other than the predefined ones).
//! Character data is returned as XML 1.0 §2.11 and §3.3.3 say a processor must
//! pass it on: line ends normalised to `\n`, whitespace in attribute values to
//! spaces, references replaced.

use std::borrow::Cow;

use super::{Limits, StreamParserError, not_well_formed, policy_violation, restricted, too_deep};
use crate::error::StreamErrorCondition;
use crate::ns;
use crate::xml::{Element, Name, Node};

type Result<T> = std::result::Result<T, StreamParserError>;

/// The namespace of namespace declarations, which nothing may be bound to
/// (Namespaces in XML 1.0 §3).
const XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// The longest namespace name accepted (the ones XMPP defines are under 64
/// bytes). Every element or attribute in a namespace holds a copy of its name.
const MAX_NAMESPACE: usize = 1024;

/// The most prefixes declared at once (the stream header's and a stanza's
/// together): each prefixed name is looked up among them.
const MAX_PREFIXES: usize = 64;

/// Names up to this long are kept inline in an [`Element`] (`xml::Name`).
const INLINE_NAME: usize = 24;

/// Namespace bindings an element inherits from outside its own bytes: the stream
/// header's (nothing for a WebSocket frame or a stored stanza).
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    /// The default namespace; `""` for none.
    pub default_ns: Name,
    /// Declared prefixes and their namespaces.
    pub prefixes: Vec<(Name, Name)>,
}

/// The stream header's start tag, parsed.
pub(crate) struct Header {
    pub element: Element,
    /// The bindings its children inherit.
    pub scope: Scope,
    /// Its name as written (`stream:stream`), which the closing tag must repeat.
    pub qname: Box<str>,
    /// Whether it was an empty-element tag (`<stream:stream …/>`).
    pub empty: bool,
}

/// One element, alone in `bytes` from its `<` to its last `>`, inheriting `scope`.
pub(crate) fn stanza(bytes: &[u8], scope: &Scope, limits: Limits) -> Result<Element> {
    let mut reader = Reader::new(bytes, scope, limits)?;
    let element = reader.element(&scope.default_ns, 1)?;
    reader.end()?;
    Ok(element)
}

/// The stanza `text` begins with, and how many bytes it takes, if all of it is
/// there and it is well formed; `None` otherwise (the caller then reads it the
/// slow way, which says what is wrong or waits for the rest). `text` is what
/// [`checked_prefix`] let through, so a stanza inside it passes the checks
/// [`stanza`] makes of its bytes.
pub(crate) fn leading_stanza(
    text: &str,
    scope: &Scope,
    limits: Limits,
) -> Option<(Element, usize)> {
    let mut reader = Reader::checked(text, scope, limits);
    let element = reader.element(&scope.default_ns, 1).ok()?;
    Some((element, reader.pos))
}

/// The longest prefix of `bytes` that [`checked_text`] accepts: up to the first
/// byte of invalid (or, at the end, incomplete) UTF-8 or of a character XML
/// does not allow.
pub(crate) fn checked_prefix(bytes: &[u8]) -> &str {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let (valid, _) = bytes.split_at(error.valid_up_to());
            // Valid up to there: `from_utf8` can't fail again.
            std::str::from_utf8(valid).unwrap_or_default()
        }
    };
    allowed_prefix(text)
}

/// The longest prefix of `text` without a character XML 1.0 §2.2 `Char`
/// leaves out: the control characters but tab, LF and CR, and U+FFFE and
/// U+FFFF.
fn allowed_prefix(text: &str) -> &str {
    let bytes = text.as_bytes();
    // Found at once (most text has none), then where.
    let mut end = if crate::xml::any_byte(bytes, forbidden) {
        bytes.iter().position(|&byte| forbidden(byte)).unwrap_or(0)
    } else {
        bytes.len()
    };
    let mut rest = &bytes[..end];
    let mut at = 0;
    while let Some(index) = memchr::memchr(0xEF, rest) {
        if is_non_character(&rest[index..]) {
            end = at + index;
            break;
        }
        at += index + 1;
        rest = &rest[index + 1..];
    }
    // `end` is at a character's first byte: an ASCII one, or the 0xEF that
    // begins U+FFFE or U+FFFF.
    text.get(..end).unwrap_or_default()
}

/// One element with optional whitespace and XML declaration around it, in no
/// namespace context: a WebSocket frame (RFC 7395 §3.3.3) or a stored stanza.
pub(crate) fn fragment(bytes: &[u8], limits: Limits) -> Result<Element> {
    let scope = Scope::default();
    let mut reader = Reader::new(bytes, &scope, limits)?;
    reader.prolog("no element")?;
    let element = reader.element("", 1)?;
    reader.skip_space();
    if reader.starts_with(b"<?") || reader.starts_with(b"<!--") {
        return Err(restricted(
            "comments and processing instructions are not allowed",
        ));
    }
    reader.end()?;
    Ok(element)
}

/// The stream's first bytes through the header's closing `>`: an optional XML
/// declaration, whitespace, and the root's start tag.
pub(crate) fn header(bytes: &[u8], limits: Limits) -> Result<Header> {
    let outer = Scope::default();
    let mut reader = Reader::new(bytes, &outer, limits)?;
    reader.prolog("no stream header")?;
    let tag = reader.start_tag("")?;
    reader.end()?;
    let scope = Scope {
        default_ns: Name::new(tag.default_ns.as_deref().unwrap_or("")),
        prefixes: reader
            .prefixes
            .iter()
            .map(|(prefix, namespace)| (Name::new(prefix), Name::new(namespace)))
            .collect(),
    };
    Ok(Header {
        element: tag.element,
        scope,
        qname: tag.qname.into(),
        empty: tag.empty,
    })
}

/// Whether `bytes` is the closing tag of an element named `qname` (`</qname >`).
pub(crate) fn closes(bytes: &[u8], qname: &str) -> bool {
    let Some(rest) = bytes
        .strip_prefix(b"</")
        .and_then(|rest| rest.strip_prefix(qname.as_bytes()))
        .and_then(|rest| rest.strip_suffix(b">"))
    else {
        return false;
    };
    rest.iter().all(|&byte| is_space(byte))
}

/// XML 1.0 §2.3 `S`.
pub(crate) fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// A start tag read, before its content.
struct StartTag<'a> {
    element: Element,
    qname: &'a str,
    /// The default namespace it declares, if it declares one.
    default_ns: Option<Cow<'a, str>>,
    empty: bool,
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    scope: &'a Scope,
    /// Prefixes declared by the elements being read, innermost last.
    prefixes: Vec<(&'a str, Cow<'a, str>)>,
    max_depth: usize,
    /// Bytes of namespace names copied into elements and attribute keys (past
    /// the inline size), and how many may be: without a bound, a long namespace
    /// inherited by many small elements would make a stanza's tree hundreds of
    /// times its size.
    copied: usize,
    may_copy: usize,
}

/// XML 1.0 §4.3.3 `EncName`.
fn is_enc_name(value: &str) -> bool {
    let mut bytes = value.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], scope: &'a Scope, limits: Limits) -> Result<Self> {
        Ok(Self::checked(checked_text(bytes)?, scope, limits))
    }

    /// A reader of `text` that [`checked_text`] accepted.
    fn checked(text: &'a str, scope: &'a Scope, limits: Limits) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            scope,
            prefixes: Vec::new(),
            max_depth: limits.max_depth,
            copied: 0,
            may_copy: limits.max_stanza_size.saturating_mul(2),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn starts_with(&self, prefix: &[u8]) -> bool {
        self.bytes[self.pos..].starts_with(prefix)
    }

    fn expect(&mut self, byte: u8, detail: &'static str) -> Result<()> {
        if self.peek() != Some(byte) {
            return Err(not_well_formed(detail));
        }
        self.pos += 1;
        Ok(())
    }

    /// Skips `S`; whether there was any.
    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn end(&self) -> Result<()> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(not_well_formed("data after the element"))
        }
    }

    /// An optional XML declaration (XML 1.0 §2.8: only at the very start), then `S`.
    /// An element's `<` must follow; `missing` says what is missing if not.
    fn prolog(&mut self, missing: &'static str) -> Result<()> {
        if self.starts_with(b"<?xml") && self.bytes.get(5).is_some_and(|&byte| is_space(byte)) {
            self.xml_declaration()?;
        }
        self.skip_space();
        if self.starts_with(b"<?") {
            return Err(restricted("processing instructions are not allowed"));
        }
        if self.starts_with(b"<!") {
            return Err(restricted(
                "comments and document type declarations are not allowed",
            ));
        }
        if self.peek() != Some(b'<') {
            return Err(not_well_formed(missing));
        }
        Ok(())
    }

    /// `<?xml version='1.0' encoding='UTF-8' standalone='yes'?>` (XML 1.0 §2.8,
    /// §4.3.3): version 1.0, and UTF-8 only (RFC 6120 §11.6).
    fn xml_declaration(&mut self) -> Result<()> {
        self.pos += "<?xml".len();
        let mut seen = 0;
        loop {
            let spaced = self.skip_space();
            if self.starts_with(b"?>") {
                self.pos += 2;
                return if seen == 0 {
                    Err(not_well_formed("XML declaration without a version"))
                } else {
                    Ok(())
                };
            }
            if !spaced {
                return Err(not_well_formed("malformed XML declaration"));
            }
            let name = self.name()?;
            self.skip_space();
            self.expect(b'=', "malformed XML declaration")?;
            self.skip_space();
            let value = self.quoted()?;
            match (seen, name) {
                (0, "version") if value == "1.0" => seen = 1,
                (0, "version") => return Err(not_well_formed("XML version other than 1.0")),
                (1, "encoding") if value.eq_ignore_ascii_case("utf-8") => seen = 2,
                // §4.3.3: EncName ::= [A-Za-z] ([A-Za-z0-9._] | '-')*; anything
                // else is no encoding name at all.
                (1, "encoding") if !is_enc_name(value) => {
                    return Err(not_well_formed("malformed encoding name"));
                }
                (1, "encoding") => {
                    return Err(StreamParserError::new(
                        StreamErrorCondition::UnsupportedEncoding,
                        "only UTF-8 is supported",
                    ));
                }
                (1 | 2, "standalone") if matches!(value, "yes" | "no") => seen = 3,
                _ => return Err(not_well_formed("malformed XML declaration")),
            }
        }
    }

    /// A quoted value without references (the XML declaration's).
    fn quoted(&mut self) -> Result<&'a str> {
        let quote = self.peek().filter(|&byte| byte == b'\'' || byte == b'"');
        let quote = quote.ok_or_else(|| not_well_formed("expected a quoted value"))?;
        let start = self.pos + 1;
        let end = memchr::memchr(quote, &self.bytes[start..])
            .map(|offset| start + offset)
            .ok_or_else(|| not_well_formed("unterminated value"))?;
        self.pos = end + 1;
        Ok(&self.text[start..end])
    }

    /// An element from its `<`, with its content and end tag.
    fn element(&mut self, default_ns: &str, depth: usize) -> Result<Element> {
        if depth > self.max_depth {
            return Err(too_deep());
        }
        let bindings = self.prefixes.len();
        let StartTag {
            mut element,
            qname,
            default_ns: own_default,
            empty,
        } = self.start_tag(default_ns)?;
        if !empty {
            let inner_default = own_default.as_deref().unwrap_or(default_ns);
            self.content(&mut element, qname, inner_default, depth)?;
        }
        self.prefixes.truncate(bindings);
        Ok(element)
    }

    /// A start tag from its `<`; the prefixes it declares stay in `prefixes`.
    fn start_tag(&mut self, default_ns: &str) -> Result<StartTag<'a>> {
        self.pos += 1;
        let qname = self.name()?;
        let mut attrs: Vec<(Name, Name)> = Vec::new();
        let mut own_default: Option<Cow<'a, str>> = None;
        let mut prefixed = false;
        let declared_from = self.prefixes.len();
        let empty = loop {
            let spaced = self.skip_space();
            match self.peek() {
                Some(b'>') => {
                    self.pos += 1;
                    break false;
                }
                Some(b'/') => {
                    self.pos += 1;
                    self.expect(b'>', "expected '>' after '/'")?;
                    break true;
                }
                Some(_) if spaced => {
                    let key = self.name()?;
                    self.skip_space();
                    self.expect(b'=', "expected '=' after an attribute name")?;
                    self.skip_space();
                    let value = self.attribute_value()?;
                    if key == "xmlns" {
                        if own_default.is_some() {
                            return Err(not_well_formed("duplicate attribute"));
                        }
                        if value == ns::XML || value == XMLNS {
                            return Err(not_well_formed(
                                "a reserved namespace can't be the default",
                            ));
                        }
                        if value.len() > MAX_NAMESPACE {
                            return Err(policy_violation("namespace name too long"));
                        }
                        own_default = Some(value);
                    } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                        self.declare(prefix, value, declared_from)?;
                    } else {
                        prefixed |= key.as_bytes().contains(&b':');
                        attrs.push((Name::new(key), Name::from(value)));
                    }
                }
                Some(_) => return Err(not_well_formed("expected whitespace between attributes")),
                None => return Err(not_well_formed("unterminated start tag")),
            }
        };
        let (prefix, local) = split_qname(qname);
        let namespace = match prefix {
            None => own_default.as_deref().unwrap_or(default_ns),
            Some("xmlns") => return Err(not_well_formed("the xmlns prefix names no element")),
            Some(prefix) => self.resolve(prefix)?,
        };
        let mut element = Element::new(namespace, local);
        self.copy(element.ns.len())?;
        if prefixed {
            let mut keys = 0;
            for (key, _) in &mut attrs {
                if let (Some(prefix), local) = split_qname(key) {
                    // Keys as `xml::Element` documents them: `xml:lang`, `{ns}local`.
                    let namespace = self.resolve(prefix)?;
                    if namespace != ns::XML {
                        *key = compact_str::format_compact!("{{{namespace}}}{local}");
                        keys += key.len();
                    }
                }
            }
            self.copy(keys)?;
        }
        check_unique(&attrs)?;
        element.attrs = attrs;
        Ok(StartTag {
            element,
            qname,
            default_ns: own_default,
            empty,
        })
    }

    /// `xmlns:prefix='namespace'` (Namespaces in XML 1.0 §3, constraints in §3).
    fn declare(&mut self, prefix: &'a str, namespace: Cow<'a, str>, from: usize) -> Result<()> {
        let xml = namespace == ns::XML;
        if prefix == "xmlns" || namespace == XMLNS {
            return Err(not_well_formed(
                "the xmlns prefix and namespace are reserved",
            ));
        }
        if (prefix == "xml") != xml {
            return Err(not_well_formed(
                "the xml prefix is bound to its namespace only",
            ));
        }
        if namespace.is_empty() {
            return Err(not_well_formed("a prefix can't be undeclared in XML 1.0"));
        }
        if namespace.len() > MAX_NAMESPACE {
            return Err(policy_violation("namespace name too long"));
        }
        if self.prefixes.len() + self.scope.prefixes.len() >= MAX_PREFIXES {
            return Err(policy_violation("too many namespace prefixes"));
        }
        if self.prefixes[from..].iter().any(|(p, _)| *p == prefix) {
            return Err(not_well_formed("duplicate attribute"));
        }
        // Kept for `xml` too, bound as it always is: so that declaring it
        // twice is the duplicate attribute it is (XML 1.0 §3.1).
        self.prefixes.push((prefix, namespace));
        Ok(())
    }

    /// Counts a name of `len` bytes copied into the tree.
    fn copy(&mut self, len: usize) -> Result<()> {
        if len > INLINE_NAME {
            self.copied += len;
            if self.copied > self.may_copy {
                return Err(policy_violation(
                    "stanza expands to too many namespace names",
                ));
            }
        }
        Ok(())
    }

    fn resolve(&self, prefix: &str) -> Result<&str> {
        if let Some((_, namespace)) = self.prefixes.iter().rev().find(|(p, _)| *p == prefix) {
            return Ok(namespace);
        }
        if let Some((_, namespace)) = self.scope.prefixes.iter().rev().find(|(p, _)| p == prefix) {
            return Ok(namespace);
        }
        if prefix == "xml" {
            return Ok(ns::XML);
        }
        Err(not_well_formed("undeclared namespace prefix"))
    }

    /// Character data, CDATA sections and child elements, through the end tag.
    /// Adjacent character data and CDATA sections make one text node.
    fn content(
        &mut self,
        element: &mut Element,
        qname: &str,
        default_ns: &str,
        depth: usize,
    ) -> Result<()> {
        let mut text: Option<String> = None;
        loop {
            let start = self.pos;
            let Some(offset) = memchr::memchr(b'<', &self.bytes[start..]) else {
                return Err(not_well_formed("unclosed element"));
            };
            let lt = start + offset;
            if lt > start {
                let raw = &self.text[start..lt];
                let out = text.get_or_insert_with(|| String::with_capacity(raw.len()));
                push_character_data(out, raw)?;
            }
            self.pos = lt;
            match self.bytes.get(lt + 1) {
                Some(b'/') => {
                    self.pos += 2;
                    let name = self.name()?;
                    if name != qname {
                        return Err(not_well_formed("end tag does not match its start tag"));
                    }
                    self.skip_space();
                    self.expect(b'>', "malformed end tag")?;
                    if let Some(text) = text {
                        element.children.push(Node::Text(text));
                    }
                    return Ok(());
                }
                Some(b'!') if self.starts_with(b"<![CDATA[") => {
                    let from = lt + "<![CDATA[".len();
                    let end = memchr::memmem::find(&self.bytes[from..], b"]]>")
                        .map(|offset| from + offset)
                        .ok_or_else(|| not_well_formed("unterminated CDATA section"))?;
                    if end > from {
                        push_normalised(
                            text.get_or_insert_with(String::new),
                            &self.text[from..end],
                        );
                    }
                    self.pos = end + 3;
                }
                Some(b'!') => {
                    return Err(restricted(
                        "comments and markup declarations are not allowed",
                    ));
                }
                Some(b'?') => return Err(restricted("processing instructions are not allowed")),
                _ => {
                    if let Some(text) = text.take() {
                        element.children.push(Node::Text(text));
                    }
                    let child = self.element(default_ns, depth + 1)?;
                    element.children.push(Node::Element(child));
                }
            }
        }
    }

    /// A name (XML 1.0 §2.3 `Name`) that is a `QName` (Namespaces in XML 1.0 §4):
    /// one optional prefix, both parts `NCName`s.
    fn name(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let mut colon = None;
        let mut ascii = true;
        loop {
            // Runs of ASCII name bytes, looked up (most names are nothing else).
            self.pos += self.bytes[self.pos..]
                .iter()
                .position(|&byte| !ASCII_NAME_BYTE[usize::from(byte)])
                .unwrap_or(self.bytes.len() - self.pos);
            match self.bytes.get(self.pos) {
                Some(b':') if colon.is_none() => colon = Some(self.pos),
                Some(b':') => return Err(not_well_formed("invalid name")),
                Some(0x80..) => ascii = false,
                _ => break,
            }
            self.pos += 1;
        }
        let name = &self.text[start..self.pos];
        let valid = if ascii {
            // Both parts begin with a letter or `_`: the rest is checked above.
            let begins_part = |at: usize| {
                at < self.pos && (self.bytes[at].is_ascii_alphabetic() || self.bytes[at] == b'_')
            };
            begins_part(start) && colon.is_none_or(|colon| begins_part(colon + 1))
        } else {
            let (prefix, local) = split_qname(name);
            prefix.is_none_or(is_ncname) && is_ncname(local)
        };
        if !valid {
            return Err(not_well_formed("invalid name"));
        }
        Ok(name)
    }

    /// A quoted attribute value, references replaced and whitespace normalised
    /// (XML 1.0 §3.3.3).
    fn attribute_value(&mut self) -> Result<Cow<'a, str>> {
        let raw = self.quoted()?;
        let special = |byte: &u8| matches!(byte, b'&' | b'<' | b'\t' | b'\n' | b'\r');
        if !raw.as_bytes().iter().any(special) {
            return Ok(Cow::Borrowed(raw));
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(index) = rest.bytes().position(|byte| special(&byte)) {
            out.push_str(&rest[..index]);
            rest = match rest.as_bytes()[index] {
                b'<' => return Err(not_well_formed("'<' in an attribute value")),
                b'&' => {
                    let (replacement, after) = reference(&rest[index..])?;
                    out.push(replacement);
                    after
                }
                // CR LF is one line end, so one space.
                b'\r' if rest.as_bytes().get(index + 1) == Some(&b'\n') => {
                    out.push(' ');
                    &rest[index + 2..]
                }
                _ => {
                    out.push(' ');
                    &rest[index + 1..]
                }
            };
        }
        out.push_str(rest);
        Ok(Cow::Owned(out))
    }
}

/// Appends character data (between tags): references replaced, line ends
/// normalised, `]]>` refused (XML 1.0 §2.4).
fn push_character_data(out: &mut String, raw: &str) -> Result<()> {
    let mut rest = raw;
    while let Some(index) = memchr::memchr3(b'&', b'\r', b']', rest.as_bytes()) {
        out.push_str(&rest[..index]);
        rest = match rest.as_bytes()[index] {
            b'&' => {
                let (replacement, after) = reference(&rest[index..])?;
                out.push(replacement);
                after
            }
            b'\r' => {
                out.push('\n');
                let skip = if rest.as_bytes().get(index + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                &rest[index + skip..]
            }
            _ => {
                if rest[index..].starts_with("]]>") {
                    return Err(not_well_formed("']]>' in character data"));
                }
                out.push(']');
                &rest[index + 1..]
            }
        };
    }
    out.push_str(rest);
    Ok(())
}

/// Appends CDATA content with line ends normalised (XML 1.0 §2.11).
fn push_normalised(out: &mut String, raw: &str) {
    let mut rest = raw;
    while let Some(index) = memchr::memchr(b'\r', rest.as_bytes()) {
        out.push_str(&rest[..index]);
        out.push('\n');
        let skip = if rest.as_bytes().get(index + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[index + skip..];
    }
    out.push_str(rest);
}

/// The reference at the start of `text` (`&…;`) and what follows it: the five
/// predefined entities and character references (XML 1.0 §4.1, §4.6). Any other
/// entity reference is what RFC 6120 §11.1 forbids.
fn reference(text: &str) -> Result<(char, &str)> {
    let body = &text[1..];
    let Some(end) = body.find(';') else {
        return Err(not_well_formed("unterminated reference"));
    };
    let (name, rest) = (&body[..end], &body[end + 1..]);
    let replacement = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let code = if let Some(hex) = name.strip_prefix("#x") {
                number(hex, 16)
            } else if let Some(decimal) = name.strip_prefix('#') {
                number(decimal, 10)
            } else if is_ncname(name) {
                return Err(restricted("entity references are not allowed"));
            } else {
                return Err(not_well_formed("malformed reference"));
            };
            code.and_then(char::from_u32)
                .filter(|&c| is_xml_char(c))
                .ok_or_else(|| not_well_formed("reference to a character XML does not allow"))?
        }
    };
    Ok((replacement, rest))
}

fn number(digits: &str, radix: u32) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|byte| (byte as char).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// XML 1.0 §2.2 `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `bytes` as text, if every character in it is one XML allows (XML 1.0 §2.2):
/// UTF-8, no control characters but tab, CR and LF, no U+FFFE or U+FFFF.
fn checked_text(bytes: &[u8]) -> Result<&str> {
    // RFC 6120 §4.9.3.22: improperly encoded UTF-8 is unsupported-encoding.
    let text = std::str::from_utf8(bytes).map_err(|_| {
        StreamParserError::new(StreamErrorCondition::UnsupportedEncoding, "invalid UTF-8")
    })?;
    if allowed_prefix(text).len() < text.len() {
        return Err(not_well_formed("a character XML does not allow"));
    }
    Ok(text)
}

/// A control character XML 1.0 §2.2 `Char` leaves out; without branches (see
/// [`crate::xml::any_byte`]).
fn forbidden(byte: u8) -> bool {
    (byte < 0x20) & (byte != b'\t') & (byte != b'\n') & (byte != b'\r')
}

/// Whether `bytes` begins with U+FFFE or U+FFFF (EF BF BE, EF BF BF), which
/// XML 1.0 §2.2 `Char` leaves out.
fn is_non_character(bytes: &[u8]) -> bool {
    matches!(bytes, [0xEF, 0xBF, 0xBE | 0xBF, ..])
}

/// The ASCII bytes of names, but `:`: letters, digits, `_`, `-`, `.` (XML 1.0
/// §2.3 `NameChar`; whether a name begins with one it may begin with is
/// checked apart).
static ASCII_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] =
            matches!(byte as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.');
        byte += 1;
    }
    table
};

fn split_qname(name: &str) -> (Option<&str>, &str) {
    // Names are short: a plain loop beats a search set up for long haystacks.
    match name.bytes().position(|byte| byte == b':') {
        Some(colon) => (Some(&name[..colon]), &name[colon + 1..]),
        None => (None, name),
    }
}

/// Namespaces in XML 1.0 §3 `NCName`: an XML `Name` without colons.
fn is_ncname(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start_char) && chars.all(is_name_char)
}

/// XML 1.0 §2.3 `NameStartChar`, without `:`, and without U+FEFF (the byte
/// order mark, in no name before XML 1.0's fifth edition; rxml refused it too).
fn is_name_start_char(c: char) -> bool {
    c != '\u{FEFF}'
        && matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 §2.3 `NameChar`, without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Attributes are unique after namespace expansion (XML 1.0 §3.1, Namespaces in
/// XML 1.0 §6.3).
fn check_unique(attrs: &[(Name, Name)]) -> Result<()> {
    let duplicate = if attrs.len() <= 16 {
        attrs
            .iter()
            .enumerate()
            .any(|(i, (key, _))| attrs[..i].iter().any(|(other, _)| other == key))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(attrs.len());
        !attrs.iter().all(|(key, _)| seen.insert(key.as_str()))
    };
    if duplicate {
        return Err(not_well_formed("duplicate attribute"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::checked_text;

    #[test]
    fn a_control_character_is_refused_wherever_it_stands() {
        for len in [1, 31, 32, 33, 64, 100] {
            let text = "a".repeat(len);
            assert!(checked_text(text.as_bytes()).is_ok());
            for at in 0..len {
                for byte in [0x00, 0x01, 0x0b, 0x0c, 0x1f] {
                    let mut bytes = text.clone().into_bytes();
                    bytes[at] = byte;
                    assert!(checked_text(&bytes).is_err(), "{byte:#x} at {at} of {len}");
                }
                for byte in [b'\t', b'\n', b'\r', b' '] {
                    let mut bytes = text.clone().into_bytes();
                    bytes[at] = byte;
                    assert!(checked_text(&bytes).is_ok(), "{byte:#x} at {at} of {len}");
                }
            }
        }
    }
}
