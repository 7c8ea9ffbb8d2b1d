//! Embedding codecs. Every codec is named in the message and decodable by the rule documented in
//! `proto/retina/v1/retina.proto`; [`decode`] is that rule in Rust.

use crate::pb::{self, EmbeddingCodec};

/// Scales `v` to unit L2 norm in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Encodes an L2-normalised vector.
pub fn encode(v: &[f32], codec: EmbeddingCodec) -> pb::Embedding {
    let (scale, data) = match codec {
        EmbeddingCodec::Int8 => {
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 0.0 };
            let data = v
                .iter()
                .map(|x| {
                    if scale > 0.0 {
                        (x / scale).round().clamp(-127.0, 127.0) as i8 as u8
                    } else {
                        0
                    }
                })
                .collect();
            (scale, data)
        }
        // F32, and the fallback for codecs this node does not produce.
        _ => (0.0, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    let codec = match codec {
        EmbeddingCodec::Int8 => EmbeddingCodec::Int8,
        _ => EmbeddingCodec::F32,
    };
    pb::Embedding {
        codec: codec as i32,
        dimension: v.len() as u32,
        scale,
        data,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("unknown embedding codec {0}")]
    UnknownCodec(i32),
    #[error("{codec} embedding of dimension {dimension} needs {expected} bytes, got {actual}")]
    Length {
        codec: &'static str,
        dimension: u32,
        expected: usize,
        actual: usize,
    },
}

pub fn decode(e: &pb::Embedding) -> Result<Vec<f32>, DecodeError> {
    let dimension = e.dimension as usize;
    let check = |codec: &'static str, expected: usize| {
        if e.data.len() == expected {
            Ok(())
        } else {
            Err(DecodeError::Length {
                codec,
                dimension: e.dimension,
                expected,
                actual: e.data.len(),
            })
        }
    };
    match EmbeddingCodec::try_from(e.codec) {
        Ok(EmbeddingCodec::F32) => {
            check("f32", dimension * 4)?;
            Ok(e.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }
        Ok(EmbeddingCodec::Int8) => {
            check("int8", dimension)?;
            Ok(e.data.iter().map(|&b| f32::from(b as i8) * e.scale).collect())
        }
        _ => Err(DecodeError::UnknownCodec(e.codec)),
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 0.0 }
}

pub fn codec_name(codec: i32) -> &'static str {
    match EmbeddingCodec::try_from(codec) {
        Ok(EmbeddingCodec::F32) => "f32",
        Ok(EmbeddingCodec::Int8) => "int8",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vector(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic, varied values without a random number crate.
        let mut v: Vec<f32> = (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.3)
            .collect();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn int8_round_trip_is_within_half_a_step_and_a_quarter_of_the_size() {
        let v = unit_vector(1280, 7);
        let e = encode(&v, EmbeddingCodec::Int8);
        assert_eq!(e.data.len(), 1280);
        let back = decode(&e).unwrap();
        let max_err = v.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_err <= e.scale / 2.0 + 1e-7, "{max_err} vs step {}", e.scale);
        assert!(cosine(&v, &back) > 0.9999);
        // The largest component maps to exactly +-127.
        assert!(e.data.iter().any(|&b| (b as i8).unsigned_abs() == 127));
    }

    #[test]
    fn f32_round_trip_is_exact() {
        let v = unit_vector(16, 3);
        assert_eq!(decode(&encode(&v, EmbeddingCodec::F32)).unwrap(), v);
    }

    #[test]
    fn zero_vector_and_bad_messages() {
        let mut zero = vec![0.0; 8];
        l2_normalize(&mut zero);
        assert_eq!(decode(&encode(&zero, EmbeddingCodec::Int8)).unwrap(), zero);
        let mut e = encode(&unit_vector(8, 1), EmbeddingCodec::Int8);
        e.data.pop();
        assert!(matches!(
            decode(&e),
            Err(DecodeError::Length {
                expected: 8,
                actual: 7,
                ..
            })
        ));
        e.codec = 99;
        assert_eq!(decode(&e), Err(DecodeError::UnknownCodec(99)));
    }

    #[test]
    fn normalising_keeps_direction() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
