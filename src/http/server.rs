//! Serving the router with bounded resources: a cap on open connections, a deadline for request
//! headers (slowloris), a limit on header size, a request timeout, a body limit and load shedding when
//! too many requests are in flight (the last three are layers in `http::router`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

pub use crate::config::HttpLimits as Limits;

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish their requests
/// for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            // Which protocol, within the header deadline: a connection that sends nothing, or half a
            // preface, is closed instead of holding its place.
            let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
            let Some(proto) = sniff(&stream, deadline).await else {
                debug!(%peer, "connection closed: nothing (or no protocol) within the header deadline");
                drop(permit);
                return;
            };
            serve_one(stream, peer, router, proto, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it ends: all of them back means all connections ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads (without consuming) the connection's first bytes until they tell HTTP/2's preface from
/// anything else, by `deadline`. `None`: closed, or not enough said in time.
async fn sniff(stream: &tokio::net::TcpStream, deadline: tokio::time::Instant) -> Option<Proto> {
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if !H2_PREFACE.starts_with(&buf[..n]) {
            return Some(Proto::Http1);
        }
        if n >= H2_PREFACE.len() {
            return Some(Proto::Http2);
        }
        // Part of a preface so far: peek returns at once while those bytes wait, so pace the looks.
        tokio::time::sleep(Duration::from_millis(10)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    proto: Proto,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let service = router
        .clone()
        .map_request(|req: Request<Incoming>| req.map(Body::new));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        // A peer that stopped answering is found out and closed.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = match proto {
        Proto::Http1 => builder.http1_only(),
        Proto::Http2 => builder.http2_only(),
    };
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
        .into_owned();
    tokio::pin!(conn);
    let aged = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(aged);
    let result = tokio::select! {
        r = &mut conn => r,
        // Old enough, or the server stops: finish what is in progress, take nothing new.
        () = &mut aged => {
            conn.as_mut().graceful_shutdown();
            (&mut conn).await
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            (&mut conn).await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
