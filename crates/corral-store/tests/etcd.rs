//! The etcd backend against a real 3-member etcd 3.4 cluster (Debian `etcd-server`): what
//! only a cluster can show — members dying under a watch and under writes, the whole cluster
//! gone, compaction, leases expiring in real time. The behaviour shared with the other
//! backends is in `src/conformance.rs`. Each test starts its own cluster; they run one at a
//! time so the raft timings (heartbeat 50 ms, election 250 ms) hold on a busy machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/etcd_cluster.rs"]
mod etcd_cluster;

use corral_store::{
    Change, EtcdOptions, EtcdStore, Expect, LeaseId, Store, StoreError, TxnOp, Watch, WatchEvent,
};
use etcd_cluster::EtcdCluster;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> EtcdCluster {
    tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap()
}

fn options(timeout: Duration) -> EtcdOptions {
    EtcdOptions {
        timeout,
        connect_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    }
}

async fn next(w: &mut Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch goes on")
}

#[tokio::test]
async fn a_watch_resumes_after_its_member_dies_without_losing_or_repeating_a_change() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = start().await;
    // The store prefers the first endpoint, so the watch is on member 0.
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut w = s.watch("vms/", 0).await.unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(
            s.put(&format!("vms/{i}"), b"before", Expect::Any)
                .await
                .unwrap(),
        );
    }
    for r in &written {
        assert_eq!(next(&mut w).await.mod_revision, *r);
    }
    cluster.kill(0);
    // Writes while the watch is broken and after it is back.
    for i in 0..10 {
        let r = s
            .txn(vec![
                TxnOp::put(format!("vms/{i}"), b"after".to_vec(), Expect::Any),
                TxnOp::put(format!("other/{i}"), b"-".to_vec(), Expect::Any),
            ])
            .await
            .unwrap();
        written.push(r);
        if i == 4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    s.delete("vms/0", Expect::Any).await.unwrap();
    let last = s.revision().await.unwrap();
    written.push(last);
    let mut seen: Vec<u64> = Vec::new();
    while seen.last() != Some(&last) {
        let ev = next(&mut w).await;
        assert!(ev.key.starts_with("vms/"), "{ev:?}");
        if ev.mod_revision == last {
            assert_eq!(ev.change, Change::Delete);
        }
        seen.push(ev.mod_revision);
    }
    assert_eq!(seen, written[5..], "every change once, in order");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(w.try_next().is_none(), "nothing repeated");
}

#[tokio::test]
async fn one_member_of_three_dying_changes_nothing_visible() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = start().await;
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    let r1 = s.put("names/web", b"id1", Expect::Absent).await.unwrap();
    for victim in [0, 1, 2] {
        cluster.kill(victim);
        let t = Instant::now();
        // Reads, conditional writes, transactions and lists all answer as before.
        let got = s.get("names/web").await.unwrap().unwrap();
        assert_eq!(got.value, b"id1");
        let r = s
            .put(&format!("vms/{victim}"), b"{}", Expect::Absent)
            .await
            .unwrap();
        assert!(r > r1);
        assert!(matches!(
            s.put("names/web", b"x", Expect::Absent).await,
            Err(StoreError::Conflict { ref key, found: Some(f), .. }) if key == "names/web" && f == r1
        ));
        assert_eq!(s.list("vms/").await.unwrap().len(), victim + 1);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "member {victim} down: {:?}",
            t.elapsed()
        );
        cluster.restart(victim);
        cluster.wait_healthy(Duration::from_secs(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_down_is_unavailable_within_the_deadline_naming_the_endpoints() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = start().await;
    let endpoints = cluster.endpoints();
    let s = EtcdStore::connect(&endpoints, options(Duration::from_secs(2)))
        .await
        .unwrap();
    s.put("k", b"v", Expect::Any).await.unwrap();
    let mut w = s.watch("", 0).await.unwrap();

    // Two of three down: no quorum, the last member has no leader.
    cluster.kill(0);
    cluster.kill(1);
    let t = Instant::now();
    let e = s.put("k", b"w", Expect::Any).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "no quorum: {:?}",
        t.elapsed()
    );
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");

    cluster.kill_all();
    for op in ["get", "list", "txn", "watch", "lease", "revision"] {
        let t = Instant::now();
        let e = match op {
            "get" => s.get("k").await.err(),
            "list" => s.list("").await.err(),
            "txn" => s.put("k", b"x", Expect::Any).await.err(),
            "watch" => s.watch("", 0).await.err(),
            "lease" => s.grant_lease(Duration::from_secs(5)).await.err(),
            _ => s.revision().await.err(),
        }
        .unwrap_or_else(|| panic!("{op} with every member down"));
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{op}: {:?}",
            t.elapsed()
        );
        match &e {
            StoreError::Unavailable {
                endpoints: named, ..
            } => {
                for ep in &endpoints {
                    assert!(named.contains(ep.as_str()), "{op}: {named}");
                }
            }
            other => panic!("{op}: {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains(&endpoints[2]), "{text}");
    }
    let t = Instant::now();
    assert!(matches!(
        EtcdStore::connect(&endpoints, options(Duration::from_secs(2))).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "connect: {:?}",
        t.elapsed()
    );

    // Back up: the old watch goes on. The write refused without quorum had an unknown
    // outcome: if the member it reached was the leader, its log holds it and the cluster
    // commits it once back, so the watch may see it before the next write.
    for i in 0..3 {
        cluster.restart(i);
    }
    let t = Instant::now();
    cluster.wait_healthy(Duration::from_secs(20));
    eprintln!("healthy again after {:?}", t.elapsed());
    let r = s.put("k", b"again", Expect::Any).await.unwrap();
    eprintln!("written after {:?}", t.elapsed());
    let mut ev = next(&mut w).await;
    if ev.mod_revision != r {
        assert_eq!(ev.change, Change::Put(b"w".to_vec()), "{ev:?}");
        ev = next(&mut w).await;
    }
    assert_eq!((ev.key.as_str(), ev.mod_revision), ("k", r));
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"again");
    eprintln!("watched after {:?}", t.elapsed());
}

#[tokio::test]
async fn a_watch_from_before_a_compaction_is_compacted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = start().await;
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            s.put("k", format!("{i}").as_bytes(), Expect::Any)
                .await
                .unwrap(),
        );
    }
    s.compact(revs[3]).await.unwrap();
    let e = s.watch("k", revs[1]).await.err().expect("compacted");
    match e {
        StoreError::Compacted { requested, oldest } => {
            assert_eq!(requested, revs[1]);
            assert_eq!(
                oldest,
                revs[3] - 1,
                "the oldest point a watch may resume from"
            );
        }
        other => panic!("{other:?}"),
    }
    // From the oldest kept point on, it works and replays what is kept.
    let mut w = s.watch("k", revs[3] - 1).await.unwrap();
    assert_eq!(next(&mut w).await.mod_revision, revs[3]);
    assert_eq!(next(&mut w).await.mod_revision, revs[4]);
    // A watch from a revision not reached yet is fine.
    let mut ahead = s.watch("k", revs[4] + 1).await.unwrap();
    s.put("k", b"5", Expect::Any).await.unwrap();
    let r = s.put("k", b"6", Expect::Any).await.unwrap();
    assert_eq!(next(&mut ahead).await.mod_revision, r);
}

#[tokio::test]
async fn leased_records_vanish_when_the_lease_is_not_renewed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = start().await;
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
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
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.keep_alive(lease).await.unwrap();
    }
    assert!(s.get("hosts/a/alive").await.unwrap().is_some(), "renewed");
    let t = Instant::now();
    let ev = next(&mut w).await;
    assert_eq!(ev.change, Change::Delete);
    assert!(
        t.elapsed() >= Duration::from_millis(1500) && t.elapsed() < Duration::from_secs(4),
        "expired after about the TTL: {:?}",
        t.elapsed()
    );
    assert!(s.get("hosts/a/alive").await.unwrap().is_none());
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
        Err(StoreError::LeaseNotFound(l)) if l == lease
    ));
    // Revoking an unknown lease is not an error (as for the other backends).
    s.revoke(LeaseId(lease.0 + 1_000_000)).await.unwrap();
}

/// Index of the current leader among the cluster's endpoints.
async fn leader(cluster: &EtcdCluster) -> usize {
    let eps = cluster.endpoints();
    let mut c = etcd_client::Client::connect([eps[0].as_str()], None)
        .await
        .unwrap();
    let id = c.status().await.unwrap().leader();
    let list = c.member_list().await.unwrap();
    let m = list.members().iter().find(|m| m.id() == id).unwrap();
    eps.iter()
        .position(|e| m.client_urls().iter().any(|u| u == e))
        .unwrap()
}

#[tokio::test]
async fn the_leader_dying_under_a_follower_delays_writes_by_an_election_only() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = start().await;
    let l = leader(&cluster).await;
    let follower = (l + 1) % 3;
    // The store talks to a follower first.
    let mut eps = cluster.endpoints();
    eps.swap(0, follower);
    let s = EtcdStore::connect(&eps, options(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut w = s.watch("vms/", 0).await.unwrap();
    let r0 = s.put("vms/a", b"0", Expect::Absent).await.unwrap();
    cluster.kill(l);
    let t = Instant::now();
    let r1 = s.put("vms/a", b"1", Expect::Revision(r0)).await.unwrap();
    let took = t.elapsed();
    let r2 = s.put("vms/a", b"2", Expect::Revision(r1)).await.unwrap();
    assert_eq!(s.get("vms/a").await.unwrap().unwrap().value, b"2");
    assert!(
        took < Duration::from_secs(3),
        "write across the election: {took:?}"
    );
    for r in [r0, r1, r2] {
        assert_eq!(next(&mut w).await.mod_revision, r);
    }
    eprintln!("write across a leader election took {took:?}");
}

#[tokio::test]
async fn a_frozen_member_is_left_for_another_by_calls_and_by_a_watch() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = start().await;
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    // Member 0 answers first, so it holds the watch; then it stops answering without closing
    // its sockets (SIGSTOP): only deadlines and HTTP/2 keep-alive pings can tell.
    let mut w = s.watch("vms/", 0).await.unwrap();
    let r0 = s.put("vms/a", b"0", Expect::Absent).await.unwrap();
    assert_eq!(next(&mut w).await.mod_revision, r0);
    cluster.freeze(0);
    let t = Instant::now();
    let r1 = s.put("vms/a", b"1", Expect::Revision(r0)).await.unwrap();
    let first = t.elapsed();
    let r2 = s.put("vms/b", b"2", Expect::Absent).await.unwrap();
    assert_eq!(s.list("vms/").await.unwrap().len(), 2);
    assert!(first < Duration::from_secs(5), "first write: {first:?}");
    assert_eq!(next(&mut w).await.mod_revision, r1);
    assert_eq!(next(&mut w).await.mod_revision, r2);
    eprintln!(
        "frozen member: first write {first:?}, watch moved on after {:?}",
        t.elapsed()
    );
    cluster.thaw(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.try_next().is_none(), "nothing repeated");
}

#[tokio::test]
async fn a_list_longer_than_a_page_comes_whole_in_key_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = start().await;
    let s = EtcdStore::connect(&cluster.endpoints(), options(Duration::from_secs(5)))
        .await
        .unwrap();
    let n = 2017; // the backend reads 1000 keys a page
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        s.txn(
            chunk
                .iter()
                .map(|i| TxnOp::put(format!("vms/{i:05}"), b"{}".to_vec(), Expect::Absent))
                .collect(),
        )
        .await
        .unwrap();
    }
    s.put("vmsx", b"", Expect::Any).await.unwrap();
    let keys: Vec<String> = s
        .list("vms/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("vms/{i:05}")).collect();
    assert_eq!(keys, want);
    // The whole key space, as the empty prefix: the same plus "vmsx", and no marker keys.
    assert_eq!(s.list("").await.unwrap().len(), n + 1);
}
