//! Phone numbers: parsed and validated with libphonenumber's metadata (the
//! `phonenumber` crate), written in E.164 (ITU-T E.164: `+` country code and
//! national number, at most 15 digits). The account of `+15551234567` is
//! `15551234567@domain`.

use phonenumber::country::Id;
use phonenumber::{Mode, PhoneNumber};

/// A valid phone number in E.164 form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct E164(String);

impl E164 {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JID localpart: the digits without `+`.
    pub fn username(&self) -> &str {
        self.0.trim_start_matches('+')
    }
}

/// Parses `input` as typed by a person: international (`+44 20 7946 0958`,
/// `0044…`) or, given a `region`, national (`(201) 555-0123`). `None` for
/// anything that isn't a valid number.
pub(crate) fn normalize(input: &str, region: Option<Id>) -> Option<E164> {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.len() > 64 {
        return None;
    }
    // "00" is the international prefix in most of the world; without a region
    // the library can't know that, so it is read as "+" here.
    let international = trimmed
        .strip_prefix("00")
        .map(|rest| format!("+{rest}"))
        .unwrap_or_else(|| trimmed.to_owned());
    let number: PhoneNumber = phonenumber::parse(region, &international)
        .or_else(|_| phonenumber::parse(region, trimmed))
        .ok()?;
    if !phonenumber::is_valid(&number) || number.extension().is_some() {
        return None;
    }
    Some(E164(number.format().mode(Mode::E164).to_string()))
}

/// The region of a number already in E.164 form (for reading the national
/// numbers in that user's address book).
pub(crate) fn region_of(e164: &str) -> Option<Id> {
    phonenumber::parse(None, e164).ok()?.country().id()
}

/// A region code from configuration (`"DE"`).
pub(crate) fn region(code: Option<&str>) -> Option<Id> {
    code.and_then(|c| c.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_normalised_to_e164() {
        for input in [
            "+1 201-555-0123",
            "+1 (201) 555-0123",
            "+12015550123",
            "001 201 555 0123",
            " +1.201.555.0123 ",
        ] {
            assert_eq!(
                normalize(input, None).as_ref().map(E164::as_str),
                Some("+12015550123"),
                "{input:?}"
            );
        }
        assert_eq!(
            normalize("+44 20 7946 0958", None)
                .as_ref()
                .map(E164::as_str),
            Some("+442079460958")
        );
        // National numbers need a region.
        assert_eq!(normalize("(201) 555-0123", None), None);
        assert_eq!(
            normalize("(201) 555-0123", Some(Id::US))
                .as_ref()
                .map(E164::as_str),
            Some("+12015550123")
        );
        assert_eq!(
            normalize("030 901820", Some(Id::DE))
                .as_ref()
                .map(E164::as_str),
            Some("+4930901820")
        );
        assert_eq!(
            normalize("+12015550123", None).map(|n| n.username().to_owned()),
            Some("12015550123".to_owned())
        );
    }

    #[test]
    fn invalid_numbers_are_refused() {
        for input in [
            "",
            "hello",
            "+1",
            "+1 555 123 4567",
            "+999 1234567",
            "12345",
            "+1 201 555 0123 ext. 5",
            &"9".repeat(100),
        ] {
            assert_eq!(normalize(input, None), None, "{input:?}");
        }
    }

    #[test]
    fn region_comes_from_the_number() {
        assert_eq!(region_of("+12015550123"), Some(Id::US));
        assert_eq!(region_of("+442079460958"), Some(Id::GB));
    }
}
