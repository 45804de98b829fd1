//! The local index of the organization's accounts, and periodic jobs shared by replicas.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgAccount {
    pub account_id: String,
    pub email: String,
    pub name: String,
    pub status: String,
}

/// Indexed accounts with this root e-mail or this name (either would collide with the tenant's).
pub async fn accounts_matching(
    db: impl PgExecutor<'_>,
    email: &str,
    name: &str,
) -> Result<Vec<OrgAccount>, sqlx::Error> {
    sqlx::query_as!(
        OrgAccount,
        "SELECT account_id, email, name, status FROM org_accounts
         WHERE lower(email) = lower($1) OR name = $2 ORDER BY account_id",
        email,
        name
    )
    .fetch_all(db)
    .await
}

pub async fn upsert_account(db: impl PgExecutor<'_>, a: &OrgAccount) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO org_accounts (account_id, email, name, status) VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET email = $2, name = $3, status = $4, synced_at = now()"#,
        a.account_id,
        a.email,
        a.name,
        a.status
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Replaces the index with a full listing (accounts that left the organization disappear).
pub async fn replace_accounts(
    conn: &mut PgConnection,
    all: &[OrgAccount],
) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = all.iter().map(|a| a.account_id.clone()).collect();
    let emails: Vec<String> = all.iter().map(|a| a.email.clone()).collect();
    let names: Vec<String> = all.iter().map(|a| a.name.clone()).collect();
    let statuses: Vec<String> = all.iter().map(|a| a.status.clone()).collect();
    sqlx::query!(
        "DELETE FROM org_accounts WHERE NOT (account_id = ANY($1))",
        &ids
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"INSERT INTO org_accounts (account_id, email, name, status)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
           ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, name = excluded.name,
               status = excluded.status, synced_at = now()"#,
        &ids,
        &emails,
        &names,
        &statuses
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims the job `name` for this interval: `true` for exactly one caller per `every`.
pub async fn claim_periodic(
    db: impl PgExecutor<'_>,
    name: &str,
    every: Duration,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        r#"INSERT INTO periodic_jobs (name, last_run_at) VALUES ($1, now())
           ON CONFLICT (name) DO UPDATE SET last_run_at = now()
           WHERE periodic_jobs.last_run_at <= now() - make_interval(secs => $2)"#,
        name,
        every.as_secs_f64()
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}
