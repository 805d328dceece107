//! The protobuf codec every generated client and server uses: tonic's prost codec with buffers
//! sized for a control plane holding thousands of long-lived streams.
//!
//! tonic gives each RPC an encode and a decode buffer, allocated at `buffer_size` (8 KiB by
//! default) and grown to the largest message seen; neither ever shrinks while the RPC lives. On a
//! discovery stream that lives for hours and mostly carries one small resource at a time, those
//! buffers dominate the control plane's memory per proxy. Here they start small, and each
//! message is flushed on its own (a 1-byte yield threshold) instead of batching ready messages
//! into one ever larger buffer. Responses are kept small at the source (the control plane splits
//! large ones), which is what bounds the encode buffer.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial capacity of each RPC's encode and decode buffer.
pub const BUFFER_SIZE: usize = 512;

fn settings() -> BufferSettings {
    // Yield after every message: ready messages are not batched into the encode buffer.
    BufferSettings::new(BUFFER_SIZE, 1)
}

/// `application/grpc+proto` via prost, with [`BUFFER_SIZE`] buffers.
#[derive(Debug)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LeanEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        LeanEncoder(ProstEncoder::new(settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

/// prost's encoder, reserving a message's exact length up front so the buffer grows once (to
/// the size needed) instead of doubling in small steps past it.
#[derive(Debug)]
pub struct LeanEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for LeanEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
