//! Phone accounts, device credentials, SMS codes, link requests and contact
//! discovery, on SQLite always and on PostgreSQL when `KITH_TEST_PG_URL` is set.

use kith_store::{DeviceCredential, LinkRequest, PhoneClaim, Store, VerificationCode};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    phone_accounts_are_claimed_once,
    credentials_list_and_revoke,
    codes_are_single_use_and_lock_after_failures,
    link_requests_are_approved_and_taken_once,
    discovery_quota_and_records,
    account_deletion_removes_phone_data,
);

fn credential(id: &str, owner: &str, created: i64) -> DeviceCredential {
    DeviceCredential {
        id: id.to_owned(),
        owner: owner.to_owned(),
        name: format!("device {id}"),
        token_hash: vec![1; 32],
        sha1_stored_key: vec![2; 20],
        sha1_server_key: vec![3; 20],
        sha256_stored_key: vec![4; 32],
        sha256_server_key: vec![5; 32],
        created_micros: created,
        last_used_micros: created,
    }
}

async fn phone_account(s: &Store, phone: &str, username: &str) {
    assert_eq!(
        s.claim_phone_account(phone, username, &creds(1))
            .await
            .unwrap(),
        PhoneClaim::Created
    );
}

async fn phone_accounts_are_claimed_once(db: TestDb) {
    let s = db.open().await;
    phone_account(&s, "+12015550123", "12015550123").await;
    assert_eq!(
        s.claim_phone_account("+12015550123", "12015550123", &creds(2))
            .await
            .unwrap(),
        PhoneClaim::Existing
    );
    // The first secrets stay (device credentials depend on their salts).
    assert_eq!(s.credentials("12015550123").await.unwrap(), Some(creds(1)));
    s.create_user("442079460958", &creds(3)).await.unwrap();
    assert_eq!(
        s.claim_phone_account("+442079460958", "442079460958", &creds(3))
            .await
            .unwrap(),
        PhoneClaim::UsernameTaken
    );
    assert_eq!(
        s.phone_owner("+12015550123").await.unwrap().as_deref(),
        Some("12015550123")
    );
    assert_eq!(
        s.phone_of("12015550123").await.unwrap().as_deref(),
        Some("+12015550123")
    );
    assert_eq!(s.phone_owner("+442079460958").await.unwrap(), None);
    let found = s
        .phone_accounts(&[
            "+442079460958".to_owned(),
            "+12015550123".to_owned(),
            "+12015550123".to_owned(),
        ])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![("+12015550123".to_owned(), "12015550123".to_owned())]
    );
}

async fn credentials_list_and_revoke(db: TestDb) {
    let s = db.open().await;
    phone_account(&s, "+12015550123", "12015550123").await;
    s.add_device_credential(&credential("b", "12015550123", 20))
        .await
        .unwrap();
    s.add_device_credential(&credential("a", "12015550123", 10))
        .await
        .unwrap();
    assert!(
        s.add_device_credential(&credential("c", "nobody", 1))
            .await
            .is_err()
    );
    let listed = s.device_credentials("12015550123").await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        s.device_credential("a").await.unwrap(),
        Some(credential("a", "12015550123", 10))
    );
    s.touch_device_credential("a", 99).await.unwrap();
    assert_eq!(
        s.device_credential("a")
            .await
            .unwrap()
            .unwrap()
            .last_used_micros,
        99
    );
    // The credential's inbox-log device goes with it.
    s.device_attach("12015550123", "kith-device:a", 1)
        .await
        .unwrap();
    assert!(
        !s.revoke_device_credential("other", "a", "kith-device:a")
            .await
            .unwrap()
    );
    assert!(
        s.revoke_device_credential("12015550123", "a", "kith-device:a")
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_device_credential("12015550123", "a", "kith-device:a")
            .await
            .unwrap()
    );
    assert_eq!(s.device_credential("a").await.unwrap(), None);
    assert_eq!(
        s.device_cursor("12015550123", "kith-device:a")
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.device_credentials("12015550123").await.unwrap().len(), 1);
}

async fn codes_are_single_use_and_lock_after_failures(db: TestDb) {
    let s = db.open().await;
    let phone = "+12015550123";
    let code = VerificationCode {
        code_hash: vec![7; 32],
        expires_micros: 1_000,
        failures: 0,
        locked_until_micros: 0,
    };
    s.put_verification_code(phone, &code).await.unwrap();
    assert_eq!(
        s.verification_code(phone).await.unwrap(),
        Some(code.clone())
    );
    // Wrong hash, expired: not consumed.
    assert!(
        !s.consume_verification_code(phone, &[8; 32], 10)
            .await
            .unwrap()
    );
    assert!(
        !s.consume_verification_code(phone, &[7; 32], 1_000)
            .await
            .unwrap()
    );
    assert!(
        s.consume_verification_code(phone, &[7; 32], 999)
            .await
            .unwrap()
    );
    assert!(
        !s.consume_verification_code(phone, &[7; 32], 999)
            .await
            .unwrap()
    );
    assert_eq!(s.verification_code(phone).await.unwrap(), None);
    assert_eq!(s.verification_failed(phone, 3, 5_000).await.unwrap(), 0);

    s.put_verification_code(phone, &code).await.unwrap();
    assert_eq!(s.verification_failed(phone, 3, 5_000).await.unwrap(), 1);
    assert_eq!(s.verification_failed(phone, 3, 5_000).await.unwrap(), 2);
    assert_eq!(s.verification_failed(phone, 3, 5_000).await.unwrap(), 3);
    let locked = s.verification_code(phone).await.unwrap().unwrap();
    assert_eq!(locked.locked_until_micros, 5_000);
    assert!(locked.code_hash.is_empty());
    // The right code no longer works, even before it would expire.
    assert!(
        !s.consume_verification_code(phone, &[7; 32], 10)
            .await
            .unwrap()
    );
}

async fn link_requests_are_approved_and_taken_once(db: TestDb) {
    let s = db.open().await;
    phone_account(&s, "+12015550123", "12015550123").await;
    let request = LinkRequest {
        id: "L1".to_owned(),
        code_hash: vec![1; 32],
        poll_hash: vec![2; 32],
        device_name: "laptop".to_owned(),
        expires_micros: 1_000,
        approved_owner: None,
    };
    s.create_link_request(&request, 0).await.unwrap();
    assert_eq!(s.link_request("L1").await.unwrap(), Some(request.clone()));
    // Expired or unknown codes can't be approved.
    assert_eq!(
        s.approve_link_request(&[1; 32], "12015550123", 1_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.approve_link_request(&[9; 32], "12015550123", 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.approve_link_request(&[1; 32], "12015550123", 1)
            .await
            .unwrap()
            .as_deref(),
        Some("laptop")
    );
    // Approved once only.
    assert_eq!(
        s.approve_link_request(&[1; 32], "12015550123", 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.link_request("L1")
            .await
            .unwrap()
            .unwrap()
            .approved_owner
            .as_deref(),
        Some("12015550123")
    );
    assert!(s.delete_link_request("L1").await.unwrap());
    assert!(!s.delete_link_request("L1").await.unwrap());
    // Creating a request sweeps expired ones.
    s.create_link_request(&request, 0).await.unwrap();
    let later = LinkRequest {
        id: "L2".to_owned(),
        code_hash: vec![3; 32],
        expires_micros: 10_000,
        ..request
    };
    s.create_link_request(&later, 5_000).await.unwrap();
    assert_eq!(s.link_request("L1").await.unwrap(), None);
}

async fn discovery_quota_and_records(db: TestDb) {
    let s = db.open().await;
    phone_account(&s, "+12015550123", "12015550123").await;
    assert!(
        s.take_discovery_quota("12015550123", 7, 6, 10)
            .await
            .unwrap()
    );
    assert!(
        !s.take_discovery_quota("12015550123", 7, 5, 10)
            .await
            .unwrap()
    );
    assert!(
        s.take_discovery_quota("12015550123", 7, 4, 10)
            .await
            .unwrap()
    );
    assert!(
        !s.take_discovery_quota("12015550123", 7, 1, 10)
            .await
            .unwrap()
    );
    // A new day starts afresh.
    assert!(
        s.take_discovery_quota("12015550123", 8, 10, 10)
            .await
            .unwrap()
    );
    assert!(s.take_discovery_quota("nobody", 8, 1, 10).await.is_err());

    let phones = ["+442079460958".to_owned(), "+4930901820".to_owned()];
    s.record_discovered("12015550123", &phones).await.unwrap();
    s.record_discovered("12015550123", &phones[..1])
        .await
        .unwrap();
    assert!(
        s.has_discovered("12015550123", "+4930901820")
            .await
            .unwrap()
    );
    assert!(
        !s.has_discovered("12015550123", "+12015550123")
            .await
            .unwrap()
    );
    assert!(!s.has_discovered("other", "+4930901820").await.unwrap());
}

async fn account_deletion_removes_phone_data(db: TestDb) {
    let s = db.open().await;
    phone_account(&s, "+12015550123", "12015550123").await;
    s.add_device_credential(&credential("a", "12015550123", 1))
        .await
        .unwrap();
    s.record_discovered("12015550123", &["+4930901820".to_owned()])
        .await
        .unwrap();
    s.take_discovery_quota("12015550123", 1, 1, 10)
        .await
        .unwrap();
    assert!(s.delete_user("12015550123").await.unwrap());
    assert_eq!(s.phone_owner("+12015550123").await.unwrap(), None);
    assert_eq!(s.device_credential("a").await.unwrap(), None);
    assert!(
        !s.has_discovered("12015550123", "+4930901820")
            .await
            .unwrap()
    );
    // The number can start again from scratch.
    phone_account(&s, "+12015550123", "12015550123").await;
}
