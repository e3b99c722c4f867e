//! The XEP-0357 §5 notification: a pubsub publish to the app server carrying a
//! `urn:xmpp:push:summary` form, with the client's publish-options echoed.

use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, ns};

use super::Notification;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0357 §5: the summary form's FORM_TYPE.
pub(crate) const SUMMARY: &str = "urn:xmpp:push:summary";

/// `<iq type='set' from='user' to='app server'>` publishing one notification to
/// `node` (§5, Example 9).
pub(super) fn notification_iq(
    notification: &Notification,
    app_server: &str,
    node: &str,
    options_xml: Option<&str>,
) -> Element {
    let field = |var: &str, value: &str| {
        Element::new(ns::DATA_FORMS, "field")
            .attr("var", var)
            .child(Element::new(ns::DATA_FORMS, "value").text(value))
    };
    let mut form = Element::new(ns::DATA_FORMS, "x")
        .attr("type", "submit")
        .child(field("FORM_TYPE", SUMMARY))
        .child(field("message-count", &notification.count.to_string()));
    if !notification.sender.is_empty() {
        form.push_child(field("last-message-sender", &notification.sender));
    }
    if let Some(body) = &notification.body {
        form.push_child(field("last-message-body", body));
    }
    let item =
        Element::new(PUBSUB, "item").child(Element::new(super::NS, "notification").child(form));
    let mut pubsub = Element::new(PUBSUB, "pubsub").child(
        Element::new(PUBSUB, "publish")
            .attr("node", node)
            .child(item),
    );
    // §5: "the user's server includes the publish-options it was given".
    if let Some(options) =
        options_xml.and_then(|xml| parse_fragment(xml.as_bytes(), Limits::default()).ok())
    {
        pubsub.push_child(Element::new(PUBSUB, "publish-options").child(options));
    }
    Element::new(ns::CLIENT, "iq")
        .attr("type", "set")
        .attr("id", crate::random_id(16))
        .attr("from", notification.user.clone())
        .attr("to", app_server)
        .child(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(body: Option<&str>) -> Notification {
        Notification {
            user: "romeo@montague.example".to_owned(),
            device: "orchard".to_owned(),
            count: 1,
            sender: "juliet@capulet.example".to_owned(),
            body: body.map(str::to_owned),
        }
    }

    fn fields(iq: &Element) -> Vec<(String, String)> {
        let form = iq
            .get_child("pubsub", PUBSUB)
            .and_then(|p| p.get_child("publish", PUBSUB))
            .and_then(|p| p.get_child("item", PUBSUB))
            .and_then(|i| i.get_child("notification", super::super::NS))
            .and_then(|n| n.get_child("x", ns::DATA_FORMS))
            .expect("summary form");
        form.elements()
            .map(|f| {
                (
                    f.get_attr("var").unwrap_or_default().to_owned(),
                    f.child_text("value", ns::DATA_FORMS).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn the_summary_has_count_and_sender_but_no_body_by_default() {
        let iq = notification_iq(&notification(None), "push-5.client.example", "yxs32", None);
        assert_eq!(iq.get_attr("type"), Some("set"));
        assert_eq!(iq.get_attr("from"), Some("romeo@montague.example"));
        assert_eq!(iq.get_attr("to"), Some("push-5.client.example"));
        let publish = iq
            .get_child("pubsub", PUBSUB)
            .and_then(|p| p.get_child("publish", PUBSUB))
            .expect("publish");
        assert_eq!(publish.get_attr("node"), Some("yxs32"));
        assert_eq!(
            fields(&iq),
            vec![
                ("FORM_TYPE".to_owned(), SUMMARY.to_owned()),
                ("message-count".to_owned(), "1".to_owned()),
                (
                    "last-message-sender".to_owned(),
                    "juliet@capulet.example".to_owned()
                ),
            ]
        );
        assert!(
            iq.get_child("pubsub", PUBSUB)
                .and_then(|p| p.get_child("publish-options", PUBSUB))
                .is_none()
        );
    }

    #[test]
    fn the_body_and_publish_options_are_included_when_given() {
        let options = "<x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
            <field var='secret'><value>eruio234vzxc2kla-91</value></field></x>";
        let iq = notification_iq(
            &notification(Some("Wherefore art thou, Romeo?")),
            "push-5.client.example",
            "yxs32",
            Some(options),
        );
        assert!(fields(&iq).contains(&(
            "last-message-body".to_owned(),
            "Wherefore art thou, Romeo?".to_owned()
        )));
        let echoed = iq
            .get_child("pubsub", PUBSUB)
            .and_then(|p| p.get_child("publish-options", PUBSUB))
            .and_then(|o| o.get_child("x", ns::DATA_FORMS))
            .expect("publish-options echoed");
        assert!(echoed.to_xml("").contains("eruio234vzxc2kla-91"));
    }
}
