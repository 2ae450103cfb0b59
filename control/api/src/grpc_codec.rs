//! The gRPC codec: prost encoding with buffers allocated on demand.
//!
//! tonic's default codec allocates an 8 KiB encode buffer per response stream and an 8 KiB
//! decode buffer per request up front. A watch is a long-lived stream that is idle most of
//! the time, so its encode buffer would be most of an idle watcher's cost: it starts empty
//! and grows with the first event. A watch request is a few dozen bytes: its decode buffer
//! is 512 bytes, so 1,000 watches opened at once do not leave 8 MiB of freed buffers
//! behind in the allocator. Writes carry whole objects and keep tonic's 8 KiB (a 1 KiB
//! buffer cost a fifth of the write throughput with 1 KiB objects: measured).

use std::any::TypeId;

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode buffer: nothing until the first message.
const ENCODE_BUFFER: usize = 0;
/// Initial size of a request's decode buffer: watch requests, and everything else.
const WATCH_DECODE_BUFFER: usize = 512;
const DECODE_BUFFER: usize = 8192;
/// Bytes buffered before the encoder yields them to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost messages, small initial buffers.
#[derive(Debug, Clone, Copy)]
pub struct SkiffCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SkiffCodec<T, U> {
    fn default() -> Self {
        SkiffCodec(PhantomData)
    }
}

impl<T, U> Codec for SkiffCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        let size = if TypeId::of::<U>() == TypeId::of::<crate::proto::WatchRequest>() {
            WATCH_DECODE_BUFFER
        } else {
            DECODE_BUFFER
        };
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(size, YIELD_THRESHOLD))
    }
}
