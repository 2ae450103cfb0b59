//! The `WatchBatch` message, written by hand so that the watch cache can encode an event once
//! and hand the same bytes to every watcher.
//!
//! On the wire it is exactly `message WatchBatch { repeated WatchEvent events = 1; }`: a
//! repeated field is a concatenation of `(tag, length, bytes)` frames, so a batch made of
//! pre-encoded frames is byte-for-byte the batch prost would have written. A [`Frame`]
//! keeps the object's stored JSON as it is and its `resourceVersion` field apart, and writes
//! them in order: the cache's window of events holds no copy of any object. Receivers decode
//! into [`WatchBatch::events`] as with any prost message.

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};

use crate::proto::WatchEvent;

/// One event encoded as a field-1 frame of a `WatchBatch`, in parts: the frame's tag,
/// lengths and event type, then the object's JSON as the stored bytes (shared, not copied)
/// with its `resourceVersion` field inserted at `at`. Every watcher that receives the event
/// sends these same parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The head (`small[..head_len]`) and the inserted field (`small[head_len..]`).
    small: Bytes,
    head_len: u32,
    body: Bytes,
    at: u32,
}

impl Frame {
    /// The frame of an event of type `kind` whose object is `body` with `insert` placed
    /// at `at` (nothing to insert: `at` is ignored).
    pub fn new(kind: i32, body: Bytes, at: usize, insert: &[u8]) -> Self {
        let at = if insert.is_empty() {
            body.len()
        } else {
            at.min(body.len())
        };
        let object_len = body.len() + insert.len();
        // WatchEvent { type = 1 (varint), object = 2 (bytes) }
        let type_len = if kind == 0 {
            0
        } else {
            1 + encoding::encoded_len_varint(kind as u64)
        };
        let event_len = type_len + 1 + encoding::encoded_len_varint(object_len as u64) + object_len;
        let mut small = Vec::with_capacity(16 + insert.len());
        encoding::encode_key(1, WireType::LengthDelimited, &mut small);
        encoding::encode_varint(event_len as u64, &mut small);
        if kind != 0 {
            encoding::encode_key(1, WireType::Varint, &mut small);
            encoding::encode_varint(kind as u64, &mut small);
        }
        encoding::encode_key(2, WireType::LengthDelimited, &mut small);
        encoding::encode_varint(object_len as u64, &mut small);
        let head_len = small.len() as u32;
        small.extend_from_slice(insert);
        Frame {
            small: Bytes::from(small),
            head_len,
            body,
            at: at as u32,
        }
    }

    /// The parts in wire order.
    fn parts(&self) -> [&[u8]; 4] {
        let (head, insert) = self.small.split_at(self.head_len as usize);
        let (before, after) = self.body.split_at(self.at as usize);
        [head, before, insert, after]
    }

    /// Encoded length.
    pub fn len(&self) -> usize {
        self.small.len() + self.body.len()
    }

    /// Never true: a frame holds at least its head.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A batch of watch events: pre-encoded frames (sender side) and/or decoded events.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct WatchBatch {
    /// Events already framed as field 1 of `WatchBatch`.
    pub frames: Vec<Frame>,
    /// Events as structs: what a receiver decodes, or what a sender builds for one watcher.
    pub events: Vec<WatchEvent>,
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
            for part in frame.parts() {
                buf.put_slice(part);
            }
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
        self.frames.iter().map(Frame::len).sum::<usize>()
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
            frames: vec![Frame::new(a.r#type, a.object.clone(), 0, b"")],
            events: vec![b.clone()],
        };
        let wire = sent.encode_to_vec();
        assert_eq!(wire.len(), sent.encoded_len());
        let got = WatchBatch::decode(wire.as_slice()).expect("valid batch");
        assert_eq!(got.events, vec![a, b]);
        assert!(got.frames.is_empty());
    }

    /// A frame of stored bytes with a field inserted is byte-for-byte prost's encoding of
    /// the event whose object is the spliced JSON, for every event type (ADDED is 0, the
    /// default prost leaves out) and for objects long enough to need multi-byte lengths.
    #[test]
    fn spliced_frames_are_what_prost_writes() {
        for kind in [
            EventType::Added,
            EventType::Modified,
            EventType::Deleted,
            EventType::Bookmark,
        ] {
            for filler in [0usize, 200, 70_000] {
                let stored = format!(
                    r#"{{"metadata":{{"name":"a"}},"data":{{"k":"{}"}}}}"#,
                    "x".repeat(filler)
                );
                let at = br#"{"metadata":{"#.len();
                let insert = br#""resourceVersion":"42","#;
                let mut spliced = stored.as_bytes()[..at].to_vec();
                spliced.extend_from_slice(insert);
                spliced.extend_from_slice(&stored.as_bytes()[at..]);
                let event = WatchEvent {
                    r#type: kind as i32,
                    object: Bytes::from(spliced),
                };
                let expected = WatchBatch {
                    frames: Vec::new(),
                    events: vec![event.clone()],
                }
                .encode_to_vec();
                let frame = Frame::new(kind as i32, Bytes::from(stored), at, insert);
                let sent = WatchBatch {
                    frames: vec![frame.clone()],
                    events: Vec::new(),
                };
                assert_eq!(sent.encoded_len(), expected.len());
                assert_eq!(sent.encode_to_vec(), expected);
                assert_eq!(frame.len(), expected.len());
                let got = WatchBatch::decode(expected.as_slice()).expect("valid");
                assert_eq!(got.events, vec![event]);
            }
        }
    }
}
