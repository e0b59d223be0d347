//! The protobuf codec every generated client and server uses: prost's, with small buffers.
//!
//! tonic's default starts each call's encode and decode buffer at 8 KiB. Most etcd messages
//! are a few hundred bytes, and with glibc every 8 KiB allocation on a busy heap consolidates
//! the small-chunk bins first (malloc_consolidate showed up in profiles of the put path).
//! Starting small keeps per-call buffers in the thread cache; larger messages grow the buffer.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial per-call buffer: fits a typical request or response, below glibc's large bins.
const BUFFER: usize = 512;
/// Streams hand encoded messages to HTTP/2 once this much is buffered (tonic's default).
const YIELD: usize = 32 * 1024;

#[derive(Debug)]
pub struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD))
    }
}
