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
    pub ns: String,
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(ns: &str, name: &str) -> Self {
        Element {
            ns: ns.to_owned(),
            name: name.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: set an attribute.
    pub fn attr(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: set an attribute when `value` is `Some`.
    pub fn attr_opt(mut self, key: &str, value: Option<impl Into<String>>) -> Self {
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

    pub fn set_attr(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_owned(), value)),
        }
    }

    pub fn remove_attr(&mut self, key: &str) -> Option<String> {
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

    /// Like [`Element::to_xml`], for a stream root that declares the `stream:` prefix.
    pub fn to_stream_xml(&self, parent_ns: &str) -> String {
        let mut out = String::with_capacity(128);
        let prefixes = Prefixes {
            stream_declared: true,
        };
        self.write_xml(&mut out, parent_ns, prefixes);
        out
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

#[derive(Clone, Copy, Default)]
struct Prefixes {
    stream_declared: bool,
}

/// Escapes text or an attribute value (quoted with `'`) into `out`.
pub fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attribute => out.push_str("&apos;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            '\t' if attribute => out.push_str("&#x9;"),
            '\n' if attribute => out.push_str("&#xA;"),
            c => out.push(c),
        }
    }
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

    #[test]
    fn escapes_text_and_attributes() {
        let body = Element::new(ns::CLIENT, "body").text("a < b & c > d 'q' \"w\"");
        assert_eq!(
            body.to_xml(ns::CLIENT),
            "<body>a &lt; b &amp; c &gt; d 'q' \"w\"</body>"
        );
    }
}
