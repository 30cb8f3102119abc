//! Plain writes ([`KvWrite`]): a `PUT` of one key, and a delete that tells
//! whether the key existed.

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use worker_core::{KvWrite, MissingPermission, StoreError};

use super::request::{boolean, send};
use super::txn::{denied, txn};
use crate::error::{ProtocolError, ACL_HOLDER};
use crate::ConsulBackend;

#[async_trait]
impl KvWrite for ConsulBackend {
    /// `PUT /v1/kv/<key>`.
    async fn put_key(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        let answer = send(
            &self.inner.http,
            http::Method::PUT,
            &["kv"],
            key,
            &[],
            value.to_vec(),
            |_, _| false,
        )
        .await?;
        if boolean(&answer)? {
            Ok(())
        } else {
            Err(StoreError::protocol(ProtocolError(format!(
                "Consul refused to write {key:?}"
            ))))
        }
    }

    /// A transaction `get` + `delete` of `key`, so that whether the key
    /// existed is known atomically: the `get` of a missing key rolls the
    /// transaction back (`Ok(false)`, nothing to delete).
    async fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        let ops = [
            json!({"KV": {"Verb": "get", "Key": key}}),
            json!({"KV": {"Verb": "delete", "Key": key}}),
        ];
        match txn(&self.inner.http, &ops).await? {
            Ok(_) => Ok(true),
            Err(errors) if errors.iter().any(denied) => {
                Err(StoreError::PermissionDenied(Box::new(MissingPermission {
                    holder: ACL_HOLDER,
                    needs: format!("key read and write on {key:?}"),
                    source: Box::new(ProtocolError(format!(
                        "delete refused: {}",
                        errors
                            .iter()
                            .map(|e| e.what.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                })))
            }
            Err(errors) if !errors.is_empty() && errors.iter().all(|e| e.op_index == 0) => {
                Ok(false)
            }
            Err(errors) => Err(StoreError::protocol(ProtocolError(format!(
                "delete of {key:?} rolled back: {}",
                errors
                    .iter()
                    .map(|e| e.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )))),
        }
    }
}
