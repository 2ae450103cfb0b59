//! The gRPC codec: prost encoding with a small initial encode buffer.
//!
//! tonic's default codec allocates an 8 KiB buffer per response stream up front. A watch is
//! a long-lived stream that is idle most of the time, so that buffer would be most of an
//! idle watcher's cost; starting at 512 bytes (grown on demand) keeps idle watchers cheap
//! while busy streams grow to what they need.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode buffer.
const ENCODE_BUFFER: usize = 512;
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
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
