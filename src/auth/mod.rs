//! API keys and per-key rate limits: one layer in front of every face (each listener asks
//! [`Auth::check`]; `server/auth.rs` turns the verdict into the face's own answer).
//!
//! Secure by default: with no key created, a server on a loopback address needs none (one
//! user, one machine); once a key exists, every request needs one; a server on any other
//! address refuses to start without a key unless told `--no-auth`.

mod keys;
mod limits;

use std::net::IpAddr;
use std::sync::Arc;

pub use keys::{KeyFile, KeyRecord, KeyRing, Rate, Scope};
pub use limits::{Allowance, RateLimits};

use crate::Error;
use crate::store::Store;

pub struct Auth {
    /// None: `--no-auth`, every request passes.
    keys: Option<KeyRing>,
    limits: RateLimits,
}

/// Why a request was not let through.
#[derive(Debug)]
pub enum Rejection {
    /// No key was sent, and one is needed.
    Missing,
    /// The key sent is not an active key.
    Invalid,
    /// The key lacks the scope the route needs.
    Forbidden(Scope),
    /// The key's bucket is empty.
    Limited(Allowance),
}

impl Rejection {
    /// A sentence for the error body.
    pub fn message(&self) -> String {
        match self {
            Rejection::Missing => "an API key is needed: send `Authorization: Bearer KEY` \
                                   (or `?token=KEY` where headers cannot be set)"
                .into(),
            Rejection::Invalid => "the API key is not valid (unknown or revoked)".into(),
            Rejection::Forbidden(scope) => {
                format!("this API key lacks the `{scope}` scope this request needs")
            }
            Rejection::Limited(a) => format!(
                "rate limit of {} requests exceeded; retry in {} s",
                a.limit,
                a.retry_after.unwrap_or(1)
            ),
        }
    }
}

/// What a request may do.
pub enum Verdict {
    /// Let through; with the key's bucket where it has a limit.
    Pass(Option<Allowance>),
    Reject(Rejection),
}

pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Auth {
    /// The auth of `hanga serve --host HOST` over the data directory's keys. Refuses (a
    /// start-up error) to serve a non-loopback address without keys unless `no_auth`.
    pub fn open(
        data_dir: &std::path::Path,
        store: Arc<Store>,
        host: &str,
        no_auth: bool,
    ) -> Result<Self, Error> {
        let limits = RateLimits::new(store);
        if no_auth {
            tracing::warn!(
                "--no-auth: anyone who can reach {host} can queue jobs, read every image and \
                 run server operations; API keys are not checked"
            );
            return Ok(Auth { keys: None, limits });
        }
        let file = KeyFile::in_data_dir(data_dir);
        let ring = KeyRing::open(file.clone())?;
        if !is_loopback(host) && !ring.any_active() {
            return Err(Error::config(format!(
                "--host {host} is reachable from other machines, and {} holds no API key. \
                 Create one with `hanga keys create --name NAME --data-dir {}` and send it as \
                 `Authorization: Bearer KEY`, or pass --no-auth to serve without keys",
                file.path().display(),
                data_dir.display()
            )));
        }
        Ok(Auth {
            keys: Some(ring),
            limits,
        })
    }

    /// Whether a request needing `scope` (None: an open route) with `token` may go on, and
    /// takes one request from its key's bucket. With no active key (on loopback), every
    /// request passes, whatever it sends.
    pub fn check(&self, token: Option<&str>, scope: Option<Scope>) -> Verdict {
        let Some(ring) = &self.keys else {
            return Verdict::Pass(None);
        };
        let Some(scope) = scope else {
            return Verdict::Pass(None);
        };
        // Clients that always send some key (the OpenAI SDK does) still work on an open
        // loopback server.
        if !ring.any_active() {
            return Verdict::Pass(None);
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Verdict::Reject(Rejection::Missing);
        };
        let Some(key) = ring.lookup(token) else {
            return Verdict::Reject(Rejection::Invalid);
        };
        if !key.allows(scope) {
            return Verdict::Reject(Rejection::Forbidden(scope));
        }
        match self.limits.take(&key) {
            Some(a) if a.retry_after.is_some() => Verdict::Reject(Rejection::Limited(a)),
            allowance => Verdict::Pass(allowance),
        }
    }
}
