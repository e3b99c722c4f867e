//! A small, owned XML element tree and its serialiser.
//!
//! Stanzas are parsed once at the edge into [`Element`]s (see [`crate::stream`]) and
//! everything inside the server works on them. Names are namespace-resolved: an
//! element carries its namespace URI, never a prefix. Serialisation declares a
//! namespace only where it differs from the parent's, so the bytes stay small.

use std::fmt::Write as _;

use crate::ns;

/// One XML element: namespace, local name, attributes and children.
///
/// Attributes without a namespace are keyed by their local name; `xml:lang` is keyed
/// `xml:lang`; any other namespaced attribute is keyed `{namespace}local`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Element {
    pub ns: Name,
    pub name: Name,
    pub attrs: Vec<(Name, Name)>,
    pub children: Vec<Node>,
}

/// An element's name or namespace, or an attribute's key or value: kept inline
/// up to 24 bytes (every name XMPP defines, `jabber:client` and most
/// namespaces; ids, types and most addresses), so a parsed or built element
/// allocates mostly for its text, its lists and longer values. Compares with
/// `&str` and derefs to `str`.
pub type Name = compact_str::CompactString;

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(ns: &str, name: &str) -> Self {
        Element {
            ns: Name::new(ns),
            name: Name::new(name),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: set an attribute.
    pub fn attr(mut self, key: &str, value: impl Into<Name>) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: set an attribute when `value` is `Some`.
    pub fn attr_opt(mut self, key: &str, value: Option<impl Into<Name>>) -> Self {
        if let Some(value) = value {
            self.set_attr(key, value);
        }
        self
    }

    /// Builder: append a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn get_attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, key: &str, value: impl Into<Name>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((Name::new(key), value)),
        }
    }

    pub fn remove_attr(&mut self, key: &str) -> Option<Name> {
        let index = self.attrs.iter().position(|(k, _)| k == key)?;
        Some(self.attrs.remove(index).1)
    }

    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            Node::Text(_) => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Removes every child element with this name and namespace.
    pub fn remove_children(&mut self, name: &str, ns: &str) {
        self.children
            .retain(|node| !matches!(node, Node::Element(e) if e.is(name, ns)));
    }

    /// The concatenated text content of this element's direct text children.
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(text) = node {
                out.push_str(text);
            }
        }
        out
    }

    /// Text of the first child `name` in `ns`, if that child exists.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.get_child(name, ns).map(Element::text_content)
    }

    /// Serialises as a top-level element of a stream whose default namespace is
    /// `parent_ns` (`jabber:client` on TCP streams, `""` on WebSocket frames).
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = String::with_capacity(128);
        self.write_xml(&mut out, parent_ns, Prefixes::default());
        out
    }

    /// [`Element::to_xml`] in a shared string, written in a buffer this thread
    /// keeps: one allocation (the result) instead of a growing string and a copy.
    pub fn to_shared_xml(&self, parent_ns: &str) -> std::sync::Arc<str> {
        thread_local! {
            static BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        /// A buffer grown past this (a large stanza) is not kept.
        const KEPT: usize = 16 * 1024;
        BUFFER.with(|buffer| {
            // Not re-entered: serialising calls nothing that serialises.
            let Ok(mut out) = buffer.try_borrow_mut() else {
                return self.to_xml(parent_ns).into();
            };
            out.clear();
            self.write_xml(&mut out, parent_ns, Prefixes::default());
            let shared = std::sync::Arc::from(out.as_str());
            if out.capacity() > KEPT {
                *out = String::new();
            }
            shared
        })
    }

    /// Like [`Element::to_xml`], for a stream root that declares the `stream:` prefix.
    pub fn to_stream_xml(&self, parent_ns: &str) -> String {
        let mut out = String::with_capacity(128);
        self.write_stream_xml(&mut out, parent_ns);
        out
    }

    /// [`Element::to_stream_xml`], appended to `out`.
    pub fn write_stream_xml(&self, out: &mut String, parent_ns: &str) {
        let prefixes = Prefixes {
            stream_declared: true,
        };
        self.write_xml(out, parent_ns, prefixes);
    }

    fn write_xml(&self, out: &mut String, parent_ns: &str, mut prefixes: Prefixes) {
        // Stream-level elements keep their conventional `stream:` prefix, which some
        // clients still match on textually.
        let stream_element = self.ns == ns::STREAM;
        out.push('<');
        if stream_element {
            out.push_str("stream:");
        }
        out.push_str(&self.name);
        if stream_element {
            if !prefixes.stream_declared {
                out.push_str(" xmlns:stream='");
                escape_into(out, ns::STREAM, true);
                out.push('\'');
                prefixes.stream_declared = true;
            }
        } else if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_into(out, &self.ns, true);
            out.push('\'');
        }
        let mut extra_prefix = 0usize;
        for (key, value) in &self.attrs {
            out.push(' ');
            if let Some(rest) = key.strip_prefix('{') {
                // A namespaced attribute other than xml:lang: declare a local prefix.
                let (attr_ns, local) = rest.split_once('}').unwrap_or(("", rest));
                let _ = write!(out, "xmlns:a{extra_prefix}='");
                escape_into(out, attr_ns, true);
                let _ = write!(out, "' a{extra_prefix}:{local}='");
                extra_prefix += 1;
            } else {
                out.push_str(key);
                out.push_str("='");
            }
            escape_into(out, value, true);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        let child_parent_ns = if stream_element { parent_ns } else { &self.ns };
        for node in &self.children {
            match node {
                Node::Element(child) => child.write_xml(out, child_parent_ns, prefixes),
                Node::Text(text) => escape_into(out, text, false),
            }
        }
        out.push_str("</");
        if stream_element {
            out.push_str("stream:");
        }
        out.push_str(&self.name);
        out.push('>');
    }
}

/// Sets attribute `name` of the root element to `value` and appends `child` (if
/// any) as its last child, on text that [`Element::to_xml`] produced, without
/// parsing it again: a stored stanza goes out with its new address and `<delay/>`,
/// and a stanza serialised once for many recipients goes out to each, for the
/// cost of a copy. Returns `None` when `xml` is not in that serialiser's form (the
/// caller then parses it).
///
/// The serialiser's form is what makes text search safe here: attribute values
/// are quoted with `'` and escape `'`, `<` and `>`, so the first `>` ends the
/// start tag and ` name='` inside it can only begin that attribute; the root
/// declares its namespace right after its name.
pub fn amend_serialized(
    xml: &str,
    name: &str,
    value: &str,
    child: Option<&Element>,
) -> Option<String> {
    let rest = xml.strip_prefix('<')?;
    let name_end = rest.find([' ', '/', '>'])?;
    let root = &rest[..name_end];
    if root.is_empty() || root.contains(':') {
        return None;
    }
    let tag_end = xml.find('>')?;
    let self_closing = xml[..tag_end].ends_with('/');
    let start_tag = &xml[..tag_end - usize::from(self_closing)];
    let body_end = if self_closing {
        if tag_end + 1 != xml.len() {
            return None;
        }
        tag_end + 1
    } else {
        let close = format!("</{root}>");
        if !xml.ends_with(&close) {
            return None;
        }
        xml.len() - close.len()
    };
    let root_ns = {
        let after_name = &start_tag[1 + name_end..];
        let declared = after_name.strip_prefix(" xmlns='")?;
        &declared[..declared.find('\'')?]
    };
    let mut out = String::with_capacity(xml.len() + value.len() + 160);
    let marker = format!(" {name}='");
    match start_tag.find(&marker) {
        Some(at) => {
            let value_start = at + marker.len();
            let value_end = value_start + start_tag[value_start..].find('\'')?;
            out.push_str(&start_tag[..value_start]);
            escape_into(&mut out, value, true);
            out.push_str(&start_tag[value_end..]);
        }
        None => {
            out.push_str(start_tag);
            out.push_str(&marker);
            escape_into(&mut out, value, true);
            out.push('\'');
        }
    }
    let Some(child) = child else {
        out.push_str(&xml[tag_end - usize::from(self_closing)..]);
        return Some(out);
    };
    out.push('>');
    if !self_closing {
        out.push_str(&xml[tag_end + 1..body_end]);
    }
    child.write_xml(&mut out, root_ns, Prefixes::default());
    out.push_str("</");
    out.push_str(root);
    out.push('>');
    Some(out)
}

#[derive(Clone, Copy, Default)]
struct Prefixes {
    stream_declared: bool,
}

/// Escapes text or an attribute value (quoted with `'`) into `out`.
pub fn escape_into(out: &mut String, text: &str, attribute: bool) {
    // Most text has no special character.
    let special = if attribute {
        any_byte(text.as_bytes(), attribute_special)
    } else {
        any_byte(text.as_bytes(), text_special)
    };
    if !special {
        out.push_str(text);
        return;
    }
    // Runs without a special character are copied whole (every special
    // character is ASCII, so a byte index is always a char boundary).
    let mut plain = 0;
    for (at, byte) in text.bytes().enumerate() {
        let entity = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\'' if attribute => "&apos;",
            b'"' if attribute => "&quot;",
            b'\r' => "&#xD;",
            b'\t' if attribute => "&#x9;",
            b'\n' if attribute => "&#xA;",
            _ => continue,
        };
        out.push_str(&text[plain..at]);
        out.push_str(entity);
        plain = at + 1;
    }
    out.push_str(&text[plain..]);
}

/// The bytes [`escape_into`] replaces in text; without branches (see [`any_byte`]).
fn text_special(byte: u8) -> bool {
    (byte == b'&') | (byte == b'<') | (byte == b'>') | (byte == b'\r')
}

/// The bytes [`escape_into`] replaces in attribute values.
fn attribute_special(byte: u8) -> bool {
    text_special(byte) | (byte == b'\'') | (byte == b'"') | (byte == b'\t') | (byte == b'\n')
}

/// Whether any byte of `bytes` is one `is` picks out. Every byte of every
/// stanza goes through such a test, parsed and serialised: a chunk at a time,
/// without an early exit, and with an `is` without branches (`&`, `|`), the
/// compiler turns it into vector compares (a byte at a time, or a table
/// lookup per byte, took 3–4 instructions a byte).
#[inline]
pub(crate) fn any_byte(bytes: &[u8], is: impl Fn(u8) -> bool) -> bool {
    let mut chunks = bytes.chunks_exact(32);
    chunks
        .by_ref()
        .any(|chunk| chunk.iter().fold(false, |found, &byte| found | is(byte)))
        || chunks.remainder().iter().any(|&byte| is(byte))
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_namespaces_only_where_they_change() {
        let iq = Element::new(ns::CLIENT, "iq")
            .attr("type", "result")
            .attr("id", "a'1")
            .child(Element::new(ns::ROSTER, "query").child(Element::new(ns::ROSTER, "item")));
        assert_eq!(
            iq.to_xml(ns::CLIENT),
            "<iq type='result' id='a&apos;1'><query xmlns='jabber:iq:roster'><item/></query></iq>"
        );
        assert_eq!(
            iq.to_xml(""),
            "<iq xmlns='jabber:client' type='result' id='a&apos;1'><query xmlns='jabber:iq:roster'><item/></query></iq>"
        );
    }

    #[test]
    fn stream_elements_use_the_stream_prefix() {
        let error = Element::new(ns::STREAM, "error").child(Element::new(ns::STREAMS, "conflict"));
        assert_eq!(
            error.to_stream_xml(ns::CLIENT),
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
        assert_eq!(
            error.to_xml(""),
            "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }

    /// What the parse-and-serialise path would produce.
    fn amended_by_parsing(xml: &str, name: &str, value: &str, child: Option<&Element>) -> Element {
        let mut element = crate::stream::parse_fragment(xml.as_bytes(), Default::default())
            .expect("test input parses");
        element.set_attr(name, value);
        if let Some(child) = child {
            element.push_child(child.clone());
        }
        element
    }

    #[test]
    fn amending_serialized_text_matches_parsing_it() {
        let delay = Element::new("urn:xmpp:delay", "delay")
            .attr("from", "example.org")
            .attr("stamp", "2026-11-28T11:00:00Z")
            .text("Offline Storage");
        let messages = [
            Element::new(ns::CLIENT, "message")
                .attr("from", "a@example.org/x")
                .attr("to", "b@example.org")
                .attr("type", "chat")
                .child(Element::new(ns::CLIENT, "body").text("hi <to='x'> & 'quoted' to='b'")),
            // No `to` yet, an attribute value that mentions one, and nothing inside.
            Element::new(ns::CLIENT, "message").attr("id", " to='evil'"),
            // A namespaced attribute whose local name is `to`.
            Element::new(ns::CLIENT, "message")
                .attr("{urn:example}to", "x")
                .child(Element::new(ns::CLIENT, "body").text("ok")),
            // A message whose root is in another default namespace.
            Element::new("jabber:server", "message").child(Element::new("jabber:server", "body")),
        ];
        for message in messages {
            let xml = message.to_xml("");
            // With a child appended (a stored stanza's delay) and without (a stanza
            // serialised once for many recipients).
            for child in [Some(&delay), None] {
                let spliced = amend_serialized(&xml, "to", "b@example.org/phone", child)
                    .expect("serialiser output is amendable");
                let reparsed =
                    crate::stream::parse_fragment(spliced.as_bytes(), Default::default())
                        .expect("amended text is well-formed");
                // Attribute order carries no meaning (XML 1.0 §3.1).
                let sorted = |mut e: Element| {
                    e.attrs.sort();
                    e
                };
                assert_eq!(
                    sorted(reparsed),
                    sorted(amended_by_parsing(&xml, "to", "b@example.org/phone", child)),
                    "{xml}"
                );
            }
        }
    }

    #[test]
    fn text_in_another_form_is_not_amended() {
        let delay = Element::new("urn:xmpp:delay", "delay");
        for xml in [
            "",
            "message",
            "<message>no namespace declared</message>",
            "<message xmlns='jabber:client'>unclosed",
            "<message xmlns='jabber:client'/>trailing",
            "<x:message xmlns:x='jabber:client'/>",
            "<message xmlns=\"jabber:client\"/>",
        ] {
            assert_eq!(
                amend_serialized(xml, "to", "b", Some(&delay)),
                None,
                "{xml}"
            );
            assert_eq!(amend_serialized(xml, "to", "b", None), None, "{xml}");
        }
    }

    #[test]
    fn escapes_every_special_character_and_keeps_the_rest() {
        let mut attr = String::new();
        escape_into(&mut attr, "é&<>'\"\r\t\nü", true);
        assert_eq!(attr, "é&amp;&lt;&gt;&apos;&quot;&#xD;&#x9;&#xA;ü");
        let mut text = String::new();
        escape_into(&mut text, "'\"\t\n\r€", false);
        assert_eq!(text, "'\"\t\n&#xD;€");
    }

    #[test]
    fn a_special_character_is_escaped_wherever_it_stands() {
        for len in [1, 31, 32, 33, 64, 100] {
            let plain = "é".repeat(len);
            let mut out = String::new();
            escape_into(&mut out, &plain, true);
            assert_eq!(out, plain);
            for at in 0..len {
                for (special, in_text, in_attribute) in [
                    ('&', "&amp;", "&amp;"),
                    ('<', "&lt;", "&lt;"),
                    ('\r', "&#xD;", "&#xD;"),
                    ('\n', "\n", "&#xA;"),
                    ('"', "\"", "&quot;"),
                ] {
                    let mut chars: Vec<char> = plain.chars().collect();
                    chars[at] = special;
                    let text: String = chars.iter().collect();
                    for (attribute, entity) in [(false, in_text), (true, in_attribute)] {
                        let mut out = String::new();
                        escape_into(&mut out, &text, attribute);
                        let expected = text.replacen(special, entity, 1);
                        assert_eq!(out, expected, "{special:?} at {at} of {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn escapes_text_and_attributes() {
        let body = Element::new(ns::CLIENT, "body").text("a < b & c > d 'q' \"w\"");
        assert_eq!(
            body.to_xml(ns::CLIENT),
            "<body>a &lt; b &amp; c &gt; d 'q' \"w\"</body>"
        );
    }
}
