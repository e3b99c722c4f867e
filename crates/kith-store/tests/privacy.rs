//! Privacy settings, on SQLite always and on PostgreSQL when `KITH_TEST_PG_URL`
//! names an admin URL (the harness of `tests/store.rs`).

use kith_store::{PrivacySettings, StoreError};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    settings_round_trip_and_go_with_the_account,
    rooms_of_a_member,
);

fn settings(last_seen: &str, read_receipts: bool) -> PrivacySettings {
    PrivacySettings {
        last_seen: last_seen.to_owned(),
        profile_photo: "contacts".to_owned(),
        about: "nobody".to_owned(),
        read_receipts,
    }
}

async fn settings_round_trip_and_go_with_the_account(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.privacy_settings("alice").await.unwrap(), None);
    s.set_privacy_settings("alice", &settings("nobody", false))
        .await
        .unwrap();
    assert_eq!(
        s.privacy_settings("alice").await.unwrap(),
        Some(settings("nobody", false))
    );
    s.set_privacy_settings("alice", &settings("everyone", true))
        .await
        .unwrap();
    assert_eq!(
        s.privacy_settings("alice").await.unwrap(),
        Some(settings("everyone", true))
    );
    assert!(matches!(
        s.set_privacy_settings("nobody-here", &settings("nobody", true))
            .await,
        Err(StoreError::NoSuchUser(_))
    ));
    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.privacy_settings("alice").await.unwrap(), None);
}

async fn rooms_of_a_member(db: TestDb) {
    let s = db.open().await;
    let none: Vec<String> = Vec::new();
    assert_eq!(
        s.muc_rooms_of_member("alice@localhost").await.unwrap(),
        none
    );
    for room in ["b@groups.localhost", "a@groups.localhost"] {
        s.muc_create_room(room, "", "alice@localhost", 1)
            .await
            .unwrap();
    }
    s.muc_create_room("c@groups.localhost", "", "bob@localhost", 1)
        .await
        .unwrap();
    assert_eq!(
        s.muc_rooms_of_member("alice@localhost").await.unwrap(),
        vec!["a@groups.localhost", "b@groups.localhost"]
    );
}
