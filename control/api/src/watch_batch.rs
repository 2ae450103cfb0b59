//! The `WatchBatch` message, written by hand so that the watch cache can encode an event once
//! and hand the same bytes to every watcher.
//!
//! On the wire it is exactly `message WatchBatch { repeated WatchEvent events = 1; }`: a
//! repeated field is a concatenation of `(tag, length, bytes)` frames, so a batch made of
//! pre-encoded frames is byte-for-byte the batch prost would have written. Receivers decode
//! into [`WatchBatch::events`] as with any prost message.

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};

use crate::proto::WatchEvent;

/// A batch of watch events: pre-encoded frames (sender side) and/or decoded events.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct WatchBatch {
    /// Events already framed as field 1 of `WatchBatch` (see [`encode_frame`]).
    pub frames: Vec<Bytes>,
    /// Events as structs: what a receiver decodes, or what a sender builds for one watcher.
    pub events: Vec<WatchEvent>,
}

/// Encodes `event` as one field-1 frame of a `WatchBatch`; the result can be shared by every
/// watcher that receives the event.
pub fn encode_frame(event: &WatchEvent) -> Bytes {
    let mut buf = Vec::with_capacity(encoding::message::encoded_len(1, event));
    encoding::message::encode(1, event, &mut buf);
    Bytes::from(buf)
}

impl WatchBatch {
    /// Number of events in the batch, whichever form they are in.
    pub fn len(&self) -> usize {
        self.frames.len() + self.events.len()
    }

    /// True when the batch carries no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl prost::Message for WatchBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for frame in &self.frames {
            buf.put_slice(frame);
        }
        for event in &self.events {
            encoding::message::encode(1, event, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum::<usize>()
            + encoding::message::encoded_len_repeated(1, &self.events)
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EventType;
    use prost::Message;

    #[test]
    fn pre_encoded_frames_decode_as_events() {
        let a = WatchEvent {
            r#type: EventType::Added as i32,
            object: Bytes::from_static(br#"{"kind":"Pod"}"#),
        };
        let b = WatchEvent {
            r#type: EventType::Bookmark as i32,
            object: Bytes::from_static(br#"{"metadata":{"resourceVersion":"7"}}"#),
        };
        let sent = WatchBatch {
            frames: vec![encode_frame(&a)],
            events: vec![b.clone()],
        };
        let wire = sent.encode_to_vec();
        assert_eq!(wire.len(), sent.encoded_len());
        let got = WatchBatch::decode(wire.as_slice()).expect("valid batch");
        assert_eq!(got.events, vec![a, b]);
        assert!(got.frames.is_empty());
    }
}
