//! Step implementations for engine tests: they succeed, fail, throttle, wait or hang on command, and
//! record what ran so tests can assert on it. (These stand in for step bodies, not for AWS.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use vend::domain::Resource;
use vend::domain::{StepError, StepOutcome};
use vend::engine::{Registry, Step, StepContext};

/// Counts calls per tenant slug.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    /// Records a call and returns how many calls the tenant had before it.
    pub fn hit(&self, slug: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(slug.to_owned()).or_default();
        *n += 1;
        *n - 1
    }

    pub fn get(&self, slug: &str) -> usize {
        self.0.lock().unwrap().get(slug).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// Succeeds, and saves a resource named after the step so tests can see it committed.
#[derive(Clone, Default)]
pub struct Succeed(pub Calls);

#[async_trait]
impl Step for Succeed {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        self.0.hit(&ctx.tenant.slug);
        let key = String::leak(format!("{}_done", ctx.step));
        ctx.set_resource(Resource::Named(key), true);
        StepOutcome::Succeeded
    }
}

/// Fails the first `times` calls for each tenant with `error`, then succeeds.
#[derive(Clone)]
pub struct FailTimes {
    pub times: usize,
    pub error: StepError,
    pub calls: Calls,
}

#[async_trait]
impl Step for FailTimes {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        if self.calls.hit(&ctx.tenant.slug) < self.times {
            StepOutcome::Failed(self.error.clone())
        } else {
            StepOutcome::Succeeded
        }
    }
}

/// Asks for a durable wait `times` times, then succeeds.
#[derive(Clone)]
pub struct WaitTimes {
    pub times: usize,
    pub after: Duration,
    pub calls: Calls,
}

#[async_trait]
impl Step for WaitTimes {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        let n = self.calls.hit(&ctx.tenant.slug);
        if n < self.times {
            StepOutcome::Wait {
                after: self.after,
                note: format!("not yet ({n})"),
            }
        } else {
            StepOutcome::Succeeded
        }
    }
}

/// The first call for each tenant announces itself and then hangs until released; later calls succeed.
#[derive(Clone, Default)]
pub struct Hang {
    pub calls: Calls,
    pub entered: Arc<Notify>,
    pub release: Arc<Notify>,
}

#[async_trait]
impl Step for Hang {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        if self.calls.hit(&ctx.tenant.slug) == 0 {
            ctx.save_resource(Resource::Named("hang_started"), true)
                .await
                .ok();
            self.entered.notify_one();
            self.release.notified().await;
        }
        StepOutcome::Succeeded
    }
}

/// Detects overlapping attempts on the same tenant; sleeps to widen any race.
#[derive(Clone, Default)]
pub struct Probe {
    pub calls: Calls,
    pub in_flight: Arc<Mutex<HashMap<String, usize>>>,
    pub overlaps: Arc<AtomicUsize>,
}

#[async_trait]
impl Step for Probe {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        let key = ctx.tenant.slug.clone();
        self.calls.hit(&format!("{key}/{}", ctx.step));
        {
            let mut m = self.in_flight.lock().unwrap();
            let n = m.entry(key.clone()).or_default();
            *n += 1;
            if *n > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
        StepOutcome::Succeeded
    }
}

/// Holds every tenant's first call until the test has seen them all enter (`entered`) and lets them go
/// together (`release`): their outcomes reach the engine at the same moment. Both barriers count the
/// tenants plus the test.
#[derive(Clone)]
pub struct Gate {
    pub calls: Calls,
    pub entered: Arc<tokio::sync::Barrier>,
    pub release: Arc<tokio::sync::Barrier>,
}

impl Gate {
    pub fn new(tenants: usize) -> Self {
        Self {
            calls: Calls::default(),
            entered: Arc::new(tokio::sync::Barrier::new(tenants + 1)),
            release: Arc::new(tokio::sync::Barrier::new(tenants + 1)),
        }
    }
}

#[async_trait]
impl Step for Gate {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        if self.calls.hit(&ctx.tenant.slug) == 0 {
            self.entered.wait().await;
            self.release.wait().await;
        }
        StepOutcome::Succeeded
    }
}

/// The registry most operator tests use: `ok` always succeeds; `once` fails its first call for each
/// tenant with a permanent `QuotaExceeded` (a failed tenant an operator can retry), counted in `calls`.
pub fn ok_and_fails_once(calls: Calls) -> Registry {
    Registry::new().with("ok", Succeed::default()).with(
        "once",
        FailTimes {
            times: 1,
            error: StepError::permanent("QuotaExceeded", "raise the quota first"),
            calls,
        },
    )
}
