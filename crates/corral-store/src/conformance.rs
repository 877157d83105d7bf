//! The behaviour every backend must have, run against each of them: memory, SQLite and
//! etcd (a 3-member cluster shared by these tests, one at a time, each in its own key
//! namespace so revisions and keys of one test are not disturbed by another).

use crate::etcd_cluster::EtcdCluster;
use crate::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn cluster() -> &'static EtcdCluster {
    static CLUSTER: OnceLock<EtcdCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| EtcdCluster::start(3))
}

/// Every backend; the guard serializes the etcd tests (store revisions are cluster-wide).
async fn backends() -> (
    Vec<(&'static str, Arc<dyn Store>)>,
    tokio::sync::MutexGuard<'static, ()>,
) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let guard = ONE_AT_A_TIME.lock().await;
    let endpoints = tokio::task::spawn_blocking(|| cluster().endpoints())
        .await
        .unwrap();
    let etcd = EtcdStore::connect(
        &endpoints,
        EtcdOptions {
            namespace: format!("conformance/{}/", NEXT.fetch_add(1, Ordering::Relaxed)),
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap();
    (
        vec![
            ("memory", Arc::new(MemoryStore::new())),
            ("sqlite", Arc::new(SqliteStore::in_memory().unwrap())),
            ("etcd", Arc::new(etcd)),
        ],
        guard,
    )
}

/// The backends whose leases follow tokio's (pausable) clock.
fn local_backends() -> Vec<(&'static str, Arc<dyn Store>)> {
    vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(SqliteStore::in_memory().unwrap())),
    ]
}

/// The next change, or a failure after 5 s (etcd delivers asynchronously).
async fn next(w: &mut Watch, name: &str) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap_or_else(|_| panic!("{name}: no change within 5 s"))
        .unwrap_or_else(|| panic!("{name}: watch ended"))
}

#[tokio::test]
async fn put_get_list_delete_with_revisions() {
    let (backends, _one) = backends().await;
    for (name, s) in backends {
        let r1 = s.put("vms/a", b"1", Expect::Absent).await.unwrap();
        let r2 = s.put("vms/b", b"2", Expect::Absent).await.unwrap();
        s.put("tasks/x", b"t", Expect::Any).await.unwrap();
        assert!(r2 > r1, "{name}");
        assert_eq!(s.get("vms/a").await.unwrap().unwrap().value, b"1");
        let keys: Vec<String> = s
            .list("vms/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["vms/a", "vms/b"], "{name}");
        assert!(
            matches!(
                s.put("vms/a", b"x", Expect::Absent).await,
                Err(StoreError::Conflict { .. })
            ),
            "{name}: create-only"
        );
        let r3 = s.put("vms/a", b"3", Expect::Revision(r1)).await.unwrap();
        assert!(
            matches!(
                s.put("vms/a", b"4", Expect::Revision(r1)).await,
                Err(StoreError::Conflict { found: Some(f), .. }) if f == r3
            ),
            "{name}: compare-and-swap"
        );
        s.delete("vms/a", Expect::Revision(r3)).await.unwrap();
        assert!(s.get("vms/a").await.unwrap().is_none());
        s.delete("vms/a", Expect::Any).await.unwrap();
        assert_eq!(s.revision().await.unwrap(), r3 + 1, "{name}");
    }
}

#[tokio::test]
async fn prefix_is_not_a_pattern() {
    let (backends, _one) = backends().await;
    for (name, s) in backends {
        s.put("a%/1", b"", Expect::Any).await.unwrap();
        s.put("ab/1", b"", Expect::Any).await.unwrap();
        assert_eq!(s.list("a%/").await.unwrap().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_transaction_applies_all_or_nothing() {
    let (backends, _one) = backends().await;
    for (name, s) in backends {
        s.put("names/web", b"id1", Expect::Absent).await.unwrap();
        let before = s.revision().await.unwrap();
        let e = s
            .txn(vec![
                TxnOp::put("vms/id2", b"{}".to_vec(), Expect::Absent),
                TxnOp::put("names/web", b"id2".to_vec(), Expect::Absent),
            ])
            .await;
        assert!(
            matches!(e, Err(StoreError::Conflict { ref key, .. }) if key == "names/web"),
            "{name}: {e:?}"
        );
        assert!(
            s.get("vms/id2").await.unwrap().is_none(),
            "{name}: nothing applied"
        );
        assert_eq!(s.revision().await.unwrap(), before, "{name}");
        let r = s
            .txn(vec![
                TxnOp::put("vms/id2", b"{}".to_vec(), Expect::Absent),
                TxnOp::put("names/db", b"id2".to_vec(), Expect::Absent),
            ])
            .await
            .unwrap();
        assert_eq!(
            r,
            before + 1,
            "{name}: one revision for the whole transaction"
        );
        assert_eq!(s.get("names/db").await.unwrap().unwrap().mod_revision, r);
    }
}

#[tokio::test]
async fn watches_see_changes_in_order_and_resume_from_a_revision() {
    let (backends, _one) = backends().await;
    for (name, s) in backends {
        let mut live = s.watch("vms/", 0).await.unwrap();
        let r1 = s.put("vms/a", b"1", Expect::Any).await.unwrap();
        s.put("other/x", b"-", Expect::Any).await.unwrap();
        let r2 = s.put("vms/a", b"2", Expect::Any).await.unwrap();
        s.delete("vms/a", Expect::Any).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(next(&mut live, name).await);
        }
        assert_eq!(seen[0].change, Change::Put(b"1".to_vec()), "{name}");
        assert_eq!(seen[0].key, "vms/a", "{name}");
        assert_eq!(seen[1].mod_revision, r2, "{name}");
        assert_eq!(seen[2].change, Change::Delete, "{name}");
        // Other prefixes are not seen: the next change is the marker written after them.
        s.put("other/y", b"-", Expect::Any).await.unwrap();
        let marker = s.put("vms/marker", b"m", Expect::Any).await.unwrap();
        let ev = next(&mut live, name).await;
        assert_eq!(
            (ev.key.as_str(), ev.mod_revision),
            ("vms/marker", marker),
            "{name}: other prefixes are not seen"
        );
        // A watcher that resumes after r1 gets exactly what followed.
        let mut resumed = s.watch("vms/", r1).await.unwrap();
        let mut again = Vec::new();
        for _ in 0..3 {
            again.push(next(&mut resumed, name).await.mod_revision);
        }
        assert_eq!(again, [r2, r2 + 1, marker], "{name}");
        assert!(resumed.try_next().is_none(), "{name}");
    }
}

#[tokio::test]
async fn a_watch_before_the_kept_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.put("k", b"1", Expect::Any).await.unwrap();
        s.put("k", b"2", Expect::Any).await.unwrap();
    }
    // History lives in the process: after a reopen, older revisions are compacted.
    let s = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        s.watch("", 1).await,
        Err(StoreError::Compacted {
            requested: 1,
            oldest: 2
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn leased_records_vanish_when_the_lease_is_not_renewed() {
    // Paused time: the local backends only (etcd's lease test is in tests/etcd.rs).
    for (name, s) in local_backends() {
        let lease = s.grant_lease(Duration::from_secs(3)).await.unwrap();
        s.txn(vec![TxnOp::Put {
            key: "hosts/a/alive".into(),
            value: b"1".to_vec(),
            expect: Expect::Absent,
            lease: Some(lease),
        }])
        .await
        .unwrap();
        let mut w = s.watch("hosts/", 0).await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s.keep_alive(lease).await.unwrap();
        }
        assert!(
            s.get("hosts/a/alive").await.unwrap().is_some(),
            "{name}: renewed"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            s.get("hosts/a/alive").await.unwrap().is_none(),
            "{name}: expired"
        );
        let ev = w.next().await.unwrap();
        assert_eq!(ev.change, Change::Delete, "{name}");
        assert!(matches!(
            s.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(l)) if l == lease
        ));
        assert!(matches!(
            s.txn(vec![TxnOp::Put {
                key: "hosts/a/alive".into(),
                value: vec![],
                expect: Expect::Any,
                lease: Some(lease),
            }])
            .await,
            Err(StoreError::LeaseNotFound(_))
        ));
    }
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_records_at_once() {
    let (backends, _one) = backends().await;
    for (name, s) in backends {
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        s.txn(vec![TxnOp::Put {
            key: "owners/vm1".into(),
            value: b"a".to_vec(),
            expect: Expect::Any,
            lease: Some(lease),
        }])
        .await
        .unwrap();
        // Rewritten without the lease: no longer attached.
        s.txn(vec![TxnOp::Put {
            key: "owners/vm2".into(),
            value: b"a".to_vec(),
            expect: Expect::Any,
            lease: Some(lease),
        }])
        .await
        .unwrap();
        s.put("owners/vm2", b"b", Expect::Any).await.unwrap();
        s.revoke(lease).await.unwrap();
        assert!(s.get("owners/vm1").await.unwrap().is_none(), "{name}");
        assert!(s.get("owners/vm2").await.unwrap().is_some(), "{name}");
    }
}
