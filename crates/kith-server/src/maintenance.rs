//! Periodic upkeep: forget devices unused for too long, apply the archive
//! retention policy (`[delivery]` in the configuration), and delete XEP-0484
//! FAST tokens long past their expiry.

use std::sync::Arc;
use std::time::Duration;

use crate::Server;
use crate::config::Retention;

/// How often upkeep runs.
const INTERVAL: Duration = Duration::from_secs(3600);
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

pub(crate) async fn run(server: Arc<Server>) {
    // A first pass soon after start-up, then hourly.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        ticker.tick().await;
        once(&server).await;
    }
}

/// One round of upkeep.
pub(crate) async fn once(server: &Server) {
    let delivery = &server.config.delivery;
    let now = crate::now_micros();
    let idle_since = now - i64::from(delivery.forget_devices_after_days) * MICROS_PER_DAY;
    match server.store.forget_idle_devices(idle_since).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(devices = n, "forgot idle devices"),
        Err(error) => tracing::warn!(%error, "forgetting idle devices"),
    }
    let deleted = match server.config.retention() {
        Retention::Forever => Ok(0),
        Retention::Days => {
            let before = now - i64::from(delivery.retention_days) * MICROS_PER_DAY;
            server.store.inbox_delete_before(before).await
        }
        Retention::UntilDelivered => server.store.inbox_delete_delivered().await,
    };
    match deleted {
        Ok(0) => {}
        Ok(n) => tracing::info!(messages = n, "retention removed messages"),
        Err(error) => tracing::warn!(%error, "applying retention"),
    }
    // A client back soon after its token expired hears "credentials-expired"
    // (XEP-0484 §4.2) rather than that the token is unknown: rows stay for as
    // long again as a token lasts.
    let lifetime = crate::secs_to_micros(server.config.limits.fast_token_secs);
    match server
        .store
        .delete_expired_fast_tokens(now.saturating_sub(lifetime))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(clients = n, "deleted expired FAST tokens"),
        Err(error) => tracing::warn!(%error, "deleting expired FAST tokens"),
    }
}
