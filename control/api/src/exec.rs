//! The exec call's framing, shared by the client, the API server and the node agent: its
//! first message names the command, the others carry stdin, and the end of the caller's
//! messages closes the command's stdin.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::local::StdinStream;
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

/// The rest of an exec call's messages as stdin, until the caller ends its side (or the
/// call breaks).
pub fn stdin_of(input: tonic::Streaming<ExecInput>) -> StdinStream {
    Box::pin(futures::stream::unfold(input, |mut input| async move {
        let m = input.message().await.ok().flatten()?;
        Some((m.stdin, input))
    }))
}

/// An exec call's messages: `start`, then `stdin` when `start.stdin` asks for it. A type of
/// its own (not a combinator chain over the boxed stdin): tonic's client-streaming call is
/// only provably `Send` with a concrete input stream.
pub struct CallInput {
    start: Option<ExecInput>,
    stdin: Option<StdinStream>,
}

impl CallInput {
    pub fn new(start: PodExecRequest, stdin: StdinStream) -> CallInput {
        let attach = start.stdin;
        CallInput {
            start: Some(ExecInput {
                start: Some(start),
                stdin: bytes::Bytes::new(),
            }),
            stdin: attach.then_some(stdin),
        }
    }
}

impl Stream for CallInput {
    type Item = ExecInput;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ExecInput>> {
        if let Some(first) = self.start.take() {
            return Poll::Ready(Some(first));
        }
        match self.stdin.as_mut() {
            None => Poll::Ready(None),
            Some(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|chunk| chunk.map(|stdin| ExecInput { start: None, stdin })),
        }
    }
}
