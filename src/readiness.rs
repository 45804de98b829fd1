//! Whether this process is ready for traffic that needs AWS, and if not, why. `/readyz` reads it;
//! start-up writes it while it prepares the management account, which may take a while when AWS
//! throttles (signups need only Postgres and are accepted meanwhile).

use std::sync::{Arc, RwLock};

#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

impl Readiness {
    /// Ready from the start (a process that needs nothing from AWS).
    pub fn ready() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }

    /// Not ready until [`Readiness::set_ready`], for `reason`.
    pub fn starting(reason: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(Some(reason.into()))))
    }

    pub fn set_waiting(&self, reason: impl Into<String>) {
        *self.0.write().expect("readiness lock") = Some(reason.into());
    }

    pub fn set_ready(&self) {
        *self.0.write().expect("readiness lock") = None;
    }

    /// `None` when ready; otherwise what it is waiting for.
    pub fn waiting_for(&self) -> Option<String> {
        self.0.read().expect("readiness lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reports_the_latest_reason_until_ready() {
        let r = Readiness::starting("management account");
        let seen = r.clone();
        assert_eq!(seen.waiting_for().as_deref(), Some("management account"));
        r.set_waiting("throttled");
        assert_eq!(seen.waiting_for().as_deref(), Some("throttled"));
        r.set_ready();
        assert_eq!(seen.waiting_for(), None);
    }
}
