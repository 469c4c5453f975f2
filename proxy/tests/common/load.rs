//! Load runs: many keep-alive clients, their outcomes counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Client;

/// Outcome counts of a load run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: usize,
    pub non_2xx: Vec<u16>,
    pub errors: Vec<String>,
    pub by_upstream: std::collections::BTreeMap<String, usize>,
    /// Idle kept-alive connections found closed and retried (as any HTTP client does).
    pub stale_retries: usize,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.ok + self.non_2xx.len() + self.errors.len()
    }
    pub fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx.extend(other.non_2xx);
        self.errors.extend(other.errors);
        self.stale_retries += other.stale_retries;
        for (k, v) in other.by_upstream {
            *self.by_upstream.entry(k).or_default() += v;
        }
    }
}

/// `concurrency` keep-alive clients send `total` GETs of `path` between them, stopping early
/// when `stop` says so. Bounded by `total` and a 120 s deadline.
pub async fn load(
    to: SocketAddr,
    path: &'static str,
    total: usize,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(to);
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < total
                && Instant::now() < deadline
                && !stop.load(Ordering::Relaxed)
            {
                match client.get(path).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        tally.ok += 1;
                        let up = r.header("x-upstream").unwrap_or("-").to_owned();
                        *tally.by_upstream.entry(up).or_default() += 1;
                    }
                    Ok(r) => tally.non_2xx.push(r.status),
                    Err(e) => tally.errors.push(e.to_string()),
                }
            }
            tally.stale_retries = client.stale_retries;
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.add(t.await.expect("load task"));
    }
    tally
}
