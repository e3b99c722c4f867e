//! XEP-0484 FAST tokens, on SQLite always and on PostgreSQL when
//! `KITH_TEST_PG_URL` names an admin URL (the harness of `tests/store.rs`).

use kith_store::{DeviceCredential, NewFastToken, StoreError};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    a_new_token_waits_beside_the_current_one_until_used,
    tokens_go_with_the_password_the_device_and_the_account,
    an_account_keeps_a_bounded_number_of_clients,
    tokens_past_their_expiry_are_swept,
);

fn token<'a>(agent: &'a str, token: &'a str, at: i64) -> NewFastToken<'a> {
    NewFastToken {
        owner: "alice",
        agent,
        device: None,
        mechanism: "HT-SHA-256-NONE",
        account_key: "k1",
        token,
        expires_micros: at + 1_000,
        issued_micros: at,
        signed_in_micros: at,
    }
}

async fn a_new_token_waits_beside_the_current_one_until_used(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.fast_tokens("alice", "phone").await.unwrap(), None);
    s.issue_fast_token(&token("phone", "t1", 10)).await.unwrap();
    s.promote_fast_token("alice", "phone", "t1").await.unwrap();
    // Issued to a login with t1: the chain still starts at the password login.
    s.issue_fast_token(&NewFastToken {
        signed_in_micros: 10,
        ..token("phone", "t2", 20)
    })
    .await
    .unwrap();
    let tokens = s.fast_tokens("alice", "phone").await.unwrap().unwrap();
    // XEP-0484 §3.5: the token in use stays until the new one is used.
    assert_eq!((tokens.current.as_str(), tokens.new.as_str()), ("t1", "t2"));
    assert_eq!((tokens.issued_micros, tokens.signed_in_micros), (20, 10));
    s.promote_fast_token("alice", "phone", "t2").await.unwrap();
    let tokens = s.fast_tokens("alice", "phone").await.unwrap().unwrap();
    assert_eq!((tokens.current.as_str(), tokens.new.as_str()), ("t2", ""));
    assert_eq!(tokens.current_expires_micros, 1_020);
    // Promoting a token that is not the new one changes nothing.
    s.promote_fast_token("alice", "phone", "t1").await.unwrap();
    assert_eq!(
        s.fast_tokens("alice", "phone")
            .await
            .unwrap()
            .unwrap()
            .current,
        "t2"
    );
    // A login under another password: the current token is stale at once.
    s.issue_fast_token(&NewFastToken {
        account_key: "k2",
        ..token("phone", "t3", 30)
    })
    .await
    .unwrap();
    let tokens = s.fast_tokens("alice", "phone").await.unwrap().unwrap();
    assert_eq!((tokens.current.as_str(), tokens.new.as_str()), ("", "t3"));
    assert_eq!(tokens.account_key, "k2");
    assert!(s.revoke_fast_tokens("alice", "phone").await.unwrap());
    assert!(!s.revoke_fast_tokens("alice", "phone").await.unwrap());
    assert!(matches!(
        s.issue_fast_token(&NewFastToken {
            owner: "nobody",
            ..token("phone", "t", 1)
        })
        .await,
        Err(StoreError::NoSuchUser(_))
    ));
}

async fn tokens_go_with_the_password_the_device_and_the_account(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.issue_fast_token(&token("laptop", "t1", 10))
        .await
        .unwrap();
    s.set_credentials("alice", &creds(2)).await.unwrap();
    assert_eq!(s.fast_tokens("alice", "laptop").await.unwrap(), None);

    // A token got through a device credential goes with the credential; the
    // password's stay.
    s.add_device_credential(&DeviceCredential {
        id: "dev".to_owned(),
        owner: "alice".to_owned(),
        name: "tablet".to_owned(),
        token_hash: vec![1; 32],
        sha1_stored_key: vec![2; 20],
        sha1_server_key: vec![3; 20],
        sha256_stored_key: vec![4; 32],
        sha256_server_key: vec![5; 32],
        created_micros: 1,
        last_used_micros: 1,
    })
    .await
    .unwrap();
    s.issue_fast_token(&NewFastToken {
        device: Some("dev"),
        ..token("tablet", "t3", 30)
    })
    .await
    .unwrap();
    s.issue_fast_token(&token("laptop", "t2", 20))
        .await
        .unwrap();
    assert_eq!(
        s.fast_tokens("alice", "tablet")
            .await
            .unwrap()
            .unwrap()
            .device
            .as_deref(),
        Some("dev")
    );
    assert!(
        s.revoke_device_credential("alice", "dev", "kith-device:dev")
            .await
            .unwrap()
    );
    assert_eq!(s.fast_tokens("alice", "tablet").await.unwrap(), None);
    assert!(s.fast_tokens("alice", "laptop").await.unwrap().is_some());
    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.fast_tokens("alice", "laptop").await.unwrap(), None);
}

async fn an_account_keeps_a_bounded_number_of_clients(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let agents: Vec<String> = (0..40).map(|i| format!("agent-{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        s.issue_fast_token(&token(agent, "t", i as i64))
            .await
            .unwrap();
    }
    // The 32 most recently issued stay; the oldest went.
    assert_eq!(s.fast_tokens("alice", "agent-0").await.unwrap(), None);
    assert_eq!(s.fast_tokens("alice", "agent-7").await.unwrap(), None);
    assert!(s.fast_tokens("alice", "agent-8").await.unwrap().is_some());
    assert!(s.fast_tokens("alice", "agent-39").await.unwrap().is_some());
}

async fn tokens_past_their_expiry_are_swept(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    // Expiries (issued + 1,000): "old" 1,010; "used" 1,020, promoted, with a
    // new token after it expiring 1,030; "fresh" 1,040 in the new slot only.
    s.issue_fast_token(&token("old", "t1", 10)).await.unwrap();
    s.issue_fast_token(&token("used", "t2", 20)).await.unwrap();
    s.promote_fast_token("alice", "used", "t2").await.unwrap();
    s.issue_fast_token(&token("used", "t3", 30)).await.unwrap();
    s.issue_fast_token(&token("fresh", "t4", 40)).await.unwrap();
    assert_eq!(s.delete_expired_fast_tokens(1_009).await.unwrap(), 0);
    assert_eq!(s.delete_expired_fast_tokens(1_025).await.unwrap(), 1);
    assert_eq!(s.fast_tokens("alice", "old").await.unwrap(), None);
    // One slot still valid keeps the row: its new token, then its current one.
    let used = s.fast_tokens("alice", "used").await.unwrap().unwrap();
    assert_eq!((used.current.as_str(), used.new.as_str()), ("t2", "t3"));
    assert!(s.fast_tokens("alice", "fresh").await.unwrap().is_some());
    assert_eq!(s.delete_expired_fast_tokens(1_040).await.unwrap(), 2);
    assert_eq!(s.fast_tokens("alice", "used").await.unwrap(), None);
    assert_eq!(s.fast_tokens("alice", "fresh").await.unwrap(), None);
}
