// edge: this file is edge's, not h3's (vendor/README.md): a fast Huffman coder for
// QPACK string literals, checked against h3's own encoder and decoder (encode.rs,
// decode.rs), which stay as they were.

use super::decode::Error;
use super::encode::{EncodeValue, HPACK_STRING};
use super::BitWindow;

/// Each byte's code and bit length, read once from h3's table.
const fn code_of(value: &EncodeValue) -> (u64, u32) {
    let mut code = 0u64;
    let mut rest = value.bit_count;
    let mut i = 0;
    while i < value.buffer.len() {
        let bits = if rest < 8 { rest } else { 8 };
        code = (code << bits) | (value.buffer[i] as u64 & ((1 << bits) - 1));
        rest -= bits;
        i += 1;
    }
    (code, value.bit_count)
}

const CODES: [(u64, u32); 256] = {
    let mut codes = [(0, 0); 256];
    let mut i = 0;
    while i < 256 {
        codes[i] = code_of(&HPACK_STRING[i]);
        i += 1;
    }
    codes
};

/// Huffman-codes `value`: codes go through a 64-bit accumulator a whole byte at a time,
/// into a buffer sized up front, where h3's encoder walks bit windows over a buffer grown
/// byte by byte. The output is the same (tests below).
pub fn encode(value: &[u8]) -> Vec<u8> {
    let bits: usize = value.iter().map(|&b| CODES[b as usize].1 as usize).sum();
    let mut out = Vec::with_capacity(bits.div_ceil(8));
    let mut pending = 0u64;
    let mut count = 0u32;
    for &byte in value {
        let (code, len) = CODES[byte as usize];
        // At most 7 pending bits plus a code of at most 30: the low 37 bits hold them.
        pending = (pending << len) | code;
        count += len;
        while count >= 8 {
            count -= 8;
            out.push((pending >> count) as u8);
        }
    }
    if count > 0 {
        // Padded with the most significant bits of EOS, all ones (RFC 7541 5.2).
        out.push(((pending << (8 - count)) as u8) | (0xFF >> count));
    }
    out
}

// The decoder. RFC 7541's code is canonical: the codes of one length
// are consecutive and in symbol order, each length's first code following the last of
// the length before. So the next symbol is found by reading the next L bits for L = 5,
// 6, ... until they fall below the end of length L's codes, with no per-bit tree walk.

/// EOS (RFC 7541 appendix B): a decoder meeting it in a string fails.
const EOS: (u64, u32) = (0x3fff_ffff, 30);

/// Per code length: its first code, how many codes it has, and where its symbols start
/// in `symbols`, which lists every symbol (256 is EOS) by length, then code.
struct Canonical {
    first: [u64; 31],
    count: [u64; 31],
    offset: [usize; 31],
    symbols: [u16; 257],
}

/// The code and bit length of `symbol` (256: EOS).
const fn code(symbol: usize) -> (u64, u32) {
    if symbol == 256 {
        EOS
    } else {
        CODES[symbol]
    }
}

const CANONICAL: Canonical = {
    let mut count = [0u64; 31];
    let mut symbol = 0;
    while symbol < 257 {
        count[code(symbol).1 as usize] += 1;
        symbol += 1;
    }
    let mut first = [0u64; 31];
    let mut offset = [0usize; 31];
    let mut len = 1;
    while len < 31 {
        first[len] = (first[len - 1] + count[len - 1]) << 1;
        offset[len] = offset[len - 1] + count[len - 1] as usize;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut symbol = 0;
    while symbol < 257 {
        let (bits, len) = code(symbol);
        let len = len as usize;
        // The property this decoder rests on, checked as the table is built.
        assert!(bits == first[len] + (next[len] - offset[len]) as u64);
        symbols[next[len]] = symbol as u16;
        next[len] += 1;
        symbol += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
};

fn failed_at(bit: usize) -> Error {
    Error::MissingBits(BitWindow {
        byte: (bit / 8) as u32,
        bit: (bit % 8) as u32,
        count: 0,
    })
}

/// Decodes a Huffman-coded string: an error for EOS in it, or for padding longer than 7
/// bits or not all ones (RFC 7541 5.2).
pub fn decode(input: &[u8]) -> Result<Vec<u8>, Error> {
    let table = &CANONICAL;
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let mut pending = 0u64;
    let mut count = 0u32;
    let mut read = 0;
    loop {
        while count <= 56 && read < input.len() {
            pending = (pending << 8) | input[read] as u64;
            count += 8;
            read += 1;
        }
        if count == 0 {
            return Ok(out);
        }
        let mut len = 5;
        let found = loop {
            if len > count {
                break None;
            }
            let code = (pending >> (count - len)) & ((1 << len) - 1);
            if code < table.first[len as usize] + table.count[len as usize] {
                break Some(code);
            }
            len += 1;
        };
        let at = read * 8 - count as usize;
        match found {
            Some(code) => {
                let len = len as usize;
                let symbol = table.symbols[table.offset[len] + (code - table.first[len]) as usize];
                if symbol == 256 {
                    return Err(failed_at(at));
                }
                out.push(symbol as u8);
                count -= len as u32;
            }
            None => {
                let padding = pending & ((1 << count) - 1);
                if count > 7 || padding != (1 << count) - 1 {
                    return Err(failed_at(at));
                }
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HpackStringDecode, HpackStringEncode};
    use super::*;

    fn reference_encode(value: &[u8]) -> Vec<u8> {
        value.to_vec().hpack_encode().unwrap()
    }

    #[test]
    fn fast_encoder_matches_the_reference() {
        let mut values: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        values.push(Vec::new());
        values.push((0..=255u8).collect());
        values.push((0..=255u8).rev().cycle().take(1000).collect());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let value = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            values.push(value);
        }
        for value in values {
            assert_eq!(encode(&value), reference_encode(&value), "{value:?}");
        }
    }

    fn reference_decode(input: &[u8]) -> Result<Vec<u8>, Error> {
        input.to_vec().hpack_decode().collect()
    }

    #[test]
    fn fast_decoder_agrees_with_the_reference() {
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut random = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        // Strings that decode: every byte alone, all of them, random ones.
        for b in 0..=255u8 {
            inputs.push(encode(&[b]));
        }
        inputs.push(encode(&(0..=255u8).collect::<Vec<_>>()));
        for len in 0..200 {
            let plain = random(len);
            inputs.push(encode(&plain));
        }
        // And what may not: random bytes, truncated and extended codes, EOS, padding.
        for len in 0..64 {
            for _ in 0..50 {
                inputs.push(random(len));
            }
        }
        for mut valid in inputs.clone() {
            valid.pop();
            inputs.push(valid);
        }
        for extra in [0x00, 0x7f, 0xfe, 0xff] {
            let mut valid = encode(b"www.example.com");
            valid.push(extra);
            inputs.push(valid);
        }
        inputs.push(vec![0xff, 0xff, 0xff, 0xfc]);
        inputs.push(vec![0xff, 0xff, 0xff, 0xff]);
        let mut failures = 0;
        for input in &inputs {
            let fast = decode(input);
            let slow = reference_decode(input);
            match (&fast, &slow) {
                (Ok(fast), Ok(slow)) => assert_eq!(fast, slow, "{input:?}"),
                (Ok(fast), Err(e)) => panic!("{input:?}: {fast:?}, the reference failed: {e:?}"),
                // Stricter than the reference, never laxer: h3's decoder lets some padding
                // that is not all ones pass (RFC 7541 5.2 makes it an error). Then the
                // input is no string's encoding.
                (Err(_), Ok(slow)) => {
                    assert_ne!(&encode(slow), input, "{input:?}")
                }
                (Err(_), Err(_)) => {}
            }
            failures += usize::from(fast.is_err());
        }
        // Both kinds were met.
        assert!(failures > 100 && failures < inputs.len() - 400, "{failures}");
        for b in 0..=255u8 {
            assert_eq!(decode(&encode(&[b])).unwrap(), vec![b]);
        }
        for len in 0..300 {
            let plain = random(len);
            assert_eq!(decode(&encode(&plain)).unwrap(), plain);
        }
        // Padding: all ones and at most 7 bits, and no EOS.
        assert!(decode(&[0b1001_1000, 0b1000_1101]).is_err());
        assert_eq!(decode(&[0b1001_1000, 0b1001_1111]).unwrap(), b"gc");
        assert!(decode(&[0b1001_1000, 0b1001_1111, 0xff]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xfc]).is_err());
    }
}
