//! The journal's claim rules, the worker registry, locks and leak
//! sightings.

use super::*;

pub(super) fn handle(id: &str) -> RunnerHandle {
    RunnerHandle::new("local_mock", id, "e", &serde_json::json!({"x": 1})).unwrap()
}

pub(super) fn beat(id: &str) -> WorkerBeat {
    WorkerBeat {
        id: id.into(),
        host: "h".into(),
        pid: 42,
        runners: vec!["local_mock".into()],
        in_flight: 1,
    }
}

pub(super) async fn journal_claims_follow_the_owners_heartbeat(f: Fixture) {
    let s = &f.store;
    assert!(matches!(
        s.journal_claim("k", "a", LONG).await.unwrap(),
        Claim::Fresh
    ));
    s.worker_heartbeat(&beat("a")).await.unwrap();
    let id = s
        .journal_provisioned("k", &handle("h1"), "a")
        .await
        .unwrap();
    // The owner itself reuses it; another worker waits while it beats.
    assert!(matches!(
        s.journal_claim("k", "a", LONG).await.unwrap(),
        Claim::Reuse(e) if e.id == id
    ));
    assert!(matches!(
        s.journal_claim("k", "b", LONG).await.unwrap(),
        Claim::HeldBy { worker } if worker == "a"
    ));
    // A second live handle for one key is refused.
    assert!(matches!(
        s.journal_provisioned("k", &handle("h2"), "b").await,
        Err(StoreError::Exists { .. })
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Silent for longer than stale_after: taken over.
    let Claim::Reuse(entry) = s
        .journal_claim("k", "b", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("not taken over");
    };
    assert_eq!((entry.id, entry.owner.as_str()), (id, "b"));
    assert_eq!(entry.handle.handle_id(), "h1");
    // The reaper takes an entry over only from the owner it saw.
    assert!(!s.journal_take(id, "a", "reaper").await.unwrap());
    assert!(s.journal_take(id, "b", "reaper").await.unwrap());
    // A teardown_failed entry is never overwritten by a later provision.
    s.journal_end(id, JournalState::TeardownFailed, Some("boom"))
        .await
        .unwrap();
    let second = s
        .journal_provisioned("k", &handle("h2"), "c")
        .await
        .unwrap();
    assert_ne!(second, id);
    let open = s.journal_open_entries(LONG).await.unwrap();
    assert_eq!(open.len(), 2);
    let failed = open.iter().find(|e| e.id == id).unwrap();
    assert_eq!(failed.state, JournalState::TeardownFailed);
    assert_eq!(failed.note.as_deref(), Some("boom"));
    s.journal_reap_failed(id, "again").await.unwrap();
    let failed = s.journal_get(id, LONG).await.unwrap().unwrap();
    assert_eq!(failed.reap_attempts, 1);
    s.journal_end(second, JournalState::Released, None)
        .await
        .unwrap();
    s.journal_end(id, JournalState::Released, None)
        .await
        .unwrap();
    assert!(s.journal_open_entries(LONG).await.unwrap().is_empty());
}

pub(super) async fn workers_register_beat_and_are_pruned(f: Fixture) {
    let s = &f.store;
    s.worker_heartbeat(&beat("w1")).await.unwrap();
    s.worker_heartbeat(&beat("w2")).await.unwrap();
    let workers = s.workers(LONG).await.unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers
            .iter()
            .all(|w| w.alive && w.beat.runners == ["local_mock"])
    );
    // w2 holds an open journal entry: pruning keeps it.
    s.journal_provisioned("k", &handle("h"), "w2")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.prune_workers(Duration::ZERO).await.unwrap(), 1);
    let left: Vec<_> = s
        .workers(LONG)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.beat.id)
        .collect();
    assert_eq!(left, vec!["w2".to_owned()]);
    assert!(!s.workers(Duration::ZERO).await.unwrap()[0].alive);
    s.worker_gone("w2").await.unwrap();
    assert!(s.workers(LONG).await.unwrap().is_empty());
}

pub(super) async fn a_lock_has_one_holder_until_it_expires(f: Fixture) {
    let s = &f.store;
    assert!(s.try_lock("reaper", "a", LONG).await.unwrap());
    assert!(!s.try_lock("reaper", "b", LONG).await.unwrap());
    assert!(
        s.try_lock("reaper", "a", LONG).await.unwrap(),
        "the holder renews"
    );
    s.unlock("reaper", "b").await.unwrap();
    assert!(
        !s.try_lock("reaper", "b", LONG).await.unwrap(),
        "only the holder unlocks"
    );
    s.unlock("reaper", "a").await.unwrap();
    assert!(s.try_lock("reaper", "b", Duration::ZERO).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        s.try_lock("reaper", "c", LONG).await.unwrap(),
        "an expired lock is free"
    );
}

pub(super) async fn leak_sightings_remember_the_first_time(f: Fixture) {
    let s = &f.store;
    let ids = vec!["r1".to_owned(), "r2".to_owned()];
    assert!(
        s.leak_sightings("local", &ids, false)
            .await
            .unwrap()
            .is_empty(),
        "a dry run writes nothing"
    );
    let first = s.leak_sightings("local", &ids, true).await.unwrap();
    assert_eq!(first.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = s.leak_sightings("local", &ids[..1], true).await.unwrap();
    assert!(later["r1"] >= Duration::from_millis(250), "{later:?}");
    // r2 was not listed again: forgotten, so it starts over.
    let again = s.leak_sightings("local", &ids, true).await.unwrap();
    assert!(again["r2"] < Duration::from_millis(250), "{again:?}");
    assert!(again["r1"] >= Duration::from_millis(250));
}

/// A lease reads the journal in its own statement: a task whose execution
/// key has no live entry is `journal_clear` (the worker skips its claim);
/// one with a live entry (its last worker died holding a handle) is not,
/// and a released or failed entry does not count. The queue and the store
/// say they are one database.
pub(super) async fn a_lease_tells_whether_the_journal_holds_its_key(f: Fixture) {
    let (q, s) = (&f.queue, &f.store);
    assert!(q.database_id().is_some());
    assert_eq!(q.database_id(), s.database_id());
    for key in ["clear", "held", "ended"] {
        q.enqueue(&task(key)).await.unwrap();
    }
    s.journal_provisioned("held", &handle("h1"), "gone-worker")
        .await
        .unwrap();
    let ended = s
        .journal_provisioned("ended", &handle("h2"), "gone-worker")
        .await
        .unwrap();
    s.journal_end(ended, JournalState::TeardownFailed, Some("left"))
        .await
        .unwrap();
    let leased = q.lease_many("w", LONG, 3).await.unwrap();
    let clear: Vec<(String, bool)> = leased
        .iter()
        .map(|l| (Task::parse(&l.body).unwrap().execution_key, l.journal_clear))
        .collect();
    assert_eq!(
        clear,
        [
            ("clear".to_owned(), true),
            ("held".to_owned(), false),
            ("ended".to_owned(), true)
        ]
    );
}
