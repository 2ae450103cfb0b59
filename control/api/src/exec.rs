//! The exec call's framing, shared by the API server and the node agent: its first
//! message names the command, the rest carry stdin.

use crate::proto::{ExecInput, PodExecRequest};

/// The command an exec call asks for (its first message).
pub async fn first_request(
    input: &mut tonic::Streaming<ExecInput>,
) -> Result<PodExecRequest, tonic::Status> {
    input
        .message()
        .await?
        .and_then(|m| m.start)
        .ok_or_else(|| tonic::Status::invalid_argument("exec: the first message names no command"))
}
