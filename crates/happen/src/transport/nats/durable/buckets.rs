//! The key-value buckets durable delivery keeps its records in.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::{answers, unavailable};
use crate::error::Result;

/// The bucket of kept answers: their time, and a bound on their bytes.
pub(super) async fn answers_bucket(
    js: &jetstream::Context,
    part: &str,
    replicas: usize,
) -> Result<kv::Store> {
    let name = format!("{part}_answers");
    if let Ok(store) = js.get_key_value(name.clone()).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        max_age: answers::KEEP_FOR,
        max_bytes: answers::MAX_BYTES,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable(&format!("cannot create the bucket {name}"), e))
}

pub(super) async fn bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name.clone()).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable(&format!("cannot create the bucket {name}"), e))
}

/// Makes the bucket `store` keep its records for at least `max_age`: one
/// made by an earlier version keeps them shorter (the completion records
/// were kept for one duplicate window, now two). Best effort: a bucket
/// that cannot be changed (permissions) is logged and used as it is.
pub(super) async fn keep_at_least(js: &jetstream::Context, store: &kv::Store, max_age: Duration) {
    let Ok(status) = store.status().await else {
        return;
    };
    let mut config = status.info.config.clone();
    if config.max_age.is_zero() || config.max_age >= max_age {
        return;
    }
    config.max_age = max_age;
    if let Err(error) = js.update_stream(config).await {
        tracing::warn!(bucket = status.bucket, %error, "cannot keep the bucket's records longer");
    }
}
