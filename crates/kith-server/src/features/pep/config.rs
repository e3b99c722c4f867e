//! Node configuration (XEP-0060 §8.2, the `pubsub#node_config` form of §16.4.4)
//! and XEP-0223 publish-options, over [`PepNodeConfig`].
//!
//! Fields kith implements: `pubsub#title`, `pubsub#access_model` (`open`,
//! `presence`, `roster`, `whitelist`), `pubsub#roster_groups_allowed`,
//! `pubsub#max_items` (a number or `max`), `pubsub#persist_items`,
//! `pubsub#send_last_published_item`, `pubsub#notify_retract`,
//! `pubsub#item_expire` (seconds; 0 or empty: never). Fields whose
//! behaviour is fixed (`pubsub#deliver_payloads`, `pubsub#deliver_notifications`,
//! `pubsub#publish_model`, `pubsub#notification_type`) are shown and accepted
//! only with their fixed value; other fields are ignored.

use kith_proto::{Element, StanzaError, ns};
use kith_store::PepNodeConfig;

use super::errors;

pub(crate) const FORM_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub(crate) const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

pub(crate) const ACCESS_MODELS: &[&str] = &["open", "presence", "roster", "whitelist"];
const SEND_LAST: &[&str] = &["never", "on_sub", "on_sub_and_presence"];

/// XEP-0163 §4 defaults of a PEP node: presence access, the last item kept and
/// sent to contacts coming online.
pub(crate) fn default_config() -> PepNodeConfig {
    PepNodeConfig {
        access_model: "presence".to_owned(),
        roster_groups: Vec::new(),
        max_items: 1,
        persist_items: true,
        send_last: "on_sub_and_presence".to_owned(),
        notify_retract: true,
        title: String::new(),
        item_expire: 0,
    }
}

/// The fields of a submitted form, by var (values in order).
pub(crate) fn fields(form: &Element) -> Vec<(String, Vec<String>)> {
    form.elements()
        .filter(|e| e.is("field", ns::DATA_FORMS))
        .filter_map(|field| {
            let var = field.get_attr("var")?.to_owned();
            let values = field
                .elements()
                .filter(|e| e.is("value", ns::DATA_FORMS))
                .map(Element::text_content)
                .collect();
            Some((var, values))
        })
        .collect()
}

/// The `FORM_TYPE` of a form, if it has one.
pub(crate) fn form_type(form: &Element) -> Option<String> {
    fields(form)
        .into_iter()
        .find(|(var, _)| var == "FORM_TYPE")
        .and_then(|(_, values)| values.into_iter().next())
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn single(var: &str, values: &[String]) -> Result<String, StanzaError> {
    match values {
        [value] => Ok(value.trim().to_owned()),
        [] => Ok(String::new()),
        _ => Err(bad_value(var)),
    }
}

fn bad_value(var: &str) -> StanzaError {
    StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
        .with_text(format!("unsupported value for {var}"))
}

/// `pubsub#max_items`: a positive number or `max` (-1).
fn parse_max_items(value: &str) -> Option<i64> {
    if value == "max" {
        return Some(-1);
    }
    value.parse::<i64>().ok().filter(|n| *n >= 1)
}

/// `pubsub#item_expire` (XEP-0060 §16.4.4): whole seconds, 0 (or empty) for
/// never; at most a year.
fn parse_item_expire(value: &str) -> Option<i64> {
    const MAX_SECS: i64 = 366 * 86_400;
    if value.is_empty() {
        return Some(0);
    }
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (0..=MAX_SECS).contains(n))
}

/// One field applied to `config`. `Ok(false)` for a field kith ignores.
fn apply(config: &mut PepNodeConfig, var: &str, values: &[String]) -> Result<bool, StanzaError> {
    match var {
        "pubsub#title" => config.title = single(var, values)?,
        "pubsub#access_model" => {
            let model = single(var, values)?;
            if !ACCESS_MODELS.contains(&model.as_str()) {
                // XEP-0060 §8.2.5 / §6.1.3.x: an access model we don't offer.
                return Err(errors::unsupported_access_model());
            }
            config.access_model = model;
        }
        "pubsub#roster_groups_allowed" => {
            config.roster_groups = values.iter().map(|v| v.trim().to_owned()).collect();
            config.roster_groups.retain(|g| !g.is_empty());
        }
        "pubsub#max_items" => {
            config.max_items =
                parse_max_items(&single(var, values)?).ok_or_else(|| bad_value(var))?;
        }
        "pubsub#persist_items" => {
            config.persist_items =
                parse_bool(&single(var, values)?).ok_or_else(|| bad_value(var))?;
        }
        "pubsub#notify_retract" => {
            config.notify_retract =
                parse_bool(&single(var, values)?).ok_or_else(|| bad_value(var))?;
        }
        "pubsub#item_expire" => {
            config.item_expire =
                parse_item_expire(&single(var, values)?).ok_or_else(|| bad_value(var))?;
        }
        "pubsub#send_last_published_item" => {
            let value = single(var, values)?;
            if !SEND_LAST.contains(&value.as_str()) {
                return Err(bad_value(var));
            }
            config.send_last = value;
        }
        // Behaviour kith does not let a node change.
        "pubsub#deliver_payloads" | "pubsub#deliver_notifications" => {
            if parse_bool(&single(var, values)?) != Some(true) {
                return Err(bad_value(var));
            }
            return Ok(false);
        }
        "pubsub#publish_model" => {
            if single(var, values)? != "publishers" {
                return Err(bad_value(var));
            }
            return Ok(false);
        }
        "pubsub#notification_type" => {
            if single(var, values)? != "headline" {
                return Err(bad_value(var));
            }
            return Ok(false);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// A submitted configuration form applied over `base` (§8.2.4). A `cancel` form
/// changes nothing.
pub(crate) fn from_form(
    base: &PepNodeConfig,
    form: &Element,
) -> Result<PepNodeConfig, StanzaError> {
    let mut config = base.clone();
    if form.get_attr("type") == Some("cancel") {
        return Ok(config);
    }
    if form.get_attr("type") != Some("submit") {
        return Err(StanzaError::bad_request().with_text("expected a submitted form"));
    }
    for (var, values) in fields(form) {
        if var != "FORM_TYPE" {
            apply(&mut config, &var, &values)?;
        }
    }
    Ok(config)
}

/// XEP-0223 §3 / XEP-0060 §7.1.5: publish-options are preconditions. For a new
/// node they become its configuration (over `default`); for an existing one
/// every option kith knows must equal the node's value, or the publish fails with
/// `<conflict/>` + `<precondition-not-met/>`.
pub(crate) fn check_preconditions(
    options: &Element,
    existing: Option<&PepNodeConfig>,
    default: &PepNodeConfig,
) -> Result<PepNodeConfig, StanzaError> {
    if form_type(options).as_deref() != Some(FORM_PUBLISH_OPTIONS) {
        return Err(StanzaError::bad_request()
            .with_text("publish-options needs FORM_TYPE pubsub#publish-options"));
    }
    let wanted = from_form(existing.unwrap_or(default), options)?;
    match existing {
        None => Ok(wanted),
        Some(existing) if *existing == wanted => Ok(wanted),
        Some(_) => Err(errors::precondition_not_met()),
    }
}

/// The configuration form (§8.2.1), of type `form`.
pub(crate) fn to_form(config: &PepNodeConfig) -> Element {
    let field = |var: &str, kind: &str, label: &str, values: &[&str]| {
        let mut field = Element::new(ns::DATA_FORMS, "field")
            .attr("var", var)
            .attr("type", kind)
            .attr("label", label);
        for value in values {
            field.push_child(Element::new(ns::DATA_FORMS, "value").text(*value));
        }
        field
    };
    let with_options = |mut field: Element, options: &[&str]| {
        for option in options {
            field.push_child(
                Element::new(ns::DATA_FORMS, "option")
                    .child(Element::new(ns::DATA_FORMS, "value").text(*option)),
            );
        }
        field
    };
    let bool_str = |b: bool| if b { "1" } else { "0" };
    let max_items = if config.max_items < 0 {
        "max".to_owned()
    } else {
        config.max_items.to_string()
    };
    let groups: Vec<&str> = config.roster_groups.iter().map(String::as_str).collect();
    Element::new(ns::DATA_FORMS, "x")
        .attr("type", "form")
        .child(field("FORM_TYPE", "hidden", "", &[FORM_NODE_CONFIG]))
        .child(field(
            "pubsub#title",
            "text-single",
            "A short name for the node",
            &[&config.title],
        ))
        .child(with_options(
            field(
                "pubsub#access_model",
                "list-single",
                "Who may subscribe and retrieve items",
                &[&config.access_model],
            ),
            ACCESS_MODELS,
        ))
        .child(field(
            "pubsub#roster_groups_allowed",
            "list-multi",
            "Roster groups allowed (roster access model)",
            &groups,
        ))
        .child(field(
            "pubsub#max_items",
            "text-single",
            "Items to keep (a number or max)",
            &[&max_items],
        ))
        .child(field(
            "pubsub#persist_items",
            "boolean",
            "Keep items in storage",
            &[bool_str(config.persist_items)],
        ))
        .child(with_options(
            field(
                "pubsub#send_last_published_item",
                "list-single",
                "When to send the last published item",
                &[&config.send_last],
            ),
            SEND_LAST,
        ))
        .child(field(
            "pubsub#notify_retract",
            "boolean",
            "Notify when items are retracted",
            &[bool_str(config.notify_retract)],
        ))
        .child(field(
            "pubsub#item_expire",
            "text-single",
            "Seconds after which items expire (0: never)",
            &[&config.item_expire.to_string()],
        ))
        .child(field(
            "pubsub#deliver_payloads",
            "boolean",
            "Deliver payloads with notifications",
            &["1"],
        ))
        .child(field(
            "pubsub#deliver_notifications",
            "boolean",
            "Deliver event notifications",
            &["1"],
        ))
        .child(field(
            "pubsub#publish_model",
            "list-single",
            "Who may publish",
            &["publishers"],
        ))
        .child(field(
            "pubsub#notification_type",
            "list-single",
            "Message type of notifications",
            &["headline"],
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kind: &str, form_type: &str, pairs: &[(&str, &str)]) -> Element {
        let mut x = Element::new(ns::DATA_FORMS, "x").attr("type", kind).child(
            Element::new(ns::DATA_FORMS, "field")
                .attr("var", "FORM_TYPE")
                .child(Element::new(ns::DATA_FORMS, "value").text(form_type)),
        );
        for (var, value) in pairs {
            x.push_child(
                Element::new(ns::DATA_FORMS, "field")
                    .attr("var", *var)
                    .child(Element::new(ns::DATA_FORMS, "value").text(*value)),
            );
        }
        x
    }

    #[test]
    fn the_form_round_trips() {
        let mut config = default_config();
        config.access_model = "roster".into();
        config.roster_groups = vec!["Friends".into()];
        config.max_items = -1;
        config.notify_retract = false;
        config.item_expire = 900;
        let mut shown = to_form(&config);
        shown.set_attr("type", "submit");
        assert_eq!(from_form(&default_config(), &shown), Ok(config));
    }

    #[test]
    fn omemo_publish_options_create_then_must_match() {
        let options = form(
            "submit",
            FORM_PUBLISH_OPTIONS,
            &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
        );
        let created = check_preconditions(&options, None, &default_config()).unwrap();
        assert_eq!(created.access_model, "open");
        assert_eq!(created.max_items, -1);
        assert_eq!(
            check_preconditions(&options, Some(&created), &default_config()),
            Ok(created.clone())
        );
        let stricter = form(
            "submit",
            FORM_PUBLISH_OPTIONS,
            &[("pubsub#access_model", "whitelist")],
        );
        let error = check_preconditions(&stricter, Some(&created), &default_config()).unwrap_err();
        assert_eq!(error, errors::precondition_not_met());
    }

    #[test]
    fn bad_values_are_refused() {
        for (var, value) in [
            ("pubsub#access_model", "authorize"),
            ("pubsub#max_items", "0"),
            ("pubsub#max_items", "many"),
            ("pubsub#persist_items", "maybe"),
            ("pubsub#deliver_payloads", "0"),
            ("pubsub#item_expire", "-1"),
            ("pubsub#item_expire", "soon"),
            ("pubsub#item_expire", "99999999999"),
        ] {
            let x = form("submit", FORM_NODE_CONFIG, &[(var, value)]);
            assert!(from_form(&default_config(), &x).is_err(), "{var}={value}");
        }
        let wrong_type = form("submit", FORM_NODE_CONFIG, &[]);
        assert!(check_preconditions(&wrong_type, None, &default_config()).is_err());
    }
}
