//! What a watch does after an error: when it tries again, and what it says.
//!
//! - `410 Gone` (the server's watch cache no longer has our version, as after an API server
//!   restart) relists at once: waiting would only delay the changes made meanwhile.
//! - Any other error waits, from 100 ms doubling up to `CAP` (2 s), each wait drawn at random
//!   between half and all of it (jitter, so a fleet of agents does not retry in step). The first
//!   success starts over from 100 ms. A change made after an outage is therefore listed within
//!   `CAP` of the server's return, whatever the outage's length.
//! - `403 Forbidden` is what every request gets for a few seconds after an API server starts,
//!   before its authorizer has loaded the bindings: it is said once as "not authorized yet", and
//!   as "RBAC is missing" only when it lasts `RBAC_MISSING_AFTER`; both are counted.
use std::{
    hash::{BuildHasher as _, RandomState},
    time::{Duration, Instant},
};

use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use tracing::{error, warn};

/// The first wait after an error.
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const CAP: Duration = Duration::from_secs(2);
/// How long 403s must last before they are taken for missing RBAC.
pub const RBAC_MISSING_AFTER: Duration = Duration::from_secs(30);

/// What an error means for the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 410 Gone: relist now.
    Gone,
    /// 403 Forbidden.
    Forbidden,
    /// Anything else (unreachable, 5xx, a dropped stream).
    Other,
}

/// The HTTP status of an error, when the server answered.
fn status(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

pub fn classify(e: &watcher::Error) -> Failure {
    match status(e) {
        Some(410) => Failure::Gone,
        Some(403) => Failure::Forbidden,
        _ => Failure::Other,
    }
}

/// The error counters every watch adds to.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub forbidden: Counter,
    pub rbac_missing: Counter,
}

/// One watch's retry state.
pub struct Retry {
    kind: &'static str,
    next: Duration,
    /// Since when every attempt has been refused with 403, and whether missing RBAC was said.
    forbidden_since: Option<(Instant, bool)>,
    /// Counts each 403 (`lb_errors_total{kind="api_forbidden"}`).
    forbidden: Counter,
    /// Counts each 403 episode that lasted `RBAC_MISSING_AFTER` (`kind="rbac_missing"`).
    rbac_missing: Counter,
}

impl Retry {
    pub fn new(kind: &'static str, counters: &Counters) -> Self {
        let Counters { forbidden, rbac_missing } = counters.clone();
        Self { kind, next: FIRST, forbidden_since: None, forbidden, rbac_missing }
    }

    /// The watch delivered something: the next error starts the waits over.
    pub fn succeeded(&mut self) {
        self.next = FIRST;
        self.forbidden_since = None;
    }

    /// Says what `e` means and returns how long to wait before the next attempt.
    pub fn failed(&mut self, e: &watcher::Error, now: Instant) -> Duration {
        let failure = classify(e);
        if failure == Failure::Forbidden {
            self.forbidden.inc();
            match &mut self.forbidden_since {
                None => {
                    warn!(
                        kind = self.kind,
                        "not authorized yet (the API server may be starting); retrying, programmed maps are kept"
                    );
                    self.forbidden_since = Some((now, false));
                }
                Some((since, said)) if !*said && now.duration_since(*since) >= RBAC_MISSING_AFTER => {
                    error!(
                        kind = self.kind,
                        "RBAC is missing: the agent needs get/list/watch on services, endpointslices and \
                         nodes (deploy/clusterrole.yaml); retrying, programmed maps are kept"
                    );
                    self.rbac_missing.inc();
                    *said = true;
                }
                Some(_) => {}
            }
        } else {
            self.forbidden_since = None;
            match failure {
                Failure::Gone => warn!(kind = self.kind, "watch failed: expired (410 Gone); relisting now"),
                _ => warn!(
                    kind = self.kind,
                    error = %e,
                    "watch failed; retrying within {} s, programmed maps are kept",
                    CAP.as_secs()
                ),
            }
        }
        if failure == Failure::Gone {
            return Duration::ZERO;
        }
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(CAP);
        wait
    }
}

/// Between half of `d` and all of it, at random.
fn jittered(d: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let half = d / 2;
    half + Duration::from_nanos(random % (u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1)))
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            Status::failure("refused", "").with_code(code),
        )))
    }

    #[test]
    fn gone_relists_at_once_others_back_off_with_jitter_up_to_the_cap() {
        let mut r = Retry::new("Service", &Counters::default());
        let now = Instant::now();
        let gone = watcher::Error::WatchError(Box::new(Status::failure("expired", "Expired").with_code(410)));
        assert_eq!(r.failed(&gone, now), Duration::ZERO);
        let waits: Vec<Duration> = (0..12).map(|_| r.failed(&api(503), now)).collect();
        assert!(waits[0] >= FIRST / 2 && waits[0] <= FIRST, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= CAP), "capped: {waits:?}");
        assert!(waits[11] >= CAP / 2, "grown to the cap: {waits:?}");
        assert_eq!(r.failed(&gone, now), Duration::ZERO, "a 410 after an outage relists at once");
        r.succeeded();
        assert!(r.failed(&api(503), now) <= FIRST, "a success starts over");
    }

    #[test]
    fn forbidden_is_said_once_then_as_missing_rbac_when_it_lasts() {
        let counters = Counters::default();
        let (forbidden, missing) = (counters.forbidden.clone(), counters.rbac_missing.clone());
        let mut r = Retry::new("Service", &counters);
        let start = Instant::now();
        for s in [0, 1, 5, 29] {
            r.failed(&api(403), start + Duration::from_secs(s));
        }
        assert_eq!((forbidden.get(), missing.get()), (4, 0), "not yet missing RBAC");
        r.failed(&api(403), start + Duration::from_secs(31));
        r.failed(&api(403), start + Duration::from_secs(40));
        assert_eq!((forbidden.get(), missing.get()), (6, 1), "said once when it lasted");
        r.succeeded();
        r.failed(&api(403), start + Duration::from_secs(100));
        r.failed(&api(403), start + Duration::from_secs(120));
        assert_eq!(missing.get(), 1, "a new episode starts its own clock");
        assert_eq!(classify(&api(401)), Failure::Other);
    }
}
