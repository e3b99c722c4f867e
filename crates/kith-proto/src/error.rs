//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).

use std::fmt;

use crate::ns;
use crate::xml::Element;

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant,)* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// Defined stream error conditions, RFC 6120 §4.9.3.
    StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostUnknown => "host-unknown",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// Defined stanza error conditions, RFC 6120 §8.3.3.
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

impl StreamErrorCondition {
    /// The `<stream:error/>` element for this condition.
    pub fn to_element(self, text: Option<&str>) -> Element {
        let mut error =
            Element::new(ns::STREAM, "error").child(Element::new(ns::STREAMS, self.as_str()));
        if let Some(text) = text {
            error.push_child(
                Element::new(ns::STREAMS, "text")
                    .attr("xml:lang", "en")
                    .text(text),
            );
        }
        error
    }
}

/// The `type` of a stanza error, RFC 6120 §8.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StanzaErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl StanzaErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }
}

/// A stanza error to send back to the sender of a stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub kind: StanzaErrorType,
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition element (e.g. XEP-0191 `<blocked/>`).
    pub application: Option<Box<Element>>,
}

impl StanzaError {
    /// An error with the type RFC 6120 §8.3.3 recommends for its condition.
    pub fn new(condition: StanzaErrorCondition) -> Self {
        use StanzaErrorCondition as C;
        let kind = match condition {
            C::BadRequest
            | C::JidMalformed
            | C::NotAcceptable
            | C::PolicyViolation
            | C::Redirect => StanzaErrorType::Modify,
            C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
                StanzaErrorType::Auth
            }
            C::InternalServerError
            | C::RecipientUnavailable
            | C::RemoteServerTimeout
            | C::ResourceConstraint => StanzaErrorType::Wait,
            _ => StanzaErrorType::Cancel,
        };
        StanzaError {
            kind,
            condition,
            text: None,
            application: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_type(mut self, kind: StanzaErrorType) -> Self {
        self.kind = kind;
        self
    }

    pub fn with_application(mut self, application: Element) -> Self {
        self.application = Some(Box::new(application));
        self
    }

    pub fn bad_request() -> Self {
        Self::new(StanzaErrorCondition::BadRequest)
    }
    pub fn forbidden() -> Self {
        Self::new(StanzaErrorCondition::Forbidden)
    }
    pub fn item_not_found() -> Self {
        Self::new(StanzaErrorCondition::ItemNotFound)
    }
    pub fn not_allowed() -> Self {
        Self::new(StanzaErrorCondition::NotAllowed)
    }
    pub fn service_unavailable() -> Self {
        Self::new(StanzaErrorCondition::ServiceUnavailable)
    }
    pub fn feature_not_implemented() -> Self {
        Self::new(StanzaErrorCondition::FeatureNotImplemented)
    }
    pub fn internal() -> Self {
        Self::new(StanzaErrorCondition::InternalServerError)
    }
    pub fn jid_malformed() -> Self {
        Self::new(StanzaErrorCondition::JidMalformed)
    }

    /// The `<error/>` child element.
    pub fn to_element(&self) -> Element {
        let mut error = Element::new(ns::CLIENT, "error")
            .attr("type", self.kind.as_str())
            .child(Element::new(ns::STANZAS, self.condition.as_str()));
        if let Some(text) = &self.text {
            error.push_child(
                Element::new(ns::STANZAS, "text")
                    .attr("xml:lang", "en")
                    .text(text.clone()),
            );
        }
        if let Some(application) = &self.application {
            error.push_child(Element::clone(application));
        }
        error
    }

    /// Turns `stanza` into its error reply (RFC 6120 §8.3.1): addresses swapped,
    /// `type='error'`, the original payload kept so the sender can correlate it.
    pub fn reply_to(&self, stanza: &Element) -> Element {
        let mut reply = Element::new(&stanza.ns, &stanza.name);
        reply.attrs = stanza
            .attrs
            .iter()
            .filter(|(k, _)| k != "to" && k != "from" && k != "type")
            .cloned()
            .collect();
        if let Some(from) = stanza.get_attr("from") {
            reply.set_attr("to", from);
        }
        if let Some(to) = stanza.get_attr("to") {
            reply.set_attr("from", to);
        }
        reply.set_attr("type", "error");
        if stanza.name != "iq" {
            reply.children = stanza.children.clone();
        }
        reply.push_child(self.to_element());
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses() {
        let message = Element::new(ns::CLIENT, "message")
            .attr("from", "a@x/r")
            .attr("to", "b@x")
            .attr("id", "1")
            .child(Element::new(ns::CLIENT, "body").text("hi"));
        let reply = StanzaError::service_unavailable().reply_to(&message);
        assert_eq!(
            reply.to_xml(ns::CLIENT),
            "<message id='1' to='a@x/r' from='b@x' type='error'><body>hi</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        );
    }

    #[test]
    fn conditions_round_trip() {
        for text in ["not-well-formed", "policy-violation", "restricted-xml"] {
            assert_eq!(
                StreamErrorCondition::parse(text).map(|c| c.as_str()),
                Some(text)
            );
        }
        assert_eq!(
            StanzaError::new(StanzaErrorCondition::Forbidden).kind,
            StanzaErrorType::Auth
        );
    }
}
