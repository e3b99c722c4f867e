//! XML namespaces used on the wire, one place for all of them.

pub const CLIENT: &str = "jabber:client";
pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// XEP-0388 Extensible SASL Profile (SASL2).
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2.
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0484 Fast Authentication Streamlining Tokens.
pub const FAST: &str = "urn:xmpp:fast:0";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const CAPS: &str = "http://jabber.org/protocol/caps";
pub const PING: &str = "urn:xmpp:ping";
pub const TIME: &str = "urn:xmpp:time";
pub const VERSION: &str = "jabber:iq:version";
pub const LAST: &str = "jabber:iq:last";
pub const VCARD: &str = "vcard-temp";
pub const PRIVATE: &str = "jabber:iq:private";
pub const BLOCKING: &str = "urn:xmpp:blocking";
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const DATA_FORMS: &str = "jabber:x:data";
pub const DELAY: &str = "urn:xmpp:delay";
pub const SID: &str = "urn:xmpp:sid:0";
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
