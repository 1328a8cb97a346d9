//! Execution records: timeline, attempts, results, batched state
//! changes, history filters and paging.

use super::*;

pub(super) async fn records_keep_the_timeline_attempts_and_result(f: Fixture) {
    use orchestrator_worker::store::{AttemptDetail, RecordedResult, Settlement};
    let (q, s) = (&f.queue, &f.store);
    let t = task("rec");
    q.enqueue(&t).await.unwrap();
    let new = new_execution(&t);
    let at = orchestrator_worker::store::now_ms();
    let state = |state, m: &str| RecordUpdate::State {
        new: new.clone(),
        state,
        at_ms: at,
        attempt: Some(1),
        worker: Some("w".into()),
        message: m.into(),
    };
    let detail = AttemptDetail {
        attempt: 1,
        worker: "w".into(),
        started_ms: at,
        ended_ms: at + 5,
        phases: vec![],
        error: None,
        disposition: "ack".into(),
    };
    s.record(&[
        state(ExecState::Leased, "leased"),
        state(ExecState::Provisioning, "provision"),
        state(ExecState::Running, "run_test"),
        RecordUpdate::CancelRequested {
            key: "rec".into(),
            at_ms: at,
            by: "me".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.cancel_requested(&["rec".into(), "other".into()])
            .await
            .unwrap(),
        vec!["rec".to_owned()]
    );
    s.record(&[RecordUpdate::Settled(Box::new(Settlement {
        new: new.clone(),
        state: ExecState::Passed,
        at_ms: at + 6,
        attempt: Some(detail.clone()),
        result: Some(RecordedResult {
            status: "passed".into(),
            exit_code: Some(0),
            duration_ms: 5,
            counts: None,
            diagnosis: None,
        }),
        artifacts: vec![],
        cases: vec![],
        error: None,
    }))])
    .await
    .unwrap();
    // A late event of the attempt does not reopen a settled record.
    s.record(&[state(ExecState::TearingDown, "late")])
        .await
        .unwrap();
    let r = s.execution("rec").await.unwrap().unwrap();
    assert_eq!(r.state, ExecState::Passed);
    assert_eq!(r.new.correlation_id, "pipeline-7");
    assert_eq!(r.new.payload, "payload-rec");
    assert_eq!(r.attempts, vec![detail]);
    assert_eq!(r.result.as_ref().unwrap().exit_code, Some(0));
    assert!(r.settled_ms.is_some());
    let states: Vec<_> = r.timeline.iter().map(|e| e.state).collect();
    assert_eq!(states.first(), Some(&ExecState::Queued));
    assert!(states.contains(&ExecState::Running) && states.contains(&ExecState::Passed));
    assert!(
        s.cancel_requested(&["rec".into()])
            .await
            .unwrap()
            .is_empty(),
        "settled"
    );
    assert!(s.execution("nope").await.unwrap().is_none());
}

/// What the recorder sends a busy store: several state changes of two
/// executions, one settling in the middle, a late event after it, all in
/// one batch. Every event is kept; each record ends in its last state, and
/// the settled one in its final one.
pub(super) async fn one_batch_of_state_changes_keeps_every_event_and_the_right_state(f: Fixture) {
    use orchestrator_worker::store::Settlement;
    let (q, s) = (&f.queue, &f.store);
    let (a, b) = (task("batch-a"), task("batch-b"));
    q.enqueue(&a).await.unwrap();
    q.enqueue(&b).await.unwrap();
    let at = orchestrator_worker::store::now_ms();
    let state = |t: &Task, state, m: &str| RecordUpdate::State {
        new: new_execution(t),
        state,
        at_ms: at,
        attempt: Some(1),
        worker: Some("w".into()),
        message: m.into(),
    };
    s.record(&[
        state(&a, ExecState::Leased, "a leased"),
        state(&b, ExecState::Leased, "b leased"),
        state(&a, ExecState::Provisioning, "a provision"),
        state(&b, ExecState::Provisioning, "b provision"),
        state(&a, ExecState::Running, "a run"),
        RecordUpdate::Settled(Box::new(Settlement {
            new: new_execution(&a),
            state: ExecState::Passed,
            at_ms: at + 1,
            attempt: None,
            result: None,
            artifacts: vec![],
            cases: vec![],
            error: None,
        })),
        state(&a, ExecState::TearingDown, "a late"),
        state(&b, ExecState::Running, "b run"),
    ])
    .await
    .unwrap();
    let ra = s.execution("batch-a").await.unwrap().unwrap();
    assert_eq!(
        ra.state,
        ExecState::Passed,
        "a settled record keeps its state"
    );
    let messages: Vec<_> = ra.timeline.iter().map(|e| e.message.as_str()).collect();
    for m in ["a leased", "a provision", "a run", "a late"] {
        assert!(messages.contains(&m), "{m} missing from {messages:?}");
    }
    let rb = s.execution("batch-b").await.unwrap().unwrap();
    assert_eq!(rb.state, ExecState::Running, "the last state change wins");
    let states: Vec<_> = rb.timeline.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            ExecState::Queued,
            ExecState::Leased,
            ExecState::Provisioning,
            ExecState::Running
        ]
    );
}

pub(super) async fn history_filters_and_pages(f: Fixture) {
    let (q, s) = (&f.queue, &f.store);
    for i in 0..5 {
        let mut t = task(&format!("h{i}"));
        if i % 2 == 0 {
            t.correlation_id = Some("even".into());
        }
        q.enqueue(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let all = s
        .executions(&HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = all.iter().map(|r| r.new.key.as_str()).collect();
    assert_eq!(keys, ["h4", "h3", "h2", "h1", "h0"], "newest first");
    let even = s
        .executions(&HistoryFilter {
            correlation_id: Some("even".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.len(), 3);
    let page = s
        .executions(&HistoryFilter {
            limit: 2,
            before_ms: Some(all[1].created_ms),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.new.key.as_str()).collect::<Vec<_>>(),
        ["h2", "h1"]
    );
    let queued = s
        .executions(&HistoryFilter {
            state: Some(ExecState::Queued),
            runner: Some("local_mock".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 5);
}

/// A settlement written with its journal end and ack: one transaction on
/// SQLite, all or nothing (a lost lease writes none of it); a store that
/// cannot (PostgreSQL) writes nothing and says so. Through the recorder,
/// the state changes it holds are written with it, and a lost lease still leaves
/// the record written (the caller then acks itself).
pub(super) async fn a_settlement_goes_with_its_journal_end_and_ack(f: Fixture) {
    use orchestrator_worker::recorder::Recorder;
    use orchestrator_worker::store::{JournalEnd, SettleOps, Settlement};
    let (q, s) = (&f.queue, &f.store);
    let settled = |key: &str| {
        RecordUpdate::Settled(Box::new(Settlement {
            new: new_execution(&task(key)),
            state: ExecState::Passed,
            at_ms: orchestrator_worker::store::now_ms(),
            attempt: None,
            result: None,
            artifacts: vec![],
            cases: vec![],
            error: None,
        }))
    };
    let mut leases = Vec::new();
    for key in ["fold", "lost"] {
        q.enqueue(&task(key)).await.unwrap();
        leases.push(q.lease("w", LONG).await.unwrap().unwrap());
    }
    let entry = s
        .journal_provisioned("fold", &handle("h-fold"), "w")
        .await
        .unwrap();
    let ops = |lease: &orchestrator_worker::queue::Lease| SettleOps {
        journal_end: Some(JournalEnd {
            entry,
            state: JournalState::Released,
            note: None,
        }),
        ack: Some((lease.clone(), "{}".into())),
    };
    // A token that is not the lease's any more: nothing is written.
    let mut stale = leases[0].clone();
    stale.token = "stale".into();
    let refused = s.record_settling(&[settled("fold")], &[ops(&stale)]).await;
    let untouched = || async {
        let journal = s.journal_get(entry, LONG).await.unwrap().unwrap();
        let record = s.execution("fold").await.unwrap().unwrap();
        (
            journal.state,
            record.settled_ms.is_none(),
            q.depth().await.unwrap().done,
        )
    };
    if s.settles_with_records() {
        assert!(
            matches!(refused, Err(StoreError::LeaseLost { .. })),
            "{refused:?}"
        );
    } else {
        assert!(matches!(refused, Ok(false)), "{refused:?}");
    }
    assert_eq!(untouched().await, (JournalState::Live, true, 0));
    let made = s
        .record_settling(&[settled("fold")], &[ops(&leases[0])])
        .await
        .unwrap();
    assert_eq!(made, s.settles_with_records());
    if made {
        assert_eq!(untouched().await, (JournalState::Released, false, 1));
    } else {
        assert_eq!(untouched().await, (JournalState::Live, true, 0));
    }
    // Through the recorder: a state change it still holds is written
    // with the settlement, before it. (That it is the same transaction
    // is not visible from here; `record_settling` is one write.)
    let recorder = Recorder::spawn(Arc::clone(s));
    q.enqueue(&task("via")).await.unwrap();
    let via = q.lease("w", LONG).await.unwrap().unwrap();
    recorder
        .push(RecordUpdate::State {
            new: new_execution(&task("via")),
            state: ExecState::Running,
            at_ms: orchestrator_worker::store::now_ms(),
            attempt: Some(1),
            worker: Some("w".into()),
            message: "run_test".into(),
        })
        .await;
    let via_ops = SettleOps {
        journal_end: None,
        ack: Some((via, "{}".into())),
    };
    let answer = recorder.commit_settling(settled("via"), via_ops).await;
    assert_eq!(answer.unwrap(), made);
    let record = s.execution("via").await.unwrap().unwrap();
    assert_eq!(record.state, ExecState::Passed);
    let at = |state| record.timeline.iter().position(|e| e.state == state);
    let (running, passed) = (at(ExecState::Running), at(ExecState::Passed));
    assert!(
        running.is_some() && running < passed,
        "{:?}",
        record.timeline
    );
    let done = if made { 2 } else { 0 };
    assert_eq!(q.depth().await.unwrap().done, done);
    // With a lost lease: the record alone.
    let mut lost = leases[1].clone();
    lost.token = "stale".into();
    let lost_ops = SettleOps {
        journal_end: None,
        ack: Some((lost, "{}".into())),
    };
    let answer = recorder.commit_settling(settled("lost"), lost_ops).await;
    assert!(matches!(answer, Ok(false)), "{answer:?}");
    let record = s.execution("lost").await.unwrap().unwrap();
    assert_eq!(record.state, ExecState::Passed);
    // "lost" is still leased (and "fold" and "via" too where they could
    // not be acked).
    let leased = if made { 1 } else { 3 };
    assert_eq!(q.depth().await.unwrap().leased, leased, "not acked");
}
