//! The greeting and framing of Ballast's peer protocol (`docs/peer-protocol.md`), shared by
//! the raft transport that speaks it and the harness's fault proxy that reads it.

/// Every peer connection starts with a handshake of this many bytes.
pub const HANDSHAKE_LEN: usize = 8 + 8 * 3;
/// Frames start with `len u32 LE | crc32c u32 LE`.
pub const FRAME_HEADER_LEN: usize = 8;

/// What a connection carries, named by the handshake's first eight bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raft messages, one per frame, one way.
    Messages,
    /// One `MsgSnapshot` frame, then the store's export in chunks, then an empty frame.
    Snapshot,
    /// A joining member's question for the membership, before it has an identity.
    Members,
    /// A member's one-shot question (one request frame, one answer frame).
    Query,
}

impl Kind {
    pub const fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Messages => b"BALLAST1",
            Kind::Snapshot => b"BALLASTS",
            Kind::Members => b"BALLASTM",
            Kind::Query => b"BALLASTQ",
        }
    }

    fn from_magic(m: &[u8]) -> Option<Kind> {
        [Kind::Messages, Kind::Snapshot, Kind::Members, Kind::Query]
            .into_iter()
            .find(|k| k.magic() == m)
    }
}

/// A connection's handshake: what it carries, the cluster, who sends and who receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub kind: Kind,
    pub cluster: u64,
    pub from: u64,
    pub to: u64,
}

impl Handshake {
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[..8].copy_from_slice(self.kind.magic());
        for (i, w) in [self.cluster, self.from, self.to].into_iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// `None` if the bytes are not a Ballast peer's greeting.
    pub fn decode(b: &[u8; HANDSHAKE_LEN]) -> Option<Handshake> {
        let kind = Kind::from_magic(&b[..8])?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 + i * 8..16 + i * 8]);
            u64::from_le_bytes(w)
        };
        Some(Handshake {
            kind,
            cluster: word(0),
            from: word(1),
            to: word(2),
        })
    }
}

/// The header of a frame holding `body`.
pub fn frame_head(body: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    h
}

/// A frame header's (body length, body checksum).
pub fn parse_frame_head(h: &[u8; FRAME_HEADER_LEN]) -> (usize, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_round_trip_and_strangers_are_refused() {
        for kind in [Kind::Messages, Kind::Snapshot, Kind::Members, Kind::Query] {
            let h = Handshake {
                kind,
                cluster: 0xcdf8_1819_4e3a_8c32,
                from: 1,
                to: u64::MAX,
            };
            assert_eq!(Handshake::decode(&h.encode()), Some(h));
        }
        let mut junk = [0u8; HANDSHAKE_LEN];
        junk[..8].copy_from_slice(b"GET / HT");
        assert_eq!(Handshake::decode(&junk), None);
    }

    #[test]
    fn frame_heads_carry_length_and_checksum() {
        let (len, crc) = parse_frame_head(&frame_head(b"hello"));
        assert_eq!(len, 5);
        assert_eq!(crc, crc32c::crc32c(b"hello"));
    }
}
