//! The bytes of a teacher store: header, fixed-size rows, tables, footer.
//!
//! ```text
//! "BDTSTORE" | version u32 | header length u32 | header | header CRC-32
//! rows: packed indices | log-probabilities (f32/f16/bf16) | tail mass f32   (fixed size each)
//! example row starts: (examples + 1) × u64        (absent when every example is one row)
//! shard CRC-32s: one u32 per `shard_rows` rows
//! footer: rows u64 | examples u64 | flags u32 | tables CRC-32 | footer CRC-32 | "BDTSTEND"
//! ```
//!
//! Everything is little-endian. The footer is written last, so a file cut
//! short anywhere has no end marker; its length is then checked against what
//! the header and footer say it holds.

use crate::fused::math::sum_exp_shifted;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

use super::StorePrecision;

/// First bytes of every store.
pub(super) const MAGIC: &[u8; 8] = b"BDTSTORE";
/// Last bytes of every finished store.
pub(super) const END_MAGIC: &[u8; 8] = b"BDTSTEND";
/// The format this code writes and reads.
pub(super) const VERSION: u32 = 1;
/// Magic, version and header length.
pub(super) const PREAMBLE: usize = 16;
/// The footer's size in bytes.
pub(super) const FOOTER: usize = 8 + 8 + 4 + 4 + 4 + 8;
/// Footer flag: the example row-start table is present.
pub(super) const FLAG_EXAMPLE_OFFSETS: u32 = 1;
/// Longest teacher name or dataset fingerprint accepted (a sanity bound that
/// also keeps a damaged length field from allocating gigabytes).
pub(super) const MAX_TEXT: usize = 1 << 16;

/// The facts fixed when a store is created.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Header {
    pub vocab_size: u32,
    pub k: u32,
    pub temperature: f64,
    pub precision: StorePrecision,
    pub shard_rows: u32,
    pub teacher: String,
    pub dataset_fingerprint: String,
}

impl Header {
    /// Bits per stored class index: enough for `vocab_size − 1`.
    pub(crate) fn index_bits(&self) -> u32 {
        index_bits(self.vocab_size)
    }

    /// Bytes of one row's packed indices.
    pub(crate) fn index_bytes(&self) -> usize {
        (self.k as usize * self.index_bits() as usize).div_ceil(8)
    }

    /// Bytes of one row: packed indices, log-probabilities, tail mass.
    pub(crate) fn row_bytes(&self) -> usize {
        self.index_bytes() + self.k as usize * self.precision.bytes() + 4
    }

    /// The preamble, header and header checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.vocab_size.to_le_bytes());
        body.extend_from_slice(&self.k.to_le_bytes());
        body.extend_from_slice(&self.temperature.to_le_bytes());
        body.push(self.precision.code());
        body.push(self.index_bits() as u8);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&self.shard_rows.to_le_bytes());
        for text in [&self.teacher, &self.dataset_fingerprint] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text.as_bytes());
        }
        let mut out = Vec::with_capacity(PREAMBLE + body.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a header body (after the preamble, without its checksum).
    pub(crate) fn decode(body: &[u8]) -> Result<Self, String> {
        let mut r = Reader(body);
        let vocab_size = r.u32()?;
        let k = r.u32()?;
        let temperature = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let precision = StorePrecision::from_code(r.take(1)?[0])
            .ok_or_else(|| "unknown log-probability precision code".to_string())?;
        let bits = r.take(1)?[0] as u32;
        r.take(2)?;
        let shard_rows = r.u32()?;
        let teacher = r.text()?;
        let dataset_fingerprint = r.text()?;
        if !r.0.is_empty() {
            return Err(format!("{} unexpected bytes after the header", r.0.len()));
        }
        let header = Self {
            vocab_size,
            k,
            temperature,
            precision,
            shard_rows,
            teacher,
            dataset_fingerprint,
        };
        if vocab_size == 0 || k == 0 || k > vocab_size || shard_rows == 0 {
            return Err(format!(
                "impossible header (vocabulary {vocab_size}, k {k}, {shard_rows} rows per shard)"
            ));
        }
        if bits != header.index_bits() {
            return Err(format!(
                "{bits}-bit indices for a vocabulary of {vocab_size} (expected {})",
                header.index_bits()
            ));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(format!("stored temperature {temperature}"));
        }
        Ok(header)
    }
}

/// Bits needed to store every class index of a vocabulary.
pub(super) fn index_bits(vocab_size: u32) -> u32 {
    (u32::BITS - (vocab_size.max(2) - 1).leading_zeros()).max(1)
}

/// The footer's counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Footer {
    pub rows: u64,
    pub examples: u64,
    pub flags: u32,
    pub tables_crc: u32,
}

impl Footer {
    pub(crate) fn encode(&self) -> [u8; FOOTER] {
        let mut out = [0u8; FOOTER];
        out[0..8].copy_from_slice(&self.rows.to_le_bytes());
        out[8..16].copy_from_slice(&self.examples.to_le_bytes());
        out[16..20].copy_from_slice(&self.flags.to_le_bytes());
        out[20..24].copy_from_slice(&self.tables_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[0..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out[28..36].copy_from_slice(END_MAGIC);
        out
    }

    /// Parses a footer; `Err` names what is wrong.
    pub(crate) fn decode(bytes: &[u8; FOOTER]) -> Result<Self, String> {
        if &bytes[28..36] != END_MAGIC {
            return Err("no end marker: the file was cut short or never finished".into());
        }
        let stored = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        let found = crc32fast::hash(&bytes[0..24]);
        if stored != found {
            return Err(format!(
                "footer checksum {found:08x} differs from the stored {stored:08x}"
            ));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Ok(Self {
            rows: u64_at(0),
            examples: u64_at(8),
            flags: u32_at(16),
            tables_crc: u32_at(20),
        })
    }
}

/// A cursor over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("header ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        if len > MAX_TEXT {
            return Err(format!("a text field of {len} bytes"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a text field is not UTF-8".into())
    }
}

impl StorePrecision {
    /// Bytes per stored log-probability.
    pub(super) fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Bf16 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            2 => Some(Self::Bf16),
            _ => None,
        }
    }

    /// Appends `values` rounded to this precision (to nearest, ties to even).
    pub(super) fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Self::F16 => {
                // A block at a time, with the CPU's conversion instructions.
                let mut halves = [f16::ZERO; 64];
                for block in values.chunks(64) {
                    let halves = &mut halves[..block.len()];
                    halves.convert_from_f32_slice(block);
                    halves
                        .iter()
                        .for_each(|h| out.extend_from_slice(&h.to_bits().to_le_bytes()));
                }
            }
            Self::Bf16 => values
                .iter()
                .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes())),
        }
    }

    /// Appends the values stored in `bytes` to `out`, as f32.
    pub(super) fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Self::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            ),
            // bf16 is the top half of an f32.
            Self::Bf16 => out.extend(bytes.chunks_exact(2).map(|b| {
                f32::from_bits((u16::from_le_bytes(b.try_into().expect("2 bytes")) as u32) << 16)
            })),
            // Converted a block at a time: `half` uses the CPU's conversion
            // instructions (F16C) on a slice, when the CPU has them.
            Self::F16 => {
                let mut bits = [0u16; 64];
                for block in bytes.chunks(128) {
                    let n = block.len() / 2;
                    for (b, pair) in bits.iter_mut().zip(block.chunks_exact(2)) {
                        *b = u16::from_le_bytes(pair.try_into().expect("2 bytes"));
                    }
                    let start = out.len();
                    out.resize(start + n, 0.0);
                    bits[..n]
                        .reinterpret_cast::<f16>()
                        .convert_to_f32_slice(&mut out[start..]);
                }
            }
        }
    }
}

/// Appends `values` as `bits`-bit fields, least significant bit first.
pub(super) fn pack_indices(values: impl IntoIterator<Item = u32>, bits: u32, out: &mut Vec<u8>) {
    let (mut acc, mut filled) = (0u64, 0u32);
    for value in values {
        acc |= (value as u64) << filled;
        filled += bits;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
}

/// Reads `count` `bits`-bit fields written by [`pack_indices`] into `out`:
/// each from the 8 bytes at its first bit (fewer at the end of `bytes`).
pub(super) fn unpack_indices(bytes: &[u8], bits: u32, count: usize, out: &mut Vec<i64>) {
    let mask = (1u64 << bits) - 1;
    out.extend((0..count).map(|i| {
        let bit = i * bits as usize;
        let at = bit / 8;
        let word = match bytes.get(at..at + 8) {
            Some(eight) => u64::from_le_bytes(eight.try_into().expect("8 bytes")),
            None => {
                let mut word = [0u8; 8];
                word[..bytes.len() - at].copy_from_slice(&bytes[at..]);
                u64::from_le_bytes(word)
            }
        };
        ((word >> (bit % 8)) & mask) as i64
    }));
}

/// `Σ exp(v)` over log-probabilities (each at most 0.01), in f64.
pub(super) fn sum_exp(values: &[f32]) -> f64 {
    sum_exp_shifted(values, 0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bits_cover_the_largest_class() {
        for (vocab, bits) in [
            (1, 1),
            (2, 1),
            (3, 2),
            (10, 4),
            (16, 4),
            (17, 5),
            (32000, 15),
        ] {
            assert_eq!(index_bits(vocab), bits, "vocab {vocab}");
        }
        assert_eq!(index_bits(128_256), 17);
        assert_eq!(index_bits(u32::MAX), 32);
    }

    #[test]
    fn packed_indices_come_back() {
        for bits in [1u32, 3, 7, 8, 15, 17, 31, 32] {
            let max = if bits == 32 {
                u32::MAX
            } else {
                (1u32 << bits) - 1
            };
            let values: Vec<u32> = (0..37u32)
                .map(|i| (i.wrapping_mul(2_654_435_761)) & max)
                .chain([0, max])
                .collect();
            let mut bytes = Vec::new();
            pack_indices(values.iter().copied(), bits, &mut bytes);
            assert_eq!(bytes.len(), (values.len() * bits as usize).div_ceil(8));
            let mut back = Vec::new();
            unpack_indices(&bytes, bits, values.len(), &mut back);
            let expected: Vec<i64> = values.iter().map(|&v| v as i64).collect();
            assert_eq!(back, expected, "{bits} bits");
        }
    }

    #[test]
    fn stored_values_decode_to_the_rounded_value() {
        // 130 values: two f16 blocks of 64 and a partial third.
        let values: Vec<f32> = (0..130)
            .map(|i| -(i as f32) * 0.731 - 1e-3)
            .chain([0.0, -70_000.0, f32::NEG_INFINITY, -6.0e-8])
            .collect();
        for precision in [
            StorePrecision::F32,
            StorePrecision::F16,
            StorePrecision::Bf16,
        ] {
            let mut bytes = Vec::new();
            precision.encode_into(&values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * precision.bytes());
            let mut back = Vec::new();
            precision.decode_into(&bytes, &mut back);
            let expected: Vec<f32> = values
                .iter()
                .map(|&v| match precision {
                    StorePrecision::F32 => v,
                    StorePrecision::F16 => f16::from_f32(v).to_f32(),
                    StorePrecision::Bf16 => bf16::from_f32(v).to_f32(),
                })
                .collect();
            assert_eq!(back, expected, "{precision:?}");
        }
        // f16's range ends at −65504: beyond it, probability 0.
        let mut bytes = Vec::new();
        StorePrecision::F16.encode_into(&[-70_000.0], &mut bytes);
        let mut back = Vec::new();
        StorePrecision::F16.decode_into(&bytes, &mut back);
        assert_eq!(back, [f32::NEG_INFINITY]);
    }

    #[test]
    fn header_round_trips_and_its_damage_is_named() {
        let header = Header {
            vocab_size: 32000,
            k: 64,
            temperature: 2.5,
            precision: StorePrecision::Bf16,
            shard_rows: 4096,
            teacher: "llama-3-8b".into(),
            dataset_fingerprint: "sha256:abc".into(),
        };
        let bytes = header.encode();
        let body = &bytes[PREAMBLE..bytes.len() - 4];
        assert_eq!(Header::decode(body).unwrap(), header);
        assert_eq!(header.row_bytes(), 120 + 128 + 4);
        let mut bad = body.to_vec();
        bad[4..8].copy_from_slice(&40000u32.to_le_bytes()); // k > vocab
        assert!(
            Header::decode(&bad)
                .unwrap_err()
                .contains("impossible header")
        );
    }
}
