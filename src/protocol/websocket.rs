//! RFC 6455 framing, server side, written by hand.
//!
//! Why not let tungstenite frame for us: a broadcast must be encoded once and written by every
//! receiver as the same bytes (server frames are unmasked, so header + payload is identical for
//! everyone), and inbound frames must be parsed in the shard's big read buffer without a copy and
//! without a per-connection read buffer. This file owns:
//! - encoding: [`encode_frame`], [`write_frame_header`], [`encode_close`], and the crate-internal
//!   [`FrameBuilder`] that lets a serializer write a payload and its header into one allocation;
//! - decoding: [`MessageReader`], which turns the bytes read off a socket into [`Message`]s;
//! - the close codes we send, in [`close_code`].
//!
//! It never allocates for a complete frame that arrived in one read, and an idle [`MessageReader`]
//! owns no heap memory.

use bytes::{Buf, Bytes};

/// Close codes (RFC 6455 §7.4 and the IANA registry) that this server sends, in one place so that
/// every disconnect reason is named and explained once.
pub mod close_code {
    /// The peer asked to close, or the socket is done for an ordinary reason. phoenix.js ≤ 1.8.15
    /// does not reconnect after it, so never use it for closes the client should recover from.
    pub const NORMAL: u16 = 1000;
    /// The client broke RFC 6455 (unmasked frame, reserved bits or opcodes, bad fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The endpoint received a kind of data it cannot accept (a binary frame on a V1 socket).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message (or a close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A client message exceeded the inbound limit (64 KiB by default).
    pub const TOO_BIG: u16 = 1009;
    /// The server is shutting down gracefully; the client should reconnect (to another process).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client is not reading fast enough ("slow consumer") or the server is overloaded;
    /// reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The socket sent nothing (not even a heartbeat) for `idle_timeout`: not 1000, so that
    /// phoenix.js reconnects.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// An admin's `disconnect` closed the socket (not 1000: the client may reconnect, with a
    /// token it still holds).
    pub const DISCONNECTED_BY_ADMIN: u16 = 4001;
}

/// The six opcodes RFC 6455 defines; every other value is reserved and a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A later fragment of a fragmented text or binary message.
    Continuation,
    /// A UTF-8 text message (Phoenix JSON).
    Text,
    /// A binary message (Phoenix binary kinds 0, 1, 2).
    Binary,
    /// The closing handshake.
    Close,
    /// A keep-alive probe; must be answered with a pong carrying the same payload.
    Ping,
    /// The answer to a ping (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// The four-bit value on the wire.
    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode for a four-bit value, `None` for a reserved one.
    fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong: at most 125 bytes and never fragmented.
    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The longest header a server frame can have: two bytes plus an eight-byte length (no mask).
pub(crate) const MAX_SERVER_HEADER: usize = 10;

/// The longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The length of the header [`write_frame_header`] writes for a payload of `payload_len` bytes.
fn server_header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// The header of an unmasked, final server frame, on the stack: the bytes and how many are used.
fn server_header(opcode: OpCode, payload_len: usize) -> ([u8; MAX_SERVER_HEADER], usize) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    header[0] = 0x80 | opcode.bits();
    if payload_len < 126 {
        // Fits in the seven-bit length field; the cast cannot truncate.
        header[1] = payload_len as u8;
        (header, 2)
    } else if let Ok(len16) = u16::try_from(payload_len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len16.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        (header, 10)
    }
}

/// Appends the header of an unmasked, final (FIN) server frame to `out`. Exposed so that a caller
/// that already holds a payload buffer can frame it without copying the payload again.
pub fn write_frame_header(opcode: OpCode, payload_len: usize, out: &mut Vec<u8>) {
    let (header, len) = server_header(opcode, payload_len);
    out.extend_from_slice(&header[..len]);
}

/// A complete unmasked server frame (FIN set) in one allocation, ready to be written to any
/// number of sockets: this is what makes a broadcast cost one encode for all its receivers.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(server_header_len(payload.len()) + payload.len());
    write_frame_header(opcode, payload.len(), &mut frame);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A complete close frame with `code` and `reason`, so that every disconnect tells the client why.
/// The reason is cut (at a character boundary) to the 123 bytes a control frame leaves for it.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(2 + 2 + reason.len());
    write_frame_header(OpCode::Close, 2 + reason.len(), &mut frame);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    Bytes::from(frame)
}

/// Builds one server frame in one allocation when the payload length is not known in advance
/// (a serializer writing JSON): the payload is written after room for the longest header, and
/// [`FrameBuilder::finish`] writes the real header just before it and hands out the frame without
/// copying.
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// A builder whose payload buffer can take `payload_capacity` bytes without reallocating.
    pub(crate) fn with_capacity(payload_capacity: usize) -> FrameBuilder {
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload_capacity);
        buf.resize(MAX_SERVER_HEADER, 0);
        FrameBuilder { buf }
    }

    /// The buffer to append the payload to. Append only: the bytes already in it (the header
    /// room and the payload so far) must not be modified or removed.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes of payload written so far.
    pub(crate) fn payload_len(&self) -> usize {
        self.buf.len() - MAX_SERVER_HEADER
    }

    /// The finished frame: header written in front of the payload, same allocation.
    pub(crate) fn finish(mut self, opcode: OpCode) -> Bytes {
        let payload_len = self.payload_len();
        let (header, header_len) = server_header(opcode, payload_len);
        let start = MAX_SERVER_HEADER - header_len;
        self.buf[start..MAX_SERVER_HEADER].copy_from_slice(&header[..header_len]);
        let mut frame = Bytes::from(self.buf);
        frame.advance(start);
        frame
    }
}

/// One complete client message, borrowed from the read buffer (or from the reader's reassembly
/// buffer for a fragmented message). Control frames are handed out too, because the connection
/// must answer pings and closes.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message; its bytes have been checked to be valid UTF-8.
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong; nothing to do but note that the client is alive.
    Pong(&'a [u8]),
    /// The client's close: its code and reason, or `None` when it sent an empty close frame.
    Close(Option<(u16, &'a str)>),
}

/// Why a client's byte stream was refused. Each variant maps to the close code to send before
/// closing the socket, and its `Display` is short enough to be the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The client broke RFC 6455; the text says which rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message (one frame, or a reassembled fragmented message) is larger than the limit.
    #[error("message too big (limit {limit} bytes)")]
    TooBig {
        /// The configured inbound limit.
        limit: usize,
    },
    /// A text message or a close reason is not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send for this error (see [`close_code`]).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => close_code::PROTOCOL_ERROR,
            FrameError::TooBig { .. } => close_code::TOO_BIG,
            FrameError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }

    /// A short, fixed close reason for this error, for callers that keep reasons `&'static str`
    /// (the `Display` text, which includes the limit, is for logs).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Protocol(rule) => rule,
            FrameError::TooBig { .. } => "message too big",
            FrameError::InvalidUtf8 => "invalid UTF-8",
        }
    }
}

/// What stopped [`MessageReader::process`]: the client's bytes, or the caller's own handler, so
/// that the connection can stop parsing as soon as it decides to (for example after a close).
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The client's bytes are not acceptable; close the socket with `err.close_code()`.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handler returned this error; parsing stopped right after the message it was given.
    #[error("{0}")]
    Handler(E),
}

/// The fields of a client frame header that the reader needs.
#[derive(Clone, Copy, Debug)]
struct FrameHead {
    fin: bool,
    /// The three RSV bits, which must be zero (we negotiate no extension).
    rsv: u8,
    /// The raw four-bit opcode (reserved values are refused in `check`).
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    header_len: usize,
}

/// The length of a client frame header, known from its second byte.
fn client_header_len(second_byte: u8) -> usize {
    let extended = match second_byte & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second_byte & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Parses a frame header at the start of `buf`; `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let header_len = client_header_len(second);
    let header = buf.get(..header_len)?;
    let (payload_len, mask_at) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&header[2..10]);
            (u64::from_be_bytes(len), 10)
        }
        short => (u64::from(short), 2),
    };
    let mask = (second & 0x80 != 0).then(|| {
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&header[mask_at..mask_at + 4]);
        mask
    });
    Some(FrameHead {
        fin: first & 0x80 != 0,
        rsv: first & 0x70,
        opcode: first & 0x0F,
        mask,
        payload_len,
        header_len,
    })
}

/// XORs `payload` with the client's masking key, in place.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Close codes a client may send (RFC 6455 §7.4.1 and the IANA registry: 1000–1003, 1007–1014,
/// and the application ranges 3000–4999).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reassembles client messages from the bytes read off one socket.
///
/// Memory is the point of its design: the caller reads into a big per-shard scratch buffer and
/// passes the filled part to [`MessageReader::process`]; complete frames are unmasked in place and
/// lent out with no copy. Only a trailing incomplete frame and the parts of a fragmented message are
/// copied into the reader's own buffers, which are freed as soon as they are empty, so an idle
/// connection's reader owns no heap memory. After any error the connection must be closed: the
/// reader's state is then unspecified (though never unsafe to drop).
#[derive(Debug)]
pub struct MessageReader {
    max_message_bytes: usize,
    /// Raw (still masked) bytes of a frame whose end has not arrived yet.
    partial: Vec<u8>,
    /// Unmasked payload of a fragmented message received so far.
    fragments: Vec<u8>,
    /// `Text` or `Binary` while a fragmented message is in progress.
    fragmented: Option<OpCode>,
}

impl MessageReader {
    /// A reader that refuses messages larger than `max_message_bytes` (close 1009).
    pub fn new(max_message_bytes: usize) -> MessageReader {
        MessageReader {
            max_message_bytes,
            partial: Vec::new(),
            fragments: Vec::new(),
            fragmented: None,
        }
    }

    /// Heap bytes this reader currently holds, for memory accounting and tests.
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.fragments.capacity()
    }

    /// Whether the reader is between messages (nothing buffered); an idle connection is in this
    /// state.
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.fragmented.is_none()
    }

    /// Parses `data`, freshly read from the socket, and calls `handle` with every complete
    /// message in order. `data` is modified (unmasked in place). Bytes of an incomplete trailing
    /// frame are kept and completed by the next call. Stops at the first error, whether the
    /// client's ([`ReadError::Frame`]) or the handler's ([`ReadError::Handler`]).
    pub fn process<E, F>(&mut self, data: &mut [u8], mut handle: F) -> Result<(), ReadError<E>>
    where
        F: FnMut(Message<'_>) -> Result<(), E>,
    {
        let mut data = data;
        if !self.partial.is_empty() {
            let Some((head, used)) = self.complete_partial(data)? else {
                return Ok(());
            };
            let mut frame = std::mem::take(&mut self.partial);
            self.dispatch(head, &mut frame[head.header_len..], &mut handle)?;
            drop(frame); // free it: idle readers own no memory
            data = &mut data[used..];
        }
        while !data.is_empty() {
            let Some(head) = parse_head(data) else {
                self.partial.extend_from_slice(data);
                return Ok(());
            };
            self.check(&head)?;
            // `check` bounded payload_len by max_message_bytes or 125, so it fits in usize.
            let total = head.header_len + head.payload_len as usize;
            if data.len() < total {
                self.partial.extend_from_slice(data);
                return Ok(());
            }
            let (frame, rest) = std::mem::take(&mut data).split_at_mut(total);
            self.dispatch(head, &mut frame[head.header_len..], &mut handle)?;
            data = rest;
        }
        Ok(())
    }

    /// Appends to `self.partial` as much of `data` as its frame still needs. Returns the header and
    /// the number of bytes of `data` used once the frame is complete, `None` if `data` ran out.
    fn complete_partial(&mut self, data: &[u8]) -> Result<Option<(FrameHead, usize)>, FrameError> {
        let mut used = 0;
        let mut fill_to = |partial: &mut Vec<u8>, target: usize| {
            let take = target.saturating_sub(partial.len()).min(data.len() - used);
            partial.extend_from_slice(&data[used..used + take]);
            used += take;
            partial.len() >= target
        };
        if !fill_to(&mut self.partial, 2) {
            return Ok(None);
        }
        let header_len = client_header_len(self.partial[1]);
        if !fill_to(&mut self.partial, header_len) {
            return Ok(None);
        }
        let Some(head) = parse_head(&self.partial) else {
            return Err(FrameError::Protocol("incomplete frame header"));
        };
        self.check(&head)?;
        let total = head.header_len + head.payload_len as usize;
        if !fill_to(&mut self.partial, total) {
            return Ok(None);
        }
        Ok(Some((head, used)))
    }

    /// Every rule that can be decided from the header alone, so that a bad or oversized frame is
    /// refused before its payload is waited for or buffered.
    fn check(&self, head: &FrameHead) -> Result<(), FrameError> {
        if head.rsv != 0 {
            return Err(FrameError::Protocol("RSV bits set without an extension"));
        }
        let Some(opcode) = OpCode::from_bits(head.opcode) else {
            return Err(FrameError::Protocol("reserved opcode"));
        };
        if head.mask.is_none() {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        if head.payload_len >> 63 != 0 {
            return Err(FrameError::Protocol("64-bit length with the high bit set"));
        }
        if opcode.is_control() {
            if !head.fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if head.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
            return Ok(());
        }
        let already = match (opcode, self.fragmented) {
            (OpCode::Continuation, None) => {
                return Err(FrameError::Protocol(
                    "continuation without a message to continue",
                ))
            }
            (OpCode::Continuation, Some(_)) => self.fragments.len() as u64,
            (_, Some(_)) => {
                return Err(FrameError::Protocol(
                    "new message inside a fragmented message",
                ))
            }
            (_, None) => 0,
        };
        if already.saturating_add(head.payload_len) > self.max_message_bytes as u64 {
            return Err(FrameError::TooBig {
                limit: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Unmasks one complete, checked frame's payload and hands out the message it completes.
    fn dispatch<E, F>(
        &mut self,
        head: FrameHead,
        payload: &mut [u8],
        handle: &mut F,
    ) -> Result<(), ReadError<E>>
    where
        F: FnMut(Message<'_>) -> Result<(), E>,
    {
        if let Some(mask) = head.mask {
            unmask(payload, mask);
        }
        let Some(opcode) = OpCode::from_bits(head.opcode) else {
            return Err(FrameError::Protocol("reserved opcode").into());
        };
        let message = match opcode {
            OpCode::Text | OpCode::Binary if !head.fin => {
                self.fragments.extend_from_slice(payload);
                self.fragmented = Some(opcode);
                return Ok(());
            }
            OpCode::Continuation => {
                self.fragments.extend_from_slice(payload);
                if !head.fin {
                    return Ok(());
                }
                let kind = self.fragmented.take();
                let whole = std::mem::take(&mut self.fragments);
                return deliver_data(kind == Some(OpCode::Text), &whole, handle);
            }
            OpCode::Text => return deliver_data(true, payload, handle),
            OpCode::Binary => return deliver_data(false, payload, handle),
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong(payload),
            OpCode::Close => Message::Close(parse_close(payload)?),
        };
        handle(message).map_err(ReadError::Handler)
    }
}

/// Hands out a complete data message, checking a text message's UTF-8 first.
fn deliver_data<E, F>(text: bool, bytes: &[u8], handle: &mut F) -> Result<(), ReadError<E>>
where
    F: FnMut(Message<'_>) -> Result<(), E>,
{
    let message = if text {
        if std::str::from_utf8(bytes).is_err() {
            return Err(FrameError::InvalidUtf8.into());
        }
        Message::Text(bytes)
    } else {
        Message::Binary(bytes)
    };
    handle(message).map_err(ReadError::Handler)
}

/// The code and reason of a close frame's payload (empty → `None`).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TOpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// A client frame as tungstenite (a real client implementation) writes it.
    fn client_frame(opcode: TOpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
        out
    }

    fn text(fin: bool, payload: &[u8]) -> Vec<u8> {
        client_frame(TOpCode::Data(Data::Text), fin, payload)
    }

    fn cont(fin: bool, payload: &[u8]) -> Vec<u8> {
        client_frame(TOpCode::Data(Data::Continue), fin, payload)
    }

    /// An owned copy of a message, to collect what the reader hands out.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(message: Message<'_>) -> Got {
        match message {
            Message::Text(b) => Got::Text(b.to_vec()),
            Message::Binary(b) => Got::Binary(b.to_vec()),
            Message::Ping(b) => Got::Ping(b.to_vec()),
            Message::Pong(b) => Got::Pong(b.to_vec()),
            Message::Close(c) => Got::Close(c.map(|(code, r)| (code, r.to_string()))),
        }
    }

    /// Feeds `bytes` to a fresh reader in reads of `chunk` bytes.
    fn read_all(
        max: usize,
        bytes: &[u8],
        chunk: usize,
    ) -> (Vec<Got>, Result<(), FrameError>, MessageReader) {
        let mut reader = MessageReader::new(max);
        let mut got = Vec::new();
        let mut scratch = bytes.to_vec();
        for piece in scratch.chunks_mut(chunk) {
            let result = reader.process(piece, |m| {
                got.push(own(m));
                Ok::<(), ()>(())
            });
            if let Err(err) = result {
                let ReadError::Frame(err) = err else {
                    unreachable!("the handler never fails")
                };
                return (got, Err(err), reader);
            }
        }
        (got, Ok(()), reader)
    }

    fn expect_error(max: usize, bytes: &[u8]) -> FrameError {
        read_all(max, bytes, bytes.len().max(1)).1.unwrap_err()
    }

    #[test]
    fn server_frames_parse_with_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = encode_frame(OpCode::Binary, &payload);
            let mut cursor = Cursor::new(&frame[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(header.opcode, TOpCode::Data(Data::Binary));
            assert_eq!(header.mask, None);
            assert_eq!(length, len as u64);
            assert_eq!(
                &frame[cursor.position() as usize..],
                &payload[..],
                "len {len}"
            );
            let mut via_header = Vec::new();
            write_frame_header(OpCode::Binary, len, &mut via_header);
            assert_eq!(&frame[..via_header.len()], &via_header[..]);
        }
    }

    #[test]
    fn small_text_frame_has_the_exact_bytes() {
        assert_eq!(&encode_frame(OpCode::Text, b"hi")[..], b"\x81\x02hi");
        assert_eq!(&encode_frame(OpCode::Pong, b"")[..], b"\x8A\x00");
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        assert_eq!(
            &encode_close(close_code::TRY_AGAIN_LATER, "slow consumer")[..],
            b"\x88\x0F\x03\xF5slow consumer"
        );
        let mut cursor = Cursor::new(encode_close(1000, "").to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(header.opcode, TOpCode::Control(Control::Close));
        assert_eq!(len, 2);
    }

    #[test]
    fn close_reason_is_cut_to_fit_a_control_frame_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let frame = encode_close(close_code::TRY_AGAIN_LATER, &reason);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        assert_eq!(frame.len() - 4, 122); // 61 whole "é"
    }

    #[test]
    fn frame_builder_output_equals_encode_frame() {
        for len in [0usize, 3, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let mut builder = FrameBuilder::with_capacity(len);
            builder.buf().extend_from_slice(&payload);
            assert_eq!(
                builder.finish(OpCode::Text),
                encode_frame(OpCode::Text, &payload)
            );
        }
    }

    #[test]
    fn masked_client_frame_is_unmasked() {
        let bytes = text(true, b"[null,\"1\",\"phoenix\",\"heartbeat\",{}]");
        let (got, result, _) = read_all(1024, &bytes, bytes.len());
        result.unwrap();
        assert_eq!(
            got,
            vec![Got::Text(
                b"[null,\"1\",\"phoenix\",\"heartbeat\",{}]".to_vec()
            )]
        );
    }

    #[test]
    fn complete_frames_are_lent_from_the_read_buffer_without_copy() {
        let mut bytes = text(true, b"hello");
        bytes.extend(client_frame(TOpCode::Data(Data::Binary), true, &[1; 300]));
        let range = bytes.as_ptr_range();
        let mut reader = MessageReader::new(1024);
        let mut seen = 0;
        reader
            .process(&mut bytes, |m| {
                let (Message::Text(b) | Message::Binary(b)) = m else {
                    return Err(());
                };
                assert!(range.contains(&b.as_ptr()));
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 2);
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[test]
    fn several_frames_in_one_read_come_out_in_order() {
        let mut bytes = text(true, b"one");
        bytes.extend(client_frame(TOpCode::Control(Control::Ping), true, b"p"));
        bytes.extend(client_frame(TOpCode::Data(Data::Binary), true, &[0, 1]));
        bytes.extend(client_frame(TOpCode::Control(Control::Pong), true, b""));
        let (got, result, _) = read_all(1024, &bytes, bytes.len());
        result.unwrap();
        assert_eq!(
            got,
            vec![
                Got::Text(b"one".to_vec()),
                Got::Ping(b"p".to_vec()),
                Got::Binary(vec![0, 1]),
                Got::Pong(vec![]),
            ]
        );
    }

    #[test]
    fn partial_frame_is_completed_by_next_read() {
        let long = vec![b'a'; 300]; // 16-bit length
        let mut bytes = text(true, b"first");
        bytes.extend(text(true, &long));
        bytes.extend(client_frame(TOpCode::Control(Control::Ping), true, b"ping"));
        bytes.extend(text(true, b"last"));
        let expected = vec![
            Got::Text(b"first".to_vec()),
            Got::Text(long.clone()),
            Got::Ping(b"ping".to_vec()),
            Got::Text(b"last".to_vec()),
        ];
        for chunk in [1, 2, 3, 5, 7, 13, 64, 301, bytes.len()] {
            let (got, result, reader) = read_all(1024, &bytes, chunk);
            result.unwrap();
            assert_eq!(got, expected, "reads of {chunk} bytes");
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn reader_releases_memory_when_idle() {
        let bytes = text(true, &[b'z'; 1000]);
        let mut reader = MessageReader::new(4096);
        let mut first = bytes[..600].to_vec();
        reader.process(&mut first, |_| Ok::<(), ()>(())).unwrap();
        assert!(reader.buffered_capacity() >= 600);
        assert!(!reader.is_idle());
        let mut rest = bytes[600..].to_vec();
        let mut delivered = 0;
        reader
            .process(&mut rest, |_| {
                delivered += 1;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(delivered, 1);
        assert!(reader.is_idle());
        assert_eq!(reader.buffered_capacity(), 0);

        // And after a fragmented message.
        let mut frag = text(false, &[b'a'; 500]);
        frag.extend(cont(true, &[b'b'; 500]));
        reader.process(&mut frag, |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(reader.buffered_capacity(), 0);
        assert!(std::mem::size_of::<MessageReader>() <= 64);
    }

    #[test]
    fn fragmented_text_message_is_reassembled() {
        let mut bytes = text(false, b"[null,");
        bytes.extend(client_frame(TOpCode::Control(Control::Ping), true, b"mid"));
        bytes.extend(cont(false, b"\"1\","));
        bytes.extend(cont(true, b"\"t\",\"e\",{}]"));
        for chunk in [1, 4, bytes.len()] {
            let (got, result, reader) = read_all(1024, &bytes, chunk);
            result.unwrap();
            assert_eq!(
                got,
                vec![
                    Got::Ping(b"mid".to_vec()),
                    Got::Text(b"[null,\"1\",\"t\",\"e\",{}]".to_vec())
                ]
            );
            assert_eq!(reader.buffered_capacity(), 0);
        }
    }

    #[test]
    fn utf8_char_split_across_fragments_is_accepted() {
        let euro = "€".as_bytes(); // three bytes
        let mut bytes = text(false, &euro[..1]);
        bytes.extend(cont(true, &euro[1..]));
        let (got, result, _) = read_all(1024, &bytes, bytes.len());
        result.unwrap();
        assert_eq!(got, vec![Got::Text(euro.to_vec())]);
    }

    #[test]
    fn fragmented_binary_message_is_reassembled() {
        let mut bytes = client_frame(TOpCode::Data(Data::Binary), false, &[1, 2]);
        bytes.extend(cont(false, &[]));
        bytes.extend(cont(true, &[3]));
        let (got, result, _) = read_all(1024, &bytes, 3);
        result.unwrap();
        assert_eq!(got, vec![Got::Binary(vec![1, 2, 3])]);
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let err = expect_error(1024, &encode_frame(OpCode::Text, b"hi"));
        assert_eq!(err, FrameError::Protocol("client frames must be masked"));
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn rsv_bits_are_a_protocol_error() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut bytes = text(true, b"x");
            bytes[0] |= bit;
            assert_eq!(expect_error(1024, &bytes).close_code(), 1002);
        }
    }

    #[test]
    fn reserved_opcodes_are_a_protocol_error() {
        for opcode in [3u8, 7, 0xB, 0xF] {
            let mut bytes = text(true, b"x");
            bytes[0] = 0x80 | opcode;
            assert_eq!(
                expect_error(1024, &bytes),
                FrameError::Protocol("reserved opcode")
            );
        }
    }

    #[test]
    fn control_frames_must_be_short_and_whole() {
        let long_ping = client_frame(TOpCode::Control(Control::Ping), true, &[0; 126]);
        assert_eq!(expect_error(1024, &long_ping).close_code(), 1002);
        let split_ping = client_frame(TOpCode::Control(Control::Ping), false, b"x");
        assert_eq!(expect_error(1024, &split_ping).close_code(), 1002);
        let max_ping = client_frame(TOpCode::Control(Control::Ping), true, &[7; 125]);
        let (got, result, _) = read_all(1024, &max_ping, max_ping.len());
        result.unwrap();
        assert_eq!(got, vec![Got::Ping(vec![7; 125])]);
    }

    #[test]
    fn continuation_rules_are_enforced() {
        assert_eq!(expect_error(1024, &cont(true, b"x")).close_code(), 1002);
        let mut bytes = text(false, b"a");
        bytes.extend(text(true, b"b"));
        assert_eq!(
            expect_error(1024, &bytes),
            FrameError::Protocol("new message inside a fragmented message")
        );
    }

    #[test]
    fn declared_length_over_limit_fails_before_buffering() {
        // Only the header of a 1 MiB frame: refused without waiting for its payload.
        let header = &client_frame(TOpCode::Data(Data::Binary), true, &vec![0; 1 << 20])[..14];
        let (_, result, reader) = read_all(64 * 1024, header, header.len());
        assert_eq!(result, Err(FrameError::TooBig { limit: 64 * 1024 }));
        assert_eq!(result.unwrap_err().close_code(), 1009);
        assert_eq!(reader.buffered_capacity(), 0);
        // Also when the header itself arrives in pieces.
        let (_, result, _) = read_all(64 * 1024, header, 1);
        assert_eq!(result, Err(FrameError::TooBig { limit: 64 * 1024 }));
    }

    #[test]
    fn message_at_the_limit_is_accepted() {
        let bytes = client_frame(TOpCode::Data(Data::Binary), true, &[1; 100]);
        let (got, result, _) = read_all(100, &bytes, 33);
        result.unwrap();
        assert_eq!(got, vec![Got::Binary(vec![1; 100])]);
    }

    #[test]
    fn reassembled_message_over_limit_is_too_big() {
        let mut bytes = text(false, &[b'a'; 60]);
        bytes.extend(cont(true, &[b'b'; 60]));
        assert_eq!(expect_error(100, &bytes), FrameError::TooBig { limit: 100 });
    }

    #[test]
    fn invalid_utf8_text_is_refused_with_1007() {
        let err = expect_error(1024, &text(true, &[b'a', 0xFF, b'b']));
        assert_eq!(err, FrameError::InvalidUtf8);
        assert_eq!(err.close_code(), 1007);
        let mut bytes = text(false, &[0xE2, 0x82]);
        bytes.extend(cont(true, b"x"));
        assert_eq!(expect_error(1024, &bytes), FrameError::InvalidUtf8);
    }

    #[test]
    fn close_frame_is_decoded() {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let bytes = client_frame(TOpCode::Control(Control::Close), true, &payload);
        let (got, result, _) = read_all(1024, &bytes, 2);
        result.unwrap();
        assert_eq!(got, vec![Got::Close(Some((1001, "bye".to_string())))]);

        let empty = client_frame(TOpCode::Control(Control::Close), true, b"");
        assert_eq!(read_all(1024, &empty, 6).0, vec![Got::Close(None)]);
    }

    #[test]
    fn malformed_close_frames_are_refused() {
        let close = |payload: &[u8]| client_frame(TOpCode::Control(Control::Close), true, payload);
        assert_eq!(expect_error(1024, &close(&[3])).close_code(), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            let err = expect_error(1024, &close(&code.to_be_bytes()));
            assert_eq!(err, FrameError::Protocol("invalid close code"), "{code}");
        }
        assert_eq!(
            expect_error(1024, &close(&[0x03, 0xE8, 0xFF])),
            FrameError::InvalidUtf8
        );
    }

    #[test]
    fn handler_error_stops_parsing() {
        let mut bytes = text(true, b"a");
        bytes.extend(text(true, b"b"));
        let mut reader = MessageReader::new(1024);
        let mut seen = 0;
        let result = reader.process(&mut bytes, |_| {
            seen += 1;
            Err("stop")
        });
        assert!(matches!(result, Err(ReadError::Handler("stop"))));
        assert_eq!(seen, 1);
    }

    #[test]
    fn every_error_has_a_short_static_reason() {
        assert_eq!(
            FrameError::Protocol("reserved opcode").reason(),
            "reserved opcode"
        );
        assert_eq!(FrameError::TooBig { limit: 1 }.reason(), "message too big");
        assert_eq!(FrameError::InvalidUtf8.reason(), "invalid UTF-8");
    }

    proptest::proptest! {
        /// However the socket splits the stream, the same messages come out.
        #[test]
        fn messages_do_not_depend_on_read_boundaries(
            messages in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1usize..4),
                1..6,
            ),
            cuts in proptest::collection::vec(1usize..200, 1..20),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (payload, parts) in &messages {
                // Each message as `parts` fragments (the last ones may be empty).
                let size = payload.len().div_ceil(*parts).max(1);
                let pieces: Vec<&[u8]> = payload.chunks(size).collect();
                let pieces = if pieces.is_empty() { vec![&payload[..]] } else { pieces };
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { TOpCode::Data(Data::Binary) } else { TOpCode::Data(Data::Continue) };
                    stream.extend(client_frame(opcode, i + 1 == pieces.len(), piece));
                }
                expected.push(Got::Binary(payload.clone()));
            }
            let mut reader = MessageReader::new(1 << 16);
            let mut got = Vec::new();
            let mut rest = &mut stream[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                let (now, later) = std::mem::take(&mut rest).split_at_mut(n);
                reader.process(now, |m| { got.push(own(m)); Ok::<(), ()>(()) }).unwrap();
                rest = later;
            }
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(reader.buffered_capacity(), 0);
        }
    }

    #[test]
    fn sixty_four_bit_length_with_high_bit_is_refused() {
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&MASK);
        assert_eq!(expect_error(usize::MAX, &bytes).close_code(), 1002);
    }
}
