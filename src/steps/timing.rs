//! Timing the looks at an asynchronous AWS operation by what it has taken before in this organization
//! (see `domain::waits`): the operation's start and the last time it was seen unfinished live in the
//! tenant's resources; finished ones are observations in Postgres, shared by every replica.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;

use crate::db;
use crate::domain::Resource;
use crate::domain::{StepError, waits};
use crate::engine::StepContext;

/// Observations needed before they steer the looks.
const MIN_SAMPLES: usize = 3;

/// One kind of operation: its name among the observations, and the resources that time it.
pub(crate) struct Timed<'a> {
    /// e.g. `create_account`, `stack:tenant`.
    pub kind: &'a str,
    /// RFC 3339 start of the operation in progress.
    pub started_key: Resource,
    /// Seconds after its start that it was last seen unfinished.
    pub seen_key: Resource,
}

fn db_error(e: sqlx::Error) -> StepError {
    StepError::transient("DatabaseError", e.to_string())
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Timed<'_> {
    /// The operation starts now (set with the step's outcome).
    pub fn start(&self, ctx: &mut StepContext) {
        ctx.set_resource(self.started_key, Utc::now().to_rfc3339());
        ctx.set_resource(self.seen_key, Value::Null);
    }

    /// How long ago the operation started, if vend saw it start.
    pub fn elapsed(&self, ctx: &StepContext) -> Option<Duration> {
        let at = ctx.resource_str(self.started_key)?;
        let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
        (Utc::now() - at.with_timezone(&Utc)).to_std().ok()
    }

    fn seen_unfinished(&self, ctx: &StepContext) -> Option<Duration> {
        ctx.resource(self.seen_key)
            .and_then(Value::as_f64)
            .map(Duration::from_secs_f64)
    }

    /// How long it usually takes here, if enough has been seen.
    pub async fn expected(&self, pool: &PgPool) -> Result<Option<Duration>, StepError> {
        let seen = db::durations::recent(pool, self.kind)
            .await
            .map_err(db_error)?;
        Ok(waits::expected(seen, MIN_SAMPLES))
    }

    /// Before looking at all: `Some(wait)` when it has not been looked at yet and cannot be done
    /// before the expected time, so the look would be a wasted call.
    pub fn too_early(&self, ctx: &StepContext, expected: Option<Duration>) -> Option<Duration> {
        let (elapsed, e) = (self.elapsed(ctx)?, expected?);
        if self.seen_unfinished(ctx).is_none() && elapsed < e.mul_f64(0.97) {
            return Some(waits::next_look(elapsed, expected, ctx.poll_interval));
        }
        None
    }

    /// It was just seen unfinished: when to look next, and a note saying why.
    pub fn unfinished(
        &self,
        ctx: &mut StepContext,
        expected: Option<Duration>,
    ) -> (Duration, String) {
        let Some(elapsed) = self.elapsed(ctx) else {
            return (ctx.poll_interval, "in progress".into());
        };
        ctx.set_resource(self.seen_key, elapsed.as_secs_f64());
        let note = match expected {
            Some(e) => format!("in progress for {}; usually {}", secs(elapsed), secs(e)),
            None => format!("in progress for {}", secs(elapsed)),
        };
        (waits::next_look(elapsed, expected, ctx.poll_interval), note)
    }

    /// It was just seen finished: record how long it took (when vend saw it start) and forget the start.
    pub async fn finished(&self, pool: &PgPool, ctx: &mut StepContext) -> Result<(), StepError> {
        self.finished_in(pool, ctx, None).await
    }

    /// As [`Timed::finished`], with the duration AWS itself reports when it does (its own request and
    /// completion times): exact, where vend's looks only bracket it.
    pub async fn finished_in(
        &self,
        pool: &PgPool,
        ctx: &mut StepContext,
        reported: Option<Duration>,
    ) -> Result<(), StepError> {
        let seen = self
            .elapsed(ctx)
            .map(|took| waits::observed(self.seen_unfinished(ctx), took));
        if let Some(took) = reported.or(seen) {
            db::durations::record(pool, self.kind, took)
                .await
                .map_err(db_error)?;
        }
        ctx.set_resource(self.started_key, Value::Null);
        ctx.set_resource(self.seen_key, Value::Null);
        Ok(())
    }
}
