//! Walking an error's chain of causes, for the errors that cross a library
//! (hyper-util's connector, h2, io) and come back boxed.

use std::error::Error as StdError;

/// Finds a cause of type `T`, looking inside `io::Error`s too (their
/// `source()` skips the error they wrap).
pub(crate) fn find_cause<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    find_cause_where(err, |_: &T| true)
}

/// The first cause of type `T` that `pred` accepts, walking the chain as
/// [`find_cause`] does: a wrapped error of the same type further down is
/// looked at too (a reset inside a TLS handshake comes back as an
/// `io::Error` of another kind around the one that says reset).
pub(crate) fn find_cause_where<'a, T: StdError + 'static>(
    mut err: &'a (dyn StdError + 'static),
    pred: impl Fn(&T) -> bool + Copy,
) -> Option<&'a T> {
    loop {
        if let Some(found) = err.downcast_ref::<T>().filter(|t| pred(t)) {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find_cause_where(inner, pred) {
                return Some(found);
            }
        }
        err = err.source()?;
    }
}

/// `outer: cause: cause` for logs and messages.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::ConnectError;
    use crate::error_kind::UpstreamErrorKind;

    #[test]
    fn find_cause_looks_inside_io_errors() {
        let inner = ConnectError::new(UpstreamErrorKind::Policy, "denied");
        let io = std::io::Error::other(inner);
        let found = find_cause::<ConnectError>(&io).unwrap();
        assert_eq!(found.kind, UpstreamErrorKind::Policy);
    }
}
