//! The etcd backend (pools): the [`Store`] trait mapped one to one onto etcd's v3 API.
//!
//! | trait | etcd |
//! | --- | --- |
//! | revision of a record | its `mod_revision`; the store revision is the response header's |
//! | `get` | `Range` of one key (linearizable) |
//! | `list(prefix)` | `Range [prefix, prefix+1)` in key order, in pages of 1000 keys all read at the first page's revision |
//! | `txn(ops)` | one `Txn`: its compare list holds every op's condition (`Expect::Absent` is `create_revision == 0`, `Expect::Revision(r)` is `mod_revision == r`), success runs every put/delete, failure reads each conditioned key so the `Conflict` names the first key whose condition failed and the revision found, atomically |
//! | `watch(prefix, after)` | `Watch` with `start_revision = after + 1` (`after == 0`: from now); a start below the compaction is `Compacted`; a broken stream is re-created from the last delivered revision + 1 on any member, so no change is lost or repeated; a later compaction of that point ends the watch |
//! | `grant_lease(ttl)` | `LeaseGrant` (TTL rounded up to whole seconds) |
//! | `keep_alive` | one request/response on a `LeaseKeepAlive` stream (TTL 0 back: `LeaseNotFound`) |
//! | `revoke` | `LeaseRevoke` (an unknown lease is not an error) |
//!
//! Connection: one gRPC channel per endpoint, tried in turn starting from the last one that
//! answered. Every call has a deadline ([`EtcdOptions::timeout`]); when no member answers in
//! time the call fails with `StoreError::Unavailable` naming every endpoint. Requests carry
//! etcd's "require leader" flag, so a member cut off from the quorum refuses instead of
//! serving stale data or a silent watch. Reads, lease calls and watch set-up move to the next
//! member on any transport error; a transaction moves on only when the request surely was not
//! delivered (connection refused, connect timeout, broken pipe, "no leader"). When a
//! transaction was sent but its answer is lost (the member died, or it forwarded the request
//! to a leader that died: etcd then waits out its own 5 s request timeout), the outcome is
//! settled by reading the transaction's *marker*: every transaction that is not only
//! unconditional deletes also puts an empty key `\0corral/txn/<store>/<n>` (outside every
//! namespace, never listed or watched, on a lease that ends it two minutes later). A
//! linearizable read finds it (applied: its revision is the answer) or not (never applied,
//! since a new leader has committed: send again). Only if that read fails too does the call
//! end with `Unavailable` whose source says the outcome is unknown.
//!
//! [`EtcdOptions::namespace`] prefixes every key, so several stores (pools, tests) can share
//! one cluster; keys handed back never carry it.

use crate::{
    check, BoxFuture, Change, Expect, LeaseId, Store, StoreError, TxnOp, Versioned, Watch,
    WatchEvent,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp as EtcdOp,
    TxnOpResponse, WatchOptions, WatchStream,
};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Keys per `Range` page of a `list`.
pub(crate) const PAGE: i64 = 1000;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Deadline of one store call, retries on other members included.
    pub timeout: Duration,
    /// Deadline of one TCP connect to one member.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive: ping this often, drop the connection when a ping is not answered
    /// within `keep_alive.1` (finds a member that vanished without closing the socket).
    pub keep_alive: (Duration, Duration),
    /// Prefix of every key in etcd (empty: none).
    pub namespace: String,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            keep_alive: (Duration::from_secs(2), Duration::from_secs(2)),
            namespace: String::new(),
        }
    }
}

/// A store on an etcd 3.4+ cluster.
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Tells this store's watch tasks that it is gone.
    closed: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    /// This store's marker names: a random base and a counter.
    marker_base: u64,
    marker_seq: std::sync::atomic::AtomicU64,
    marker_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    members: Vec<Client>,
    /// The endpoint of each member, as given.
    urls: Vec<String>,
    /// Index of the member that answered last.
    preferred: AtomicUsize,
    endpoints: String,
    opts: EtcdOptions,
}

/// Whether a failed call may be sent to another member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, lease calls, watch set-up: any transport failure.
    Always,
    /// Writes: only when the request surely did not reach a member.
    NotDelivered,
}

/// How one attempt failed.
enum Failure {
    /// The member could not be reached or answered "no leader": try another.
    Unreachable(etcd_client::Error),
    /// A transport failure after the request may have been applied.
    Ambiguous(etcd_client::Error),
    /// The cluster answered with an error.
    Answer(etcd_client::Error),
}

fn classify(e: etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    let transport = match &e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code() as i32,
            tonic_code::UNAVAILABLE
                | tonic_code::UNKNOWN
                | tonic_code::DEADLINE_EXCEEDED
                | tonic_code::CANCELLED
                | tonic_code::ABORTED
        ),
        // Watch set-up failures (stream closed, "no leader" cancel) and keep-alive stream
        // failures: only reads use these, try another member.
        E::WatchError(_) | E::LeaseKeepAliveError(_) => return Failure::Unreachable(e),
        _ => false,
    };
    if !transport {
        return Failure::Answer(e);
    }
    if not_delivered(&e) {
        Failure::Unreachable(e)
    } else {
        Failure::Ambiguous(e)
    }
}

/// gRPC status codes (numbers, so this crate does not name tonic).
mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

/// The request never reached a member that could apply it: connection refused or timed out
/// while connecting, the socket was already dead when the request was written (broken pipe:
/// the member is gone, e.g. killed between two calls), or the member has no leader (it
/// refuses before proposing).
fn not_delivered(e: &etcd_client::Error) -> bool {
    use std::io::ErrorKind;
    let mut text = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::BrokenPipe | ErrorKind::NotConnected
            ) {
                return true;
            }
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let text = text.to_lowercase();
    [
        "connection refused",
        "tcp connect error",
        "error trying to connect",
        "no leader",
        "broken pipe",
    ]
    .iter()
    .any(|m| text.contains(m))
}

fn status_message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// A write was sent but no answer came: it may or may not have been applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}: its outcome is unknown")]
struct OutcomeUnknown(String);

fn outcome_unknown(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable { source, .. } if source.is::<OutcomeUnknown>())
}

/// Where transactions leave their markers (outside every namespace; never listed or
/// watched): `\0corral/txn/<store>/<n>`, attached to a lease of [`MARKER_TTL`].
const MARKER_PREFIX: &[u8] = b"\0corral/txn/";
const MARKER_TTL: i64 = 120;
/// A marker lease is used for new markers this long, so every marker outlives the call
/// that may need to read it by far.
const MARKER_LEASE_REUSE: Duration = Duration::from_secs(60);

fn is_marker(key: &[u8]) -> bool {
    key.starts_with(MARKER_PREFIX)
}

impl EtcdStore {
    /// Connect to a cluster (`http://host:port` each) and check that one member answers
    /// within `options.timeout`.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, StoreError> {
        let names = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable {
                endpoints: names,
                source: Box::new(Message("no etcd endpoint given".into())),
            });
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let o = ConnectOptions::new()
                .with_connect_timeout(options.connect_timeout)
                .with_keep_alive(options.keep_alive.0, options.keep_alive.1)
                .with_keep_alive_while_idle(true)
                .with_require_leader(true);
            // Lazy: no I/O until the first call.
            let c = tokio::time::timeout(options.timeout, Client::connect([ep.as_str()], Some(o)))
                .await
                .map_err(|_| StoreError::Unavailable {
                    endpoints: names.clone(),
                    source: Box::new(Message("timed out".into())),
                })?
                .map_err(|e| StoreError::Unavailable {
                    endpoints: names.clone(),
                    source: Box::new(e),
                })?;
            members.push(c);
        }
        let (closed, _) = tokio::sync::watch::channel(false);
        let store = EtcdStore {
            inner: Arc::new(Inner {
                marker_base: random_u64(),
                marker_seq: std::sync::atomic::AtomicU64::new(0),
                marker_lease: tokio::sync::Mutex::new(None),
                members,
                urls: endpoints.to_vec(),
                preferred: AtomicUsize::new(0),
                endpoints: names,
                opts: options,
            }),
            closed,
        };
        store.inner.revision().await?;
        Ok(store)
    }

    /// Compact the history at `revision` (watches resuming from before it get `Compacted`).
    /// Pool maintenance and tests; etcd also compacts on its own when configured to.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.inner
            .call(Retry::Always, move |mut c| async move {
                c.compact(revision as i64, None).await.map(|_| ())
            })
            .await
    }

    /// The endpoints this store was given, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
    }
}

impl Inner {
    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.opts.namespace.len() + key.len());
        k.extend_from_slice(self.opts.namespace.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The key with the namespace taken off.
    fn unkey(&self, key: &[u8]) -> String {
        let k = key
            .strip_prefix(self.opts.namespace.as_bytes())
            .unwrap_or(key);
        String::from_utf8_lossy(k).into_owned()
    }

    /// `[start, end)` of every key under `prefix`.
    fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.key(prefix);
        if start.is_empty() {
            // Every key: etcd spells it from "\0" to "\0".
            return (vec![0], vec![0]);
        }
        let mut end = start.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return (start, end);
            }
        }
        (start, vec![0])
    }

    fn unavailable(&self, source: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// Run `f` on one member after the other until one answers, within the call deadline.
    async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_until(Instant::now() + self.opts.timeout, retry, f)
            .await
    }

    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        retry: Retry,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Message("timed out".into()));
        let mut i = first;
        let mut rounds = 0u32;
        let mut failed: Option<usize> = None;
        loop {
            if let Some(dead) = failed.take() {
                if dead != i {
                    self.wait_leader_moves_off(i, dead, deadline).await;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unavailable(last));
            }
            // A member that hangs gets a part of the deadline, so another is tried. A write
            // gets less: when its outcome is unknown the caller settles it by reading its
            // marker, and a write forwarded to a leader that just died is lost and would
            // otherwise wait out etcd's own request timeout.
            let share = match retry {
                Retry::Always => self.opts.timeout / 2,
                Retry::NotDelivered => self.opts.timeout / 4,
            };
            let budget = if n > 1 {
                (deadline - now).min(share)
            } else {
                deadline - now
            };
            let r = tokio::time::timeout(budget, f(self.members[i].clone()))
                .await
                .map(|r| r.map_err(classify));
            if !matches!(r, Ok(Ok(_)) | Ok(Err(Failure::Answer(_)))) {
                // This member failed: the next call (say, settling this one) starts elsewhere.
                let _ = self.preferred.compare_exchange(
                    i,
                    (i + 1) % n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            match r {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => match e {
                    Failure::Answer(e) => return Err(map_answer(e)),
                    Failure::Unreachable(e) => {
                        last = Box::new(e);
                        failed = Some(i);
                    }
                    Failure::Ambiguous(e) => {
                        if retry == Retry::NotDelivered {
                            return Err(self.unavailable(Box::new(OutcomeUnknown(format!(
                                "{e} (the connection broke after the request was sent)"
                            )))));
                        }
                        last = Box::new(e);
                        failed = Some(i);
                    }
                },
                Err(_) => {
                    if retry == Retry::NotDelivered {
                        return Err(self.unavailable(Box::new(OutcomeUnknown(format!(
                            "member {} did not answer in {budget:?} after the request was sent",
                            i + 1
                        )))));
                    }
                    last = Box::new(Message(format!("member {} timed out", i + 1)));
                }
            }
            i = (i + 1) % n;
            if i == first {
                rounds += 1;
                // Every member failed: wait a little (an election may be under way).
                let pause = Duration::from_millis(50 * u64::from(rounds.min(4)));
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(left)).await;
            }
        }
    }

    /// Member `dead` failed; before sending to member `next`, wait (within the deadline)
    /// until `next` no longer follows `dead` as its leader. Otherwise `next` forwards the
    /// request to the dead leader, where it is lost and waits out etcd's own request timeout
    /// (5 s + two election timeouts) — after an election (a few hundred ms) it goes through.
    /// Best effort: any failure here just lets the call go on.
    async fn wait_leader_moves_off(&self, next: usize, dead: usize, deadline: Instant) {
        let dead_url = bare(&self.urls[dead]).to_string();
        let mut c = self.members[next].clone();
        let wait = async move {
            let list = c.member_list().await.ok()?;
            let dead_id = list
                .members()
                .iter()
                .find(|m| m.client_urls().iter().any(|u| bare(u) == dead_url))?
                .id();
            loop {
                let st = c.status().await.ok()?;
                if st.leader() != dead_id {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, wait).await;
    }

    /// A new marker key and the lease it goes with.
    async fn marker(&self, deadline: Instant) -> Result<(Vec<u8>, i64), StoreError> {
        let lease = {
            let mut slot = self.marker_lease.lock().await;
            match *slot {
                Some((id, at)) if at.elapsed() < MARKER_LEASE_REUSE => id,
                _ => {
                    let id = self
                        .call_until(deadline, Retry::Always, |mut c| async move {
                            Ok(c.lease_grant(MARKER_TTL, None).await?.id())
                        })
                        .await?;
                    *slot = Some((id, Instant::now()));
                    id
                }
            }
        };
        let n = self.marker_seq.fetch_add(1, Ordering::Relaxed);
        let mut key = MARKER_PREFIX.to_vec();
        key.extend_from_slice(format!("{:016x}/{n}", self.marker_base).as_bytes());
        Ok((key, lease))
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let key = self.key("");
        let key = if key.is_empty() { vec![0] } else { key };
        self.call(Retry::Always, |mut c| {
            let key = key.clone();
            async move {
                let r = c
                    .get(key, Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok(header_revision(r.header()))
            }
        })
        .await
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// An endpoint without its scheme, to compare with etcd's advertised URLs.
fn bare(url: &str) -> &str {
    let u = url.strip_prefix("http://").unwrap_or(url);
    let u = u.strip_prefix("https://").unwrap_or(u);
    u.trim_end_matches('/')
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> u64 {
    h.map(|h| h.revision().max(0) as u64).unwrap_or(0)
}

fn map_answer(e: etcd_client::Error) -> StoreError {
    StoreError::backend(e)
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    status_message(e).contains("lease not found")
}

fn is_compacted(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(b) => b.to_string().contains("compacted"),
        _ => false,
    }
}

fn condition(op: &TxnOp) -> (&str, Expect) {
    match op {
        TxnOp::Put { key, expect, .. } | TxnOp::Delete { key, expect } => (key, *expect),
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        Box::pin(async move {
            let k = self.inner.key(key);
            self.inner
                .call(Retry::Always, |mut c| {
                    let k = k.clone();
                    async move {
                        let r = c.get(k, None).await?;
                        Ok(r.kvs().first().map(|kv| Versioned {
                            value: kv.value().to_vec(),
                            mod_revision: kv.mod_revision() as u64,
                        }))
                    }
                })
                .await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Versioned)>, StoreError>> {
        Box::pin(async move {
            let (mut start, end) = self.inner.range(prefix);
            let mut at = 0i64;
            let mut out = Vec::new();
            loop {
                let page = self
                    .inner
                    .call(Retry::Always, |mut c| {
                        let (start, end) = (start.clone(), end.clone());
                        async move {
                            let o = GetOptions::new()
                                .with_range(end)
                                .with_limit(PAGE)
                                .with_revision(at);
                            c.get(start, Some(o)).await
                        }
                    })
                    .await?;
                if at == 0 {
                    at = header_revision(page.header()) as i64;
                }
                for kv in page.kvs().iter().filter(|kv| !is_marker(kv.key())) {
                    out.push((
                        self.inner.unkey(kv.key()),
                        Versioned {
                            value: kv.value().to_vec(),
                            mod_revision: kv.mod_revision() as u64,
                        },
                    ));
                }
                match page.kvs().last() {
                    Some(kv) if page.more() => {
                        start = kv.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok(out),
                }
            }
        })
    }

    fn txn(&self, ops: Vec<TxnOp>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut compares = Vec::new();
            let mut reads = Vec::new();
            let mut conditioned = Vec::new();
            let mut writes = Vec::with_capacity(ops.len());
            for op in &ops {
                let (key, expect) = condition(op);
                let k = inner.key(key);
                match expect {
                    Expect::Any => {}
                    Expect::Absent => {
                        compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                    }
                    Expect::Revision(r) => {
                        compares.push(Compare::mod_revision(k.clone(), CompareOp::Equal, r as i64))
                    }
                }
                if expect != Expect::Any {
                    reads.push(EtcdOp::get(k.clone(), None));
                    conditioned.push((key.to_string(), expect));
                }
                writes.push(match op {
                    TxnOp::Put { value, lease, .. } => EtcdOp::put(
                        k,
                        value.clone(),
                        lease.map(|l| PutOptions::new().with_lease(l.0)),
                    ),
                    TxnOp::Delete { .. } => EtcdOp::delete(k, None),
                });
            }
            let lease = ops.iter().find_map(|op| match op {
                TxnOp::Put { lease: Some(l), .. } => Some(*l),
                _ => None,
            });
            let deadline = Instant::now() + inner.opts.timeout;
            // Unless the transaction only deletes unconditionally (sending it twice does no
            // harm), it also writes a marker key, so an unknown outcome can be settled.
            let idempotent = ops.iter().all(|op| {
                matches!(
                    op,
                    TxnOp::Delete {
                        expect: Expect::Any,
                        ..
                    }
                )
            });
            let marker = if idempotent {
                None
            } else {
                let (key, lease) = inner.marker(deadline).await?;
                writes.push(EtcdOp::put(
                    key.clone(),
                    Vec::new(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
                Some(key)
            };
            let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
            let r = loop {
                let r = inner
                    .call_until(deadline, Retry::NotDelivered, |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await;
                match (&r, &marker) {
                    (Err(e), Some(m)) if outcome_unknown(e) => {
                        // A linearizable read (it needs a leader that has committed in its
                        // term, so a lost proposal stays lost) tells whether it was applied.
                        let m = m.clone();
                        let found = inner
                            .call_until(deadline, Retry::Always, |mut c| {
                                let m = m.clone();
                                async move {
                                    let g = c.get(m, None).await?;
                                    Ok(g.kvs().first().map(|kv| kv.mod_revision() as u64))
                                }
                            })
                            .await;
                        match found {
                            Ok(Some(rev)) => return Ok(rev),
                            Ok(None) => continue, // not applied: send it again
                            Err(_) => break r,
                        }
                    }
                    _ => break r,
                }
            };
            let resp = match r {
                Ok(resp) => resp,
                Err(StoreError::Backend(e)) => {
                    let not_found = e
                        .downcast_ref::<etcd_client::Error>()
                        .is_some_and(is_lease_not_found);
                    return Err(match (not_found, lease) {
                        (true, Some(l)) => StoreError::LeaseNotFound(l),
                        _ => StoreError::Backend(e),
                    });
                }
                Err(e) => return Err(e),
            };
            if resp.succeeded() {
                return Ok(header_revision(resp.header()));
            }
            let found: Vec<Option<u64>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
                    _ => None,
                })
                .collect();
            for ((key, expect), f) in conditioned.iter().zip(found.iter()) {
                check(key, *expect, *f)?;
            }
            // The compare failed but every read agrees with it: report the first condition.
            let (key, expected) = conditioned
                .first()
                .cloned()
                .unwrap_or_else(|| (String::new(), Expect::Any));
            Err(StoreError::Conflict {
                key,
                expected,
                found: found.first().copied().flatten(),
            })
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: u64,
    ) -> BoxFuture<'a, Result<Watch, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (start, end) = inner.range(prefix);
            // "From now" is from the current revision, read first: the watch then starts at an
            // explicit revision, so a write racing with its creation is neither lost nor
            // reported twice, and a resumed stream knows where it stands.
            let last = if after_revision > 0 {
                check_not_compacted(inner, &start, &end, after_revision).await?;
                after_revision
            } else {
                inner.revision().await?
            };
            let stream = open_watch(inner, &start, &end, last).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let task = WatchTask {
                inner: Arc::downgrade(&self.inner),
                closed: self.closed.subscribe(),
                start,
                end,
                last,
                tx,
            };
            tokio::spawn(task.run(stream));
            Ok(Watch { rx })
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
            let secs = secs.max(1);
            self.inner
                .call(Retry::Always, |mut c| async move {
                    let r = c.lease_grant(secs, None).await?;
                    Ok(LeaseId(r.id()))
                })
                .await
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let r = self
                .inner
                .call(Retry::Always, |mut c| async move {
                    // The crate sends the first request and checks its answer (TTL 0: gone).
                    match c.lease_keep_alive(lease.0).await {
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(m))
                            if m.contains("not found") =>
                        {
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            if r {
                Ok(())
            } else {
                Err(StoreError::LeaseNotFound(lease))
            }
        })
    }

    fn revoke(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner
                .call(Retry::Always, |mut c| async move {
                    match c.lease_revoke(lease.0).await {
                        Ok(_) => Ok(()),
                        Err(e) if is_lease_not_found(&e) => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.inner.revision().await })
    }
}

/// Create a watch of the changes after revision `after` on some member and wait for etcd to
/// confirm it.
async fn open_watch(
    inner: &Inner,
    start: &[u8],
    end: &[u8],
    after: u64,
) -> Result<WatchStream, StoreError> {
    inner
        .call(Retry::Always, |mut c| {
            let (start, end) = (start.to_vec(), end.to_vec());
            async move {
                let o = WatchOptions::new()
                    .with_range(end)
                    .with_start_revision(after as i64 + 1);
                let mut stream = c.watch(start, Some(o)).await?;
                loop {
                    match stream.message().await? {
                        Some(r) if r.created() && !r.canceled() => return Ok(stream),
                        Some(r) if r.canceled() => {
                            return Err(etcd_client::Error::WatchError(format!(
                                "watch refused: {}",
                                r.cancel_reason()
                            )))
                        }
                        Some(_) => continue,
                        None => {
                            return Err(etcd_client::Error::WatchError(
                                "watch stream closed".into(),
                            ))
                        }
                    }
                }
            }
        })
        .await
}

/// A watch from `after + 1` is possible unless that revision is compacted: read the range at
/// that revision, and on "compacted" learn the compaction point from a watch's cancel
/// message (etcd sends it within its 100 ms sync period).
async fn check_not_compacted(
    inner: &Inner,
    start: &[u8],
    end: &[u8],
    after: u64,
) -> Result<(), StoreError> {
    let probe = inner
        .call(Retry::Always, |mut c| {
            let (start, end) = (start.to_vec(), end.to_vec());
            async move {
                let o = GetOptions::new()
                    .with_range(end)
                    .with_count_only()
                    .with_revision(after as i64 + 1);
                c.get(start, Some(o)).await.map(|_| ())
            }
        })
        .await;
    match probe {
        Ok(()) => Ok(()),
        Err(e) if is_compacted(&e) => {
            let mut stream = open_watch(inner, start, end, after).await?;
            let wait = tokio::time::timeout(inner.opts.timeout, async {
                loop {
                    match stream.message().await {
                        Ok(Some(r)) if r.compact_revision() > 0 => {
                            return Some(r.compact_revision() as u64)
                        }
                        Ok(Some(_)) => continue,
                        _ => return None,
                    }
                }
            })
            .await;
            let compacted = wait.ok().flatten().unwrap_or(after + 2);
            Err(StoreError::Compacted {
                requested: after,
                oldest: compacted.saturating_sub(1),
            })
        }
        // "future revision": nothing after `after` yet, which is fine.
        Err(e) if future_revision(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn future_revision(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(b) => b.to_string().contains("future revision"),
        _ => false,
    }
}

struct WatchTask {
    inner: Weak<Inner>,
    closed: tokio::sync::watch::Receiver<bool>,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Every change up to this revision has been delivered.
    last: u64,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

enum Next {
    Deliver(etcd_client::WatchResponse),
    Broken,
    Stop,
}

impl WatchTask {
    async fn run(mut self, mut stream: WatchStream) {
        loop {
            let next = tokio::select! {
                _ = self.tx.closed() => Next::Stop,
                _ = self.closed.wait_for(|c| *c) => Next::Stop,
                m = stream.message() => match m {
                    Ok(Some(r)) => Next::Deliver(r),
                    Ok(None) | Err(_) => Next::Broken,
                },
            };
            match next {
                Next::Stop => return,
                Next::Deliver(r) => {
                    if r.canceled() {
                        if r.compact_revision() > 0 {
                            // The resume point is gone: end the watch (list again).
                            return;
                        }
                        match self.reopen().await {
                            Some(s) => stream = s,
                            None => return,
                        }
                        continue;
                    }
                    if !self.deliver(&r) {
                        return;
                    }
                }
                Next::Broken => match self.reopen().await {
                    Some(s) => stream = s,
                    None => return,
                },
            }
        }
    }

    /// Send a response's events; a response holds whole revisions, so `last` moves to the
    /// highest one.
    fn deliver(&mut self, r: &etcd_client::WatchResponse) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision() as u64;
            if rev <= self.last || is_marker(kv.key()) {
                continue; // never repeat a change
            }
            let change = match ev.event_type() {
                etcd_client::EventType::Put => Change::Put(kv.value().to_vec()),
                etcd_client::EventType::Delete => Change::Delete,
            };
            let event = WatchEvent {
                key: inner.unkey(kv.key()),
                change,
                mod_revision: rev,
            };
            if self.tx.send(event).is_err() {
                return false;
            }
        }
        if let Some(max) = r
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision() as u64))
            .max()
        {
            self.last = self.last.max(max);
        }
        true
    }

    /// Watch again from the last delivered revision on whichever member answers, until it
    /// works, the resume point is compacted, or nobody listens any more.
    async fn reopen(&mut self) -> Option<WatchStream> {
        let mut pause = Duration::from_millis(50);
        loop {
            if self.tx.is_closed() || *self.closed.borrow() {
                return None;
            }
            let inner = self.inner.upgrade()?;
            match open_watch(&inner, &self.start, &self.end, self.last).await {
                Ok(s) => return Some(s),
                Err(StoreError::Compacted { .. }) => return None,
                Err(_) => {}
            }
            drop(inner);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
