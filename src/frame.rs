//! A serialized server message, shared by every recipient.

use std::sync::Arc;

use bytes::Bytes;

/// One JSON text frame, serialized once and cloned (a reference-count bump)
/// into each recipient's outbox. Chat messages carry their `seq` so a member
/// who is still catching up can drop what its `joined` reply already holds.
///
/// One pointer wide: every connection's outbox allocates its first block of
/// slots up front, so the slot size is paid per idle connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    text: Bytes,
    seq: Option<u64>,
}

impl Frame {
    pub fn new(text: String) -> Self {
        Self(Arc::new(Inner {
            text: Bytes::from(text),
            seq: None,
        }))
    }

    /// A `message` frame for the message with this room seq.
    pub fn message(text: String, seq: u64) -> Self {
        Self(Arc::new(Inner {
            text: Bytes::from(text),
            seq: Some(seq),
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }

    pub fn seq(&self) -> Option<u64> {
        self.0.seq
    }

    /// The UTF-8 JSON text (always valid UTF-8: frames are only built from `String`s).
    pub fn bytes(&self) -> &Bytes {
        &self.0.text
    }
}
