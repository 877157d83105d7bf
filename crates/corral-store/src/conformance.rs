//! The behaviour every backend must have, run against each of them.

use crate::*;
use std::sync::Arc;
use std::time::Duration;

fn backends() -> Vec<(&'static str, Arc<dyn Store>)> {
    vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(SqliteStore::in_memory().unwrap())),
    ]
}

#[tokio::test]
async fn put_get_list_delete_with_revisions() {
    for (name, s) in backends() {
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
    for (name, s) in backends() {
        s.put("a%/1", b"", Expect::Any).await.unwrap();
        s.put("ab/1", b"", Expect::Any).await.unwrap();
        assert_eq!(s.list("a%/").await.unwrap().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_transaction_applies_all_or_nothing() {
    for (name, s) in backends() {
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
    for (name, s) in backends() {
        let mut live = s.watch("vms/", 0).await.unwrap();
        let r1 = s.put("vms/a", b"1", Expect::Any).await.unwrap();
        s.put("other/x", b"-", Expect::Any).await.unwrap();
        let r2 = s.put("vms/a", b"2", Expect::Any).await.unwrap();
        s.delete("vms/a", Expect::Any).await.unwrap();
        let seen: Vec<WatchEvent> = (0..3).filter_map(|_| live.try_next()).collect();
        assert_eq!(seen.len(), 3, "{name}: {seen:?}");
        assert_eq!(seen[0].change, Change::Put(b"1".to_vec()));
        assert_eq!(seen[1].mod_revision, r2);
        assert_eq!(seen[2].change, Change::Delete);
        assert!(
            live.try_next().is_none(),
            "{name}: other prefixes are not seen"
        );
        // A watcher that resumes after r1 gets exactly what followed.
        let mut resumed = s.watch("vms/", r1).await.unwrap();
        let again: Vec<u64> = (0..2)
            .filter_map(|_| resumed.try_next())
            .map(|e| e.mod_revision)
            .collect();
        assert_eq!(again, [r2, r2 + 1], "{name}");
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
    for (name, s) in backends() {
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
    for (name, s) in backends() {
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
