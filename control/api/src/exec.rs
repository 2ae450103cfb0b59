//! The exec call's framing, shared by the client, the API server and the node agent: its
//! first message names the command, the others carry stdin or a new terminal size, and the
//! end of the caller's messages closes the command's stdin.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::local::ExecInputStream;
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

/// The rest of an exec call's messages (stdin, terminal sizes), until the caller ends its
/// side (or the call breaks).
pub fn input_of(input: tonic::Streaming<ExecInput>) -> ExecInputStream {
    Box::pin(futures::stream::unfold(input, |mut input| async move {
        let mut m = input.message().await.ok().flatten()?;
        m.start = None;
        Some((m, input))
    }))
}

/// An exec call's messages: `start`, then the input when `start` asks for stdin or a
/// terminal. A type of its own (not a combinator chain over the boxed input): tonic's
/// client-streaming call is only provably `Send` with a concrete input stream.
pub struct CallInput {
    start: Option<ExecInput>,
    input: Option<ExecInputStream>,
}

impl CallInput {
    pub fn new(start: PodExecRequest, input: ExecInputStream) -> CallInput {
        let attach = start.stdin || start.tty;
        CallInput {
            start: Some(ExecInput {
                start: Some(start),
                ..Default::default()
            }),
            input: attach.then_some(input),
        }
    }
}

impl Stream for CallInput {
    type Item = ExecInput;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ExecInput>> {
        if let Some(first) = self.start.take() {
            return Poll::Ready(Some(first));
        }
        match self.input.as_mut() {
            None => Poll::Ready(None),
            Some(s) => s.as_mut().poll_next(cx),
        }
    }
}
