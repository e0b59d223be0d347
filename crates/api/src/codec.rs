//! The protobuf codec every generated client and server uses: prost's, with small buffers.
//!
//! tonic's default starts each call's encode and decode buffer at 8 KiB. Most etcd messages
//! are a few hundred bytes, and with glibc every 8 KiB allocation on a busy heap consolidates
//! the small-chunk bins first (malloc_consolidate showed up in profiles of the put path).
//! Starting small keeps per-call buffers in the thread cache; larger messages grow the buffer.

use std::sync::atomic::{AtomicU64, Ordering};

use prost::bytes::{Buf, BufMut};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes of messages encoded and decoded by this process's gRPC services and clients (etcd's
/// `etcd_network_client_grpc_sent_bytes_total`/`_received_bytes_total`, which etcd also
/// counts in its codec).
pub static SENT_BYTES: AtomicU64 = AtomicU64::new(0);
pub static RECEIVED_BYTES: AtomicU64 = AtomicU64::new(0);

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
    type Encoder = Counted<ProstEncoder<T>>;
    type Decoder = Counted<ProstDecoder<U>>;

    fn encoder(&mut self) -> Self::Encoder {
        Counted(ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            BUFFER, YIELD,
        )))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Counted(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER, YIELD,
        )))
    }
}

/// prost's encoder or decoder, counting the bytes it writes or reads.
#[derive(Debug)]
pub struct Counted<C>(C);

impl<E: Encoder<Error = Status>> Encoder for Counted<E> {
    type Item = E::Item;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer's room shrinks by exactly what was written.
        let room = dst.remaining_mut();
        self.0.encode(item, dst)?;
        let n = room.saturating_sub(dst.remaining_mut());
        SENT_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

impl<D: Decoder<Error = Status>> Decoder for Counted<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        RECEIVED_BYTES.fetch_add(src.remaining() as u64, Ordering::Relaxed);
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
