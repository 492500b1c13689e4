//! Frames on a yamux stream: `u32` big-endian length (of the kind byte and
//! the payload), a kind byte, the payload. Bounded: a frame announcing more
//! than [`MAX_PAYLOAD`] bytes is an error before anything is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON message: the request, then replies and controls.
    Json = 0,
    /// Bytes into the guest: stdin, or a file being written.
    In = 1,
    /// Bytes out of the guest: stdout (or a PTY), or a file being read.
    Out = 2,
    /// Stderr.
    Err = 3,
    /// The sender's `In` (host) or `Out`/`Err` (guest) bytes are complete;
    /// the payload names which: [`Kind::In`], [`Kind::Out`] or [`Kind::Err`].
    Eof = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Json,
            1 => Kind::In,
            2 => Kind::Out,
            3 => Kind::Err,
            4 => Kind::Eof,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Bytes,
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("A frame of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLong(usize),
    #[error("A frame is empty (no kind byte)")]
    Empty,
    #[error("Unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("A JSON frame does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("An end-of-stream frame names no stream")]
    BadEof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// A JSON frame of `msg`.
    pub fn json<T: Serialize>(msg: &T) -> Result<Frame, FrameError> {
        let payload = Bytes::from(serde_json::to_vec(msg)?);
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(payload.len()));
        }
        Ok(Frame {
            kind: Kind::Json,
            payload,
        })
    }

    /// A data frame (at most [`MAX_PAYLOAD`] bytes: split larger data).
    pub fn data(kind: Kind, payload: Bytes) -> Frame {
        Frame { kind, payload }
    }

    /// The end of the sender's bytes of `which`.
    pub fn eof(which: Kind) -> Frame {
        Frame {
            kind: Kind::Eof,
            payload: Bytes::from(vec![which as u8]),
        }
    }

    /// The message of a JSON frame.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// Which stream an end-of-stream frame closes.
    pub fn eof_of(&self) -> Result<Kind, FrameError> {
        match self.payload.as_ref() {
            [b] => Kind::from_u8(*b)
                .filter(|k| matches!(k, Kind::In | Kind::Out | Kind::Err))
                .ok_or(FrameError::BadEof),
            _ => Err(FrameError::BadEof),
        }
    }
}

/// The codec of [`Frame`]s (tokio_util's `Framed`).
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_PAYLOAD + 1 {
            return Err(FrameError::TooLong(len - 1));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let kind_byte = src.get_u8();
        let kind = Kind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        let payload = src.split_to(len - 1).freeze();
        Ok(Some(Frame { kind, payload }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if f.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(f.payload.len()));
        }
        // Checked above: at most MAX_PAYLOAD + 1, far below u32::MAX.
        #[allow(clippy::cast_possible_truncation)]
        let len = (f.payload.len() + 1) as u32;
        dst.reserve(5 + f.payload.len());
        dst.put_u32(len);
        dst.put_u8(f.kind as u8);
        dst.extend_from_slice(&f.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(f: Frame) -> Frame {
        let mut buf = BytesMut::new();
        FrameCodec.encode(f, &mut buf).expect("encode");
        FrameCodec
            .decode(&mut buf)
            .expect("decode")
            .expect("a frame")
    }

    #[test]
    fn frames_round_trip_and_split_input_waits() {
        let f = Frame::data(Kind::Out, Bytes::from_static(b"hello"));
        assert_eq!(round(f.clone()), f);
        let e = Frame::eof(Kind::Err);
        assert_eq!(round(e).eof_of().expect("eof"), Kind::Err);
        let mut buf = BytesMut::new();
        FrameCodec.encode(f.clone(), &mut buf).expect("encode");
        let mut part = buf.split_to(6);
        assert!(FrameCodec.decode(&mut part).expect("partial").is_none());
        part.unsplit(buf);
        assert_eq!(FrameCodec.decode(&mut part).expect("whole"), Some(f));
    }

    #[test]
    fn oversized_empty_and_unknown_frames_are_errors() {
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            FrameCodec.decode(&mut huge),
            Err(FrameError::TooLong(_))
        ));
        assert!(huge.capacity() < 1 << 20, "nothing reserved for a lie");
        let mut empty = BytesMut::from(&0u32.to_be_bytes()[..]);
        assert!(matches!(
            FrameCodec.decode(&mut empty),
            Err(FrameError::Empty)
        ));
        let mut unknown = BytesMut::from(&[0, 0, 0, 1, 9][..]);
        assert!(matches!(
            FrameCodec.decode(&mut unknown),
            Err(FrameError::UnknownKind(9))
        ));
        let big = Frame::data(Kind::In, Bytes::from(vec![0u8; MAX_PAYLOAD + 1]));
        assert!(FrameCodec.encode(big, &mut BytesMut::new()).is_err());
        let bad_eof = Frame::data(Kind::Eof, Bytes::from_static(&[0]));
        assert!(bad_eof.eof_of().is_err());
    }
}
