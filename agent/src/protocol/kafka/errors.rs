//! Kafka error codes by their protocol names (the Kafka protocol guide's "Error Codes" table):
//! `error.type` of a failed Kafka operation, the same for metrics and spans.
//!
//! Only the codes clients commonly meet are named; any other is written as its number, which
//! keeps the set of values bounded (an `int16`) without a 120-entry table to maintain.

use std::borrow::Cow;

/// The protocol name of a common error code (`3` → `UNKNOWN_TOPIC_OR_PARTITION`); `None` for
/// success (0) and for codes not in the table.
pub fn name(code: i16) -> Option<&'static str> {
    Some(match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        19 => "NOT_ENOUGH_REPLICAS",
        22 => "ILLEGAL_GENERATION",
        25 => "UNKNOWN_MEMBER_ID",
        27 => "REBALANCE_IN_PROGRESS",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        41 => "NOT_CONTROLLER",
        58 => "SASL_AUTHENTICATION_FAILED",
        79 => "MEMBER_ID_REQUIRED",
        100 => "UNKNOWN_TOPIC_ID",
        _ => return None,
    })
}

/// `error.type` of an error code: its name when [`name`] knows it, else the number; `None`
/// for success.
pub fn error_type(code: i16) -> Option<Cow<'static, str>> {
    match (code, name(code)) {
        (0, _) => None,
        (_, Some(name)) => Some(Cow::Borrowed(name)),
        (code, None) => Some(Cow::Owned(code.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_codes_are_named_others_numbered_success_is_none() {
        assert_eq!(error_type(0), None);
        assert_eq!(error_type(3).as_deref(), Some("UNKNOWN_TOPIC_OR_PARTITION"));
        assert_eq!(error_type(-1).as_deref(), Some("UNKNOWN_SERVER_ERROR"));
        assert_eq!(error_type(100).as_deref(), Some("UNKNOWN_TOPIC_ID"));
        assert_eq!(error_type(999).as_deref(), Some("999"));
        assert_eq!(error_type(-2).as_deref(), Some("-2"));
        assert_eq!(name(0), None);
    }
}
