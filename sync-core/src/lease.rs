//! Which process syncs a store that several processes of one device open (an app and its
//! background sync service, two windows): the one holding the store's sync lease.
//!
//! A lease names its holder (one engine instance) and when it lapses. An engine takes it
//! for each cycle, renews it while the cycle runs and gives it back at the end; a process
//! that dies holding it loses it when it lapses, and another process's engine takes over,
//! pushing the dead one's unanswered mutations again under the same ids (the server's
//! ledger answers them without applying them twice). The decision is this pure function;
//! stores that several processes can open keep the lease in the store, in one transaction
//! with the decision.

use chrono::{DateTime, Utc};

/// The lease as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The engine instance holding it.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// What to do with a request for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it (or the holder's lapsed): take it.
    Take,
    /// The asker holds it already: extend it.
    Renew,
    /// Someone else holds it until then.
    Busy {
        /// When it lapses unless its holder renews it.
        until: DateTime<Utc>,
    },
}

/// Decides a request by `me` at `now` for the lease as it stands (`current`).
pub fn decide_lease(current: Option<&Lease>, me: &str, now: DateTime<Utc>) -> LeaseDecision {
    match current {
        None => LeaseDecision::Take,
        Some(lease) if lease.holder == me => LeaseDecision::Renew,
        Some(lease) if lease.expires_at <= now => LeaseDecision::Take,
        Some(lease) => LeaseDecision::Busy { until: lease.expires_at },
    }
}

/// The answer of [`crate::store::LocalStore::acquire_sync_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The asker holds the lease until the time it asked for.
    Held,
    /// Another engine (in another process) holds it until then.
    HeldElsewhere {
        /// When it lapses unless its holder renews it.
        until: DateTime<Utc>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn who_gets_the_lease() {
        let t = |s: i64| Utc.timestamp_opt(1_000 + s, 0).single().unwrap();
        let lease = |holder: &str, expires: i64| Lease { holder: holder.into(), expires_at: t(expires) };
        let cases = [
            ("nobody holds it", None, LeaseDecision::Take),
            ("the asker holds it", Some(lease("me", 30)), LeaseDecision::Renew),
            ("the asker's own lapsed lease", Some(lease("me", -5)), LeaseDecision::Renew),
            ("another holds it", Some(lease("other", 30)), LeaseDecision::Busy { until: t(30) }),
            ("another's lease lapses now", Some(lease("other", 0)), LeaseDecision::Take),
            ("another's lease lapsed", Some(lease("other", -1)), LeaseDecision::Take),
        ];
        for (case, current, expected) in cases {
            assert_eq!(decide_lease(current.as_ref(), "me", t(0)), expected, "{case}");
        }
    }
}
