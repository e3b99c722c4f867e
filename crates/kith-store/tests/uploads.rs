//! Upload records (XEP-0363 slots and stored files) on SQLite and, when
//! `KITH_TEST_PG_URL` is set, on PostgreSQL (the harness of `tests/store.rs`).

use kith_store::{NewUpload, UploadCreated, UploadState};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    slot_lifecycle_allows_one_put,
    quota_counts_every_state,
    sweep_finds_expired_stale_and_orphaned,
);

fn slot(id: &str, owner: &str, size: i64, slot_expires_micros: i64) -> NewUpload {
    NewUpload {
        id: id.to_owned(),
        owner: owner.to_owned(),
        filename: "photo.jpg".to_owned(),
        content_type: "image/jpeg".to_owned(),
        size,
        token_hash: format!("hash-{id}"),
        created_micros: 1_000,
        slot_expires_micros,
    }
}

async fn slot_lifecycle_allows_one_put(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let new = slot("a1", "alice", 10, 5_000);
    assert_eq!(
        s.upload_create(&new, 100).await.unwrap(),
        UploadCreated::Created
    );
    let got = s.upload_get("a1").await.unwrap().expect("stored");
    assert_eq!(got.state, UploadState::Slot);
    assert_eq!((got.size, got.token_hash.as_str()), (10, "hash-a1"));
    assert_eq!(got.expires_micros, None);

    assert!(!s.upload_begin("a1", 5_000).await.unwrap(), "expired slot");
    assert!(s.upload_begin("a1", 4_999).await.unwrap());
    assert!(!s.upload_begin("a1", 4_999).await.unwrap(), "second PUT");
    assert!(s.upload_finish("a1", 9_000).await.unwrap());
    assert!(!s.upload_finish("a1", 9_000).await.unwrap(), "only once");
    s.upload_set_meta("a1", "{\"width\":1}").await.unwrap();
    let got = s.upload_get("a1").await.unwrap().expect("stored");
    assert_eq!(got.state, UploadState::Stored);
    assert_eq!(got.expires_micros, Some(9_000));
    assert_eq!(got.meta.as_deref(), Some("{\"width\":1}"));
    assert_eq!(s.uploads_of("alice").await.unwrap(), vec!["a1".to_owned()]);

    assert!(s.upload_delete("a1").await.unwrap());
    assert!(!s.upload_delete("a1").await.unwrap());
    assert!(s.upload_get("a1").await.unwrap().is_none());
    assert!(!s.upload_begin("nope", 0).await.unwrap());
}

async fn quota_counts_every_state(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    s.upload_create(&slot("a1", "alice", 60, 5_000), 100)
        .await
        .unwrap();
    assert_eq!(
        s.upload_create(&slot("a2", "alice", 41, 5_000), 100)
            .await
            .unwrap(),
        UploadCreated::OverQuota { used: 60 }
    );
    assert_eq!(
        s.upload_create(&slot("a3", "alice", 40, 5_000), 100)
            .await
            .unwrap(),
        UploadCreated::Created,
        "exactly the quota fits"
    );
    assert_eq!(
        s.upload_create(&slot("b1", "bob", 100, 5_000), 100)
            .await
            .unwrap(),
        UploadCreated::Created,
        "quotas are per owner"
    );
    assert!(s.upload_get("a2").await.unwrap().is_none());
    // once alice's slots (valid until 5000) expire, they stop counting
    let mut later = slot("a4", "alice", 100, 9_000);
    later.created_micros = 5_000;
    assert_eq!(
        s.upload_create(&later, 100).await.unwrap(),
        UploadCreated::Created
    );
}

async fn sweep_finds_expired_stale_and_orphaned(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    // unused slot, expires at 5000
    s.upload_create(&slot("slot", "alice", 1, 5_000), 100)
        .await
        .unwrap();
    // stored file, expires at 8000
    s.upload_create(&slot("file", "alice", 1, 5_000), 100)
        .await
        .unwrap();
    assert!(s.upload_begin("file", 2_000).await.unwrap());
    assert!(s.upload_finish("file", 8_000).await.unwrap());
    // a PUT that never finished (created at 1000)
    s.upload_create(&slot("stuck", "alice", 1, 5_000), 100)
        .await
        .unwrap();
    assert!(s.upload_begin("stuck", 2_000).await.unwrap());
    // bob's file, then bob's account goes
    s.upload_create(&slot("orphan", "bob", 1, 50_000), 100)
        .await
        .unwrap();

    assert!(s.uploads_to_sweep(4_000, 0, 100).await.unwrap().is_empty());
    s.delete_user("bob").await.unwrap();
    assert_eq!(
        s.uploads_to_sweep(4_000, 0, 100).await.unwrap(),
        vec!["orphan".to_owned()]
    );
    assert_eq!(
        s.uploads_to_sweep(6_000, 0, 100).await.unwrap(),
        vec!["orphan".to_owned(), "slot".to_owned()]
    );
    assert_eq!(
        s.uploads_to_sweep(9_000, 1_001, 100).await.unwrap(),
        vec![
            "file".to_owned(),
            "orphan".to_owned(),
            "slot".to_owned(),
            "stuck".to_owned()
        ]
    );
    assert_eq!(s.uploads_to_sweep(9_000, 1_001, 2).await.unwrap().len(), 2);
}
