//! The room configuration form (XEP-0045 §10.2, FORM_TYPE
//! `http://jabber.org/protocol/muc#roomconfig`, fields registered in §15.5.3) and
//! the room information form of disco#info (§15.5.4, `muc#roominfo`).

use kith_proto::{Element, StanzaError, ns};

use super::room::{RoomConfig, Whois};

const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// kith's own field: history visible to a new member starts at their joining.
const HISTORY_FROM_JOIN: &str = "{urn:kith:group:0}history_from_join";

fn field(kind: &str, var: &str, label: &str, values: &[&str]) -> Element {
    let mut field = Element::new(ns::DATA_FORMS, "field")
        .attr("type", kind)
        .attr("var", var)
        .attr("label", label);
    for value in values {
        field.push_child(Element::new(ns::DATA_FORMS, "value").text(*value));
    }
    field
}

fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

/// §10.2: the form an owner fills in, with the current values.
pub(crate) fn config_form(config: &RoomConfig) -> Element {
    let max_users = config.max_users.to_string();
    let whois = match config.whois {
        Whois::Anyone => "anyone",
        Whois::Moderators => "moderators",
    };
    let mut whois_field = field(
        "list-single",
        "muc#roomconfig_whois",
        "Who may see members' addresses",
        &[whois],
    );
    for (label, value) in [("Moderators only", "moderators"), ("Anyone", "anyone")] {
        whois_field.push_child(
            Element::new(ns::DATA_FORMS, "option")
                .attr("label", label)
                .child(Element::new(ns::DATA_FORMS, "value").text(value)),
        );
    }
    Element::new(ns::DATA_FORMS, "x")
        .attr("type", "form")
        .child(Element::new(ns::DATA_FORMS, "title").text("Group settings"))
        .child(field("hidden", "FORM_TYPE", "", &[ROOMCONFIG]))
        .child(field(
            "text-single",
            "muc#roomconfig_roomname",
            "Name",
            &[&config.name],
        ))
        .child(field(
            "text-single",
            "muc#roomconfig_roomdesc",
            "Description",
            &[&config.description],
        ))
        .child(field(
            "boolean",
            "muc#roomconfig_persistentroom",
            "Keep the group when everyone has left",
            &[flag(config.persistent)],
        ))
        .child(field(
            "boolean",
            "muc#roomconfig_publicroom",
            "List the group publicly",
            &[flag(config.public)],
        ))
        .child(field(
            "boolean",
            "muc#roomconfig_membersonly",
            "Members only",
            &[flag(config.members_only)],
        ))
        .child(field(
            "boolean",
            "muc#roomconfig_moderatedroom",
            "Only admins can send messages",
            &[flag(config.moderated)],
        ))
        .child(field(
            "boolean",
            "muc#roomconfig_changesubject",
            "Members can edit the group info",
            &[flag(config.change_subject)],
        ))
        .child(whois_field)
        .child(field(
            "boolean",
            "muc#roomconfig_allowinvites",
            "Members can add members",
            &[flag(config.allow_invites)],
        ))
        .child(field(
            "text-single",
            "muc#roomconfig_maxusers",
            "Most people in the room at once (0: no limit)",
            &[&max_users],
        ))
        .child(field(
            "boolean",
            HISTORY_FROM_JOIN,
            "New members see messages from when they joined only",
            &[flag(config.history_from_join)],
        ))
}

/// §10.2: applies a submitted form to `config`. Fields not in the form keep
/// their values; unknown fields are ignored (§10.2 lets a service ignore them);
/// a malformed value is `<not-acceptable/>` and changes nothing.
pub(crate) fn apply_form(form: &Element, config: &RoomConfig) -> Result<RoomConfig, StanzaError> {
    let mut next = config.clone();
    for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
        let Some(var) = field.get_attr("var") else {
            continue;
        };
        let value = field
            .child_text("value", ns::DATA_FORMS)
            .unwrap_or_default();
        let boolean = || match value.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(not_acceptable(var)),
        };
        match var {
            "FORM_TYPE" if value != ROOMCONFIG => {
                return Err(StanzaError::bad_request().with_text("not a muc#roomconfig form"));
            }
            "muc#roomconfig_roomname" => next.name = bounded(var, value)?,
            "muc#roomconfig_roomdesc" => next.description = bounded(var, value)?,
            "muc#roomconfig_persistentroom" => next.persistent = boolean()?,
            "muc#roomconfig_publicroom" => next.public = boolean()?,
            "muc#roomconfig_membersonly" => next.members_only = boolean()?,
            "muc#roomconfig_moderatedroom" => next.moderated = boolean()?,
            "muc#roomconfig_changesubject" => next.change_subject = boolean()?,
            "muc#roomconfig_allowinvites" => next.allow_invites = boolean()?,
            HISTORY_FROM_JOIN => next.history_from_join = boolean()?,
            "muc#roomconfig_whois" => {
                next.whois = match value.as_str() {
                    "anyone" => Whois::Anyone,
                    "moderators" => Whois::Moderators,
                    _ => return Err(not_acceptable(var)),
                }
            }
            "muc#roomconfig_maxusers" => {
                next.max_users = match value.as_str() {
                    "" | "none" => 0,
                    text => text.parse().map_err(|_| not_acceptable(var))?,
                }
            }
            _ => {}
        }
    }
    Ok(next)
}

/// The longest room name or description accepted, in bytes.
const MAX_TEXT: usize = 1024;

fn bounded(var: &str, value: String) -> Result<String, StanzaError> {
    if value.len() > MAX_TEXT {
        return Err(not_acceptable(var));
    }
    Ok(value)
}

fn not_acceptable(var: &str) -> StanzaError {
    StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
        .with_text(format!("bad value for {var}"))
}

/// §15.5.4: the extended room information in disco#info.
pub(crate) fn info_form(config: &RoomConfig, subject: &str, occupants: usize) -> Element {
    let occupants = occupants.to_string();
    let whois = match config.whois {
        Whois::Anyone => "anyone",
        Whois::Moderators => "moderators",
    };
    Element::new(ns::DATA_FORMS, "x")
        .attr("type", "result")
        .child(field("hidden", "FORM_TYPE", "", &[ROOMINFO]))
        .child(field(
            "text-single",
            "muc#roominfo_description",
            "Description",
            &[&config.description],
        ))
        .child(field(
            "text-single",
            "muc#roominfo_subject",
            "Subject",
            &[subject],
        ))
        .child(field(
            "text-single",
            "muc#roominfo_occupants",
            "Number of occupants",
            &[&occupants],
        ))
        .child(field(
            "boolean",
            "muc#roominfo_changesubject",
            "Occupants may change the subject",
            &[flag(config.change_subject)],
        ))
        .child(field(
            "text-single",
            "muc#roomconfig_roomname",
            "Name",
            &[&config.name],
        ))
        .child(field(
            "list-single",
            "muc#roomconfig_whois",
            "Who may see addresses",
            &[whois],
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(fields: &[(&str, &str)]) -> Element {
        let mut form = Element::new(ns::DATA_FORMS, "x").attr("type", "submit");
        for (var, value) in fields {
            form.push_child(field("text-single", var, "", &[value]));
        }
        form
    }

    #[test]
    fn the_form_round_trips() {
        let config = RoomConfig {
            name: "Team".into(),
            moderated: true,
            max_users: 30,
            whois: Whois::Moderators,
            ..RoomConfig::default()
        };
        let mut form = config_form(&config);
        form.set_attr("type", "submit");
        assert_eq!(apply_form(&form, &RoomConfig::default()).unwrap(), config);
    }

    #[test]
    fn a_submission_changes_only_its_fields() {
        let form = submitted(&[
            ("FORM_TYPE", ROOMCONFIG),
            ("muc#roomconfig_membersonly", "false"),
            ("muc#roomconfig_roomname", "Book club"),
            ("x-unknown", "whatever"),
        ]);
        let next = apply_form(&form, &RoomConfig::default()).unwrap();
        assert!(!next.members_only);
        assert_eq!(next.name, "Book club");
        assert!(next.persistent);
    }

    #[test]
    fn bad_values_are_refused() {
        for (var, value) in [
            ("muc#roomconfig_membersonly", "maybe"),
            ("muc#roomconfig_maxusers", "-3"),
            ("muc#roomconfig_whois", "everybody"),
        ] {
            let form = submitted(&[(var, value)]);
            let error = apply_form(&form, &RoomConfig::default()).unwrap_err();
            assert_eq!(error.condition.as_str(), "not-acceptable", "{var}");
        }
        let other = submitted(&[("FORM_TYPE", "urn:other")]);
        assert!(apply_form(&other, &RoomConfig::default()).is_err());
    }
}
