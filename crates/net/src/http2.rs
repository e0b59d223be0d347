//! HTTP/2's wire constants (RFC 7540), for the two places that read frames themselves: the
//! server's `:authority` shim and the benchmark's bare watch client.

/// The client connection preface (RFC 7540 §3.5).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a 9-byte header: length (24 bits), type, flags, stream id.
pub const FRAME_HEADER: usize = 9;
/// The largest frame payload a peer must accept before SETTINGS_MAX_FRAME_SIZE raises it.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The initial flow-control window of a connection and of each stream.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (RFC 7540 §6).
pub mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 7540 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS and PING acknowledgements share END_STREAM's bit.
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameters (RFC 7540 §6.5.2).
pub mod setting {
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// Appends a frame: the header (payload length, type, flags, stream id with the reserved bit
/// cleared), then the payload.
pub fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame header at the start of `b`: (payload length, type, flags, stream id).
/// `None` while fewer than [`FRAME_HEADER`] bytes are there.
pub fn parse_frame_header(b: &[u8]) -> Option<(usize, u8, u8, u32)> {
    let h = b.get(..FRAME_HEADER)?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & MAX_WINDOW;
    Some((len, h[3], h[4], stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_round_trip() {
        let mut out = Vec::new();
        push_frame(&mut out, frame::HEADERS, flag::END_HEADERS, 7, &[0xab; 300]);
        assert_eq!(out[..FRAME_HEADER], [0, 1, 44, 1, 4, 0, 0, 0, 7]);
        assert_eq!(out.len(), FRAME_HEADER + 300);
        assert_eq!(
            parse_frame_header(&out),
            Some((300, frame::HEADERS, flag::END_HEADERS, 7))
        );
        assert_eq!(parse_frame_header(&out[..8]), None);
        // The reserved bit of the stream id is ignored on read and never written.
        let mut out = Vec::new();
        push_frame(&mut out, frame::DATA, 0, u32::MAX, &[]);
        assert_eq!(parse_frame_header(&out).map(|h| h.3), Some(MAX_WINDOW));
    }
}
