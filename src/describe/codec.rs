//! Embedding codecs. Every codec is named in the message and decodable by the rule documented in
//! `proto/retina/v1/retina.proto`; [`decode`] is that rule in Rust, [`Encoder`] the encoder side
//! and [`similarity`] the comparison the proto allows.

use std::fmt;
use std::sync::Arc;

use super::projection::Projection;
pub use crate::config::CodecKind;
use crate::pb::{self, EmbeddingCodec};

/// Why a codec setting cannot be used. Carries no config path: the caller wraps it into its
/// config error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EncoderError {
    #[error("codec {codec} needs a projection, and the embedder has none")]
    NeedsProjection { codec: CodecKind },
    #[error("codec {codec} needs a dimension; available: {available}")]
    NeedsDimension { codec: CodecKind, available: String },
    #[error("codec {codec} cannot produce dimension {dimension}; available: {available}")]
    DimensionNotOffered {
        codec: CodecKind,
        dimension: usize,
        available: String,
    },
    #[error("codec {codec} keeps the embedder's dimension; a dimension only applies to pca-int8 and binary")]
    DimensionNotApplicable { codec: CodecKind },
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("embedding has {actual} values, the projection takes {expected}")]
    Dimension { expected: usize, actual: usize },
    #[error("embedding is zero or not finite")]
    NotFinite,
}

/// Encodes raw embedder outputs with one configured codec.
#[derive(Debug, Clone)]
pub struct Encoder {
    kind: CodecKind,
    /// Projected kinds, and only they: the projection and d, the projected dimension (pca-int8)
    /// or number of bits (binary).
    projected: Option<(Arc<Projection>, usize)>,
}

impl Encoder {
    pub fn new(
        kind: CodecKind,
        dimension: Option<usize>,
        projection: Option<Arc<Projection>>,
    ) -> Result<Encoder, EncoderError> {
        if !kind.is_projected() {
            if dimension.is_some() {
                return Err(EncoderError::DimensionNotApplicable { codec: kind });
            }
            // An embedder may ship a projection while the node sends float codes: not an error,
            // just unused.
            return Ok(Encoder { kind, projected: None });
        }
        let Some(projection) = projection else {
            return Err(EncoderError::NeedsProjection { codec: kind });
        };
        let (offered, available) = match kind {
            CodecKind::Binary => {
                let sizes = projection.binary_sizes();
                let available = if sizes.is_empty() {
                    format!("none (projection {} has no rotation_<d> tensor)", projection.id())
                } else {
                    sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                };
                (dimension.is_some_and(|d| sizes.contains(&d)), available)
            }
            _ => {
                let k = projection.max_dimension();
                (dimension.is_some_and(|d| (1..=k).contains(&d)), format!("1..={k}"))
            }
        };
        match dimension {
            None => Err(EncoderError::NeedsDimension { codec: kind, available }),
            Some(d) if !offered => Err(EncoderError::DimensionNotOffered {
                codec: kind,
                dimension: d,
                available,
            }),
            Some(d) => Ok(Encoder {
                kind,
                projected: Some((projection, d)),
            }),
        }
    }

    pub fn kind(&self) -> CodecKind {
        self.kind
    }

    /// Projected kinds: d. Float kinds: None (the embedder's dimension).
    pub fn dimension(&self) -> Option<usize> {
        self.projected.as_ref().map(|(_, d)| *d)
    }

    pub fn projection(&self) -> Option<&Arc<Projection>> {
        self.projected.as_ref().map(|(p, _)| p)
    }

    /// Size of `Embedding.data` for an embedder output of `input_dimension` values.
    pub fn bytes_per_vector(&self, input_dimension: usize) -> usize {
        let d = self.dimension().unwrap_or(0);
        match self.kind {
            CodecKind::F32 => 4 * input_dimension,
            CodecKind::F16 => 2 * input_dimension,
            CodecKind::Int8 => input_dimension,
            CodecKind::PcaInt8 => d,
            CodecKind::Binary => d / 8,
        }
    }

    /// Encodes a raw embedder output (not necessarily normalised).
    pub fn encode(&self, x: &[f32]) -> Result<pb::Embedding, EncodeError> {
        let Some((projection, d)) = &self.projected else {
            let x = unit(x).ok_or(EncodeError::NotFinite)?;
            return Ok(encode_float(&x, self.kind.codec()));
        };
        let d = *d;
        let x = unit(x).ok_or(EncodeError::NotFinite)?;
        let mut y = Vec::with_capacity(d);
        // False only for a vector of the wrong length: `new` checked d against the projection.
        if !projection.project(&x, d, &mut y) {
            return Err(EncodeError::Dimension {
                expected: projection.input_dimension(),
                actual: x.len(),
            });
        }
        // The proto scales y to unit norm; x == m (or a projection that cancels x) leaves nothing.
        if !l2_normalize(&mut y) {
            return Err(EncodeError::NotFinite);
        }
        let (scale, data) = match self.kind {
            CodecKind::Binary => {
                let mut z = Vec::with_capacity(d);
                if !projection.rotate(&y, &mut z) {
                    // `new` only accepts sizes the projection has a rotation for.
                    return Err(EncodeError::Dimension {
                        expected: projection.input_dimension(),
                        actual: x.len(),
                    });
                }
                (0.0, pack_signs(&z))
            }
            _ => quantise_int8(&y),
        };
        Ok(pb::Embedding {
            codec: self.kind.codec() as i32,
            dimension: d as u32,
            scale,
            data,
            projection_id: projection.id().to_string(),
        })
    }
}

impl fmt::Display for Encoder {
    /// For logs: "int8", "pca-int8 x128 (projection p)", "binary 256 bits (projection p)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.projected) {
            (CodecKind::PcaInt8, Some((p, d))) => write!(f, "pca-int8 x{d} (projection {})", p.id()),
            (CodecKind::Binary, Some((p, d))) => write!(f, "binary {d} bits (projection {})", p.id()),
            (kind, _) => f.write_str(kind.name()),
        }
    }
}

/// A unit-norm copy of `v`, or None if it has no direction (zero, or a non-finite value).
fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let mut v = v.to_vec();
    l2_normalize(&mut v).then_some(v)
}

fn quantise_int8(v: &[f32]) -> (f32, Vec<u8>) {
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

/// Bit i is 1 iff z[i] >= 0, stored in byte i / 8 at bit i % 8, least significant first.
fn pack_signs(z: &[f32]) -> Vec<u8> {
    let mut data = vec![0u8; z.len().div_ceil(8)];
    for (i, _) in z.iter().enumerate().filter(|(_, v)| **v >= 0.0) {
        data[i / 8] |= 1 << (i % 8);
    }
    data
}

/// F32, INT8 or F16 of `v` as given; any other codec falls back to F32.
fn encode_float(v: &[f32], codec: EmbeddingCodec) -> pb::Embedding {
    let (codec, scale, data) = match codec {
        EmbeddingCodec::Int8 => {
            let (scale, data) = quantise_int8(v);
            (codec, scale, data)
        }
        EmbeddingCodec::F16 => (
            codec,
            0.0,
            v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        ),
        _ => (
            EmbeddingCodec::F32,
            0.0,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    pb::Embedding {
        codec: codec as i32,
        dimension: v.len() as u32,
        scale,
        data,
        projection_id: String::new(),
    }
}

/// Scales `v` to unit L2 norm in place; false, leaving it as it was, if it has no direction (zero,
/// or a non-finite value). The norm is summed in f64 so that large but finite outputs do not
/// overflow to infinity, nor tiny ones underflow to zero.
pub fn l2_normalize(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return false;
    }
    v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
    true
}

/// The dot product; the cosine similarity of unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
    #[error("binary embedding dimension {0} is not a multiple of 8")]
    BinaryDimension(u32),
    #[error("embeddings are not comparable: {a} vs {b}")]
    Incomparable { a: String, b: String },
}

/// Checks `e.data` has the length its codec and dimension call for, and returns the codec.
fn checked_codec(e: &pb::Embedding) -> Result<EmbeddingCodec, DecodeError> {
    let dimension = e.dimension as usize;
    let (codec, expected) = match EmbeddingCodec::try_from(e.codec) {
        Ok(c @ EmbeddingCodec::F32) => (c, dimension * 4),
        Ok(c @ EmbeddingCodec::F16) => (c, dimension * 2),
        Ok(c @ (EmbeddingCodec::Int8 | EmbeddingCodec::PcaInt8)) => (c, dimension),
        Ok(c @ EmbeddingCodec::Binary) => {
            if !dimension.is_multiple_of(8) {
                return Err(DecodeError::BinaryDimension(e.dimension));
            }
            (c, dimension / 8)
        }
        Ok(EmbeddingCodec::Unspecified) | Err(_) => return Err(DecodeError::UnknownCodec(e.codec)),
    };
    if e.data.len() != expected {
        return Err(DecodeError::Length {
            codec: codec_name(e.codec),
            dimension: e.dimension,
            expected,
            actual: e.data.len(),
        });
    }
    Ok(codec)
}

pub fn decode(e: &pb::Embedding) -> Result<Vec<f32>, DecodeError> {
    Ok(match checked_codec(e)? {
        EmbeddingCodec::F32 => e
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        EmbeddingCodec::F16 => e
            .data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        EmbeddingCodec::Binary => {
            let magnitude = 1.0 / (e.dimension as f32).sqrt();
            (0..e.dimension as usize)
                .map(|i| {
                    if e.data[i / 8] >> (i % 8) & 1 == 1 {
                        magnitude
                    } else {
                        -magnitude
                    }
                })
                .collect()
        }
        // INT8 and PCA_INT8; `checked_codec` lets no other codec through.
        _ => e.data.iter().map(|&b| f32::from(b as i8) * e.scale).collect(),
    })
}

/// Which codecs may be compared with each other (see the `Embedding` message).
fn family(codec: EmbeddingCodec) -> &'static str {
    match codec {
        EmbeddingCodec::PcaInt8 => "pca-int8",
        EmbeddingCodec::Binary => "binary",
        _ => "float",
    }
}

/// Cosine similarity of two embeddings, if the proto allows comparing them: same codec family
/// (F32, F16 and INT8 are one), dimension and projection. Two binary codes are compared by Hamming
/// distance, which gives the same value as the dot product of their decoded vectors.
pub fn similarity(a: &pb::Embedding, b: &pb::Embedding) -> Result<f32, DecodeError> {
    let (codec_a, codec_b) = (checked_codec(a)?, checked_codec(b)?);
    if family(codec_a) != family(codec_b) || a.dimension != b.dimension || a.projection_id != b.projection_id {
        let describe = |e: &pb::Embedding| {
            let mut s = format!("{} x{}", codec_name(e.codec), e.dimension);
            if !e.projection_id.is_empty() {
                s.push_str(&format!(" (projection {})", e.projection_id));
            }
            s
        };
        return Err(DecodeError::Incomparable {
            a: describe(a),
            b: describe(b),
        });
    }
    if codec_a == EmbeddingCodec::Binary {
        if a.dimension == 0 {
            return Ok(0.0);
        }
        let hamming: u32 = a.data.iter().zip(&b.data).map(|(x, y)| (x ^ y).count_ones()).sum();
        return Ok(1.0 - 2.0 * hamming as f32 / a.dimension as f32);
    }
    Ok(cosine(&decode(a)?, &decode(b)?))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = dot(a, b);
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na > 0.0 && nb > 0.0 { dot / (na * nb) } else { 0.0 }
}

pub fn codec_name(codec: i32) -> &'static str {
    match EmbeddingCodec::try_from(codec) {
        Ok(EmbeddingCodec::F32) => "f32",
        Ok(EmbeddingCodec::Int8) => "int8",
        Ok(EmbeddingCodec::F16) => "f16",
        Ok(EmbeddingCodec::PcaInt8) => "pca-int8",
        Ok(EmbeddingCodec::Binary) => "binary",
        Ok(EmbeddingCodec::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ndarray::Array2;
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    use super::*;
    use crate::describe::projection::to_safetensors_bytes;
    use crate::error::Error;

    fn unit_vector(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic, varied values without a random number crate.
        let mut v: Vec<f32> = (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.3)
            .collect();
        l2_normalize(&mut v);
        v
    }

    fn random_vector(rng: &mut fastrand::Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
    }

    /// `rows` orthonormal rows of length `cols`, by Gram-Schmidt on random vectors.
    fn orthonormal(rng: &mut fastrand::Rng, rows: usize, cols: usize) -> Array2<f32> {
        let mut m = Array2::<f32>::zeros((rows, cols));
        for i in 0..rows {
            let mut v: Vec<f64> = (0..cols).map(|_| rng.f64() * 2.0 - 1.0).collect();
            // Twice, so the rows stay orthogonal to f32 precision.
            for _ in 0..2 {
                for j in 0..i {
                    let d: f64 = m.row(j).iter().zip(&v).map(|(a, b)| f64::from(*a) * b).sum();
                    v.iter_mut().zip(m.row(j)).for_each(|(x, a)| *x -= d * f64::from(*a));
                }
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            m.row_mut(i).iter_mut().zip(&v).for_each(|(a, x)| *a = (x / n) as f32);
        }
        m
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        projection: Arc<Projection>,
        mean: Vec<f32>,
        components: Array2<f32>,
        rotations: Vec<Array2<f32>>,
    }

    /// A random projection from D = 64 to K = 32, with rotations for 16 and 32 bits.
    fn fixture() -> Fixture {
        let mut rng = fastrand::Rng::with_seed(42);
        let mean: Vec<f32> = random_vector(&mut rng, 64).iter().map(|x| x * 0.05).collect();
        let components = orthonormal(&mut rng, 32, 64);
        let rotations = vec![orthonormal(&mut rng, 16, 16), orthonormal(&mut rng, 32, 32)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        std::fs::write(&path, to_safetensors_bytes(&mean, &components, &rotations).unwrap()).unwrap();
        let projection = Arc::new(Projection::load(&path, "test-pca".into()).unwrap());
        Fixture {
            _dir: dir,
            projection,
            mean,
            components,
            rotations,
        }
    }

    /// y = P_d (x - m) scaled to unit norm, written out naively as the proto says.
    fn projected(f: &Fixture, x: &[f32], d: usize) -> Vec<f32> {
        let x = unit(x).unwrap();
        let mut y: Vec<f32> = (0..d)
            .map(|i| (0..x.len()).map(|j| f.components[[i, j]] * (x[j] - f.mean[j])).sum())
            .collect();
        l2_normalize(&mut y);
        y
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    }

    fn bit(data: &[u8], i: usize) -> bool {
        data[i / 8] >> (i % 8) & 1 == 1
    }

    #[test]
    fn int8_round_trip_is_within_half_a_step_and_a_quarter_of_the_size() {
        let v = unit_vector(1280, 7);
        let e = encode_float(&v, EmbeddingCodec::Int8);
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
        assert_eq!(decode(&encode_float(&v, EmbeddingCodec::F32)).unwrap(), v);
    }

    #[test]
    fn encoder_normalises_and_round_trips_every_float_codec() {
        let raw: Vec<f32> = unit_vector(1280, 11).iter().map(|x| x * 7.5).collect();
        let want = unit(&raw).unwrap();

        let f32e = Encoder::new(CodecKind::F32, None, None).unwrap().encode(&raw).unwrap();
        assert_eq!(f32e.codec, EmbeddingCodec::F32 as i32);
        assert_eq!(f32e.data.len(), 4 * 1280);
        assert_eq!(decode(&f32e).unwrap(), want);

        let f16e = Encoder::new(CodecKind::F16, None, None).unwrap().encode(&raw).unwrap();
        assert_eq!(
            (f16e.codec, f16e.dimension, f16e.data.len()),
            (EmbeddingCodec::F16 as i32, 1280, 2 * 1280)
        );
        for (a, b) in want.iter().zip(decode(&f16e).unwrap()) {
            // Relative 1e-3 (f16 keeps 11 significant bits); below f16's smallest normal value the
            // absolute step of its subnormals is what is left.
            assert!((a - b).abs() <= 1e-3 * a.abs() + 6e-8, "{a} vs {b}");
        }

        let int8e = Encoder::new(CodecKind::Int8, None, None).unwrap().encode(&raw).unwrap();
        assert!(max_abs_diff(&want, &decode(&int8e).unwrap()) <= int8e.scale / 2.0 + 1e-7);
        for e in [&f32e, &f16e, &int8e] {
            assert!(e.projection_id.is_empty());
            assert!(similarity(e, &f32e).unwrap() > 0.9999);
        }
    }

    #[test]
    fn pca_int8_is_the_projected_vector_within_half_a_step() {
        let f = fixture();
        let mut rng = fastrand::Rng::with_seed(7);
        for d in [1, 5, 16, 32] {
            let encoder = Encoder::new(CodecKind::PcaInt8, Some(d), Some(f.projection.clone())).unwrap();
            assert_eq!(encoder.bytes_per_vector(64), d);
            let x = random_vector(&mut rng, 64);
            let e = encoder.encode(&x).unwrap();
            assert_eq!(e.codec, EmbeddingCodec::PcaInt8 as i32);
            assert_eq!((e.dimension as usize, e.data.len()), (d, d));
            assert_eq!(e.projection_id, "test-pca");
            let y = projected(&f, &x, d);
            assert!(max_abs_diff(&y, &decode(&e).unwrap()) <= e.scale / 2.0 + 1e-6);
            assert!((e.scale - y.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).abs() < 1e-6);
        }
    }

    #[test]
    fn binary_bits_are_the_signs_of_the_rotated_projection() {
        let f = fixture();
        let mut rng = fastrand::Rng::with_seed(9);
        for (d, rotation) in [16, 32].into_iter().zip(&f.rotations) {
            let encoder = Encoder::new(CodecKind::Binary, Some(d), Some(f.projection.clone())).unwrap();
            assert_eq!(encoder.bytes_per_vector(64), d / 8);
            let codes: Vec<pb::Embedding> = (0..6)
                .map(|_| {
                    let x = random_vector(&mut rng, 64);
                    let e = encoder.encode(&x).unwrap();
                    let y = projected(&f, &x, d);
                    let z: Vec<f32> = (0..d).map(|i| (0..d).map(|j| rotation[[i, j]] * y[j]).sum()).collect();
                    assert_eq!((e.codec, e.dimension as usize), (EmbeddingCodec::Binary as i32, d));
                    assert_eq!(e.data.len(), d / 8);
                    for (i, zi) in z.iter().enumerate() {
                        assert_eq!(bit(&e.data, i), *zi >= 0.0, "bit {i} of z = {z:?}");
                    }
                    e
                })
                .collect();
            for a in &codes {
                let va = decode(a).unwrap();
                assert!((va.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
                for b in &codes {
                    let hamming = (0..d).filter(|&i| bit(&a.data, i) != bit(&b.data, i)).count();
                    let s = similarity(a, b).unwrap();
                    assert_eq!(s, 1.0 - 2.0 * hamming as f32 / d as f32);
                    let dot: f32 = va.iter().zip(decode(b).unwrap()).map(|(x, y)| x * y).sum();
                    assert!((s - dot).abs() < 1e-5, "{s} vs {dot}");
                }
            }
        }
    }

    /// Identity components and rotation (16 x 16) around `mean`.
    fn identity_projection(mean: &[f32]) -> Arc<Projection> {
        let identity = Array2::<f32>::eye(16);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.safetensors");
        let bytes = to_safetensors_bytes(mean, &identity, std::slice::from_ref(&identity)).unwrap();
        std::fs::write(&path, bytes).unwrap();
        Arc::new(Projection::load(&path, "id".into()).unwrap())
    }

    #[test]
    fn binary_bit_order_is_pinned() {
        // Identity projection and rotation: the code is the signs of x itself.
        let encoder = Encoder::new(CodecKind::Binary, Some(16), Some(identity_projection(&[0.0; 16]))).unwrap();
        let mut x = [-1.0f32; 16];
        for i in [0, 3, 8, 15] {
            x[i] = 1.0;
        }
        let e = encoder.encode(&x).unwrap();
        // Bits 0 and 3 of byte 0; bits 0 and 7 of byte 1.
        assert_eq!(e.data, vec![0b0000_1001, 0b1000_0001]);
        let v = decode(&e).unwrap();
        assert_eq!(v, x.iter().map(|s| s / 4.0).collect::<Vec<_>>());
    }

    #[test]
    fn zero_vector_and_bad_messages() {
        let mut zero = vec![0.0; 8];
        l2_normalize(&mut zero);
        assert_eq!(decode(&encode_float(&zero, EmbeddingCodec::Int8)).unwrap(), zero);
        let mut e = encode_float(&unit_vector(8, 1), EmbeddingCodec::Int8);
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
        e.codec = EmbeddingCodec::Unspecified as i32;
        assert_eq!(decode(&e), Err(DecodeError::UnknownCodec(0)));
    }

    #[test]
    fn wrong_lengths_are_errors_for_every_codec() {
        let message = |codec: EmbeddingCodec, dimension: u32, bytes: usize| pb::Embedding {
            codec: codec as i32,
            dimension,
            scale: 0.1,
            data: vec![0; bytes],
            projection_id: String::new(),
        };
        for (codec, per_value) in [
            (EmbeddingCodec::F32, 4),
            (EmbeddingCodec::F16, 2),
            (EmbeddingCodec::PcaInt8, 1),
        ] {
            assert!(decode(&message(codec, 8, 8 * per_value)).is_ok());
            assert!(matches!(
                decode(&message(codec, 8, 8 * per_value + 1)),
                Err(DecodeError::Length { actual, .. }) if actual == 8 * per_value + 1
            ));
        }
        assert_eq!(decode(&message(EmbeddingCodec::Binary, 16, 2)).unwrap().len(), 16);
        assert!(matches!(
            decode(&message(EmbeddingCodec::Binary, 16, 16)),
            Err(DecodeError::Length {
                expected: 2,
                actual: 16,
                ..
            })
        ));
        assert_eq!(
            decode(&message(EmbeddingCodec::Binary, 12, 2)),
            Err(DecodeError::BinaryDimension(12))
        );
        // similarity checks lengths before its fast path reads the bytes.
        assert!(
            similarity(
                &message(EmbeddingCodec::Binary, 16, 2),
                &message(EmbeddingCodec::Binary, 16, 1)
            )
            .is_err()
        );
    }

    #[test]
    fn encoder_rejects_bad_vectors_without_panicking() {
        let f = fixture();
        for (kind, d) in [(CodecKind::PcaInt8, Some(8)), (CodecKind::Binary, Some(16))] {
            let encoder = Encoder::new(kind, d, Some(f.projection.clone())).unwrap();
            assert_eq!(
                encoder.encode(&[1.0; 63]),
                Err(EncodeError::Dimension {
                    expected: 64,
                    actual: 63
                })
            );
            assert_eq!(encoder.encode(&[0.0; 64]), Err(EncodeError::NotFinite));
        }
        // x at the mean projects to nothing: there is no direction to code.
        let mut mean = [0.0; 16];
        mean[2] = 1.0;
        for (kind, d) in [(CodecKind::PcaInt8, 16), (CodecKind::Binary, 16)] {
            let encoder = Encoder::new(kind, Some(d), Some(identity_projection(&mean))).unwrap();
            let x: Vec<f32> = mean.iter().map(|m| m * 5.0).collect();
            assert_eq!(encoder.encode(&x), Err(EncodeError::NotFinite));
        }
        let mut nan = vec![0.5; 64];
        nan[3] = f32::NAN;
        for kind in [CodecKind::F32, CodecKind::F16, CodecKind::Int8] {
            let encoder = Encoder::new(kind, None, None).unwrap();
            assert_eq!(encoder.encode(&nan), Err(EncodeError::NotFinite));
            assert_eq!(encoder.encode(&[0.0; 4]), Err(EncodeError::NotFinite));
            assert_eq!(encoder.encode(&[f32::INFINITY, 1.0]), Err(EncodeError::NotFinite));
            assert_eq!(encoder.encode(&[]), Err(EncodeError::NotFinite));
            // Large but finite still has a direction.
            assert!(encoder.encode(&[3e30, 4e30]).is_ok());
        }
    }

    #[test]
    fn encoder_settings_are_checked() {
        let f = fixture();
        let p = || Some(f.projection.clone());
        let err = |kind, d, p| Encoder::new(kind, d, p).unwrap_err().to_string();
        assert_eq!(
            err(CodecKind::Binary, Some(24), p()),
            "codec binary cannot produce dimension 24; available: 16, 32"
        );
        assert_eq!(
            err(CodecKind::Binary, None, p()),
            "codec binary needs a dimension; available: 16, 32"
        );
        assert_eq!(
            err(CodecKind::PcaInt8, Some(33), p()),
            "codec pca-int8 cannot produce dimension 33; available: 1..=32"
        );
        assert!(Encoder::new(CodecKind::PcaInt8, Some(0), p()).is_err());
        assert_eq!(
            err(CodecKind::PcaInt8, Some(8), None),
            "codec pca-int8 needs a projection, and the embedder has none"
        );
        assert!(matches!(
            Encoder::new(CodecKind::Int8, Some(8), None),
            Err(EncoderError::DimensionNotApplicable { codec: CodecKind::Int8 })
        ));
        // A projection is simply unused by float codecs.
        let int8 = Encoder::new(CodecKind::Int8, None, p()).unwrap();
        assert!(int8.projection().is_none());
        assert_eq!(int8.to_string(), "int8");
        assert_eq!(int8.bytes_per_vector(64), 64);
        let binary = Encoder::new(CodecKind::Binary, Some(32), p()).unwrap();
        assert_eq!(binary.to_string(), "binary 32 bits (projection test-pca)");
        assert_eq!((binary.kind(), binary.dimension()), (CodecKind::Binary, Some(32)));
        assert_eq!(
            Encoder::new(CodecKind::PcaInt8, Some(8), p()).unwrap().to_string(),
            "pca-int8 x8 (projection test-pca)"
        );
    }

    #[test]
    fn only_comparable_embeddings_are_compared() {
        let f = fixture();
        let mut rng = fastrand::Rng::with_seed(3);
        let x = random_vector(&mut rng, 64);
        let encode_with = |kind, d| {
            Encoder::new(kind, d, Some(f.projection.clone()))
                .unwrap()
                .encode(&x)
                .unwrap()
        };
        let f32e = encode_with(CodecKind::F32, None);
        let f16e = encode_with(CodecKind::F16, None);
        let int8e = encode_with(CodecKind::Int8, None);
        let pca8 = encode_with(CodecKind::PcaInt8, Some(8));
        let pca16 = encode_with(CodecKind::PcaInt8, Some(16));
        let bin16 = encode_with(CodecKind::Binary, Some(16));
        let bin32 = encode_with(CodecKind::Binary, Some(32));
        assert!(similarity(&f16e, &int8e).unwrap() > 0.999);
        assert!(similarity(&pca8, &pca8).unwrap() > 0.9999);
        assert_eq!(similarity(&bin16, &bin16), Ok(1.0));
        let mut other_projection = pca8.clone();
        other_projection.projection_id = "other".into();
        let short_f32 = encode_float(&unit_vector(32, 1), EmbeddingCodec::F32);
        for (a, b) in [
            (&f32e, &pca16),
            (&pca16, &bin16),
            (&int8e, &bin16),
            (&pca8, &pca16),
            (&bin16, &bin32),
            (&pca8, &other_projection),
            (&f32e, &short_f32),
        ] {
            assert!(
                matches!(similarity(a, b), Err(DecodeError::Incomparable { .. })),
                "{a:?} vs {b:?}"
            );
        }
        assert_eq!(
            similarity(&pca8, &bin16).unwrap_err().to_string(),
            "embeddings are not comparable: pca-int8 x8 (projection test-pca) vs binary x16 (projection test-pca)"
        );
    }

    #[test]
    fn codec_names() {
        let names: Vec<&str> = (0..=6).map(codec_name).collect();
        assert_eq!(
            names,
            ["unspecified", "f32", "int8", "f16", "pca-int8", "binary", "unknown"]
        );
        for kind in [
            CodecKind::F32,
            CodecKind::F16,
            CodecKind::Int8,
            CodecKind::PcaInt8,
            CodecKind::Binary,
        ] {
            assert_eq!(codec_name(kind.codec() as i32), kind.name());
            // The config spells kinds as the proto's names do here.
            let parsed: CodecKind = serde_json::from_str(&format!("\"{}\"", kind.name())).unwrap();
            assert_eq!(parsed, kind);
            assert_eq!(
                kind.is_projected(),
                matches!(kind, CodecKind::PcaInt8 | CodecKind::Binary)
            );
        }
    }

    /// A projection file with the given tensors, each as (name, dtype, shape, little-endian bytes).
    fn write_tensors(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> std::path::PathBuf {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| (*name, TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
            .collect();
        let path = dir.join("p.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        path
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn projection_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let eye = |n: usize| f32_bytes(Array2::<f32>::eye(n).iter().copied());
        let mean = ("mean", Dtype::F32, vec![8], f32_bytes([0.0; 8]));
        let components = ("components", Dtype::F32, vec![8, 8], eye(8));
        let load_error = |tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]| {
            let path = write_tensors(dir.path(), tensors);
            let err = Projection::load(&path, "p".into()).unwrap_err();
            assert!(matches!(err, Error::Manifest { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        };

        // Extra tensors are ignored; sizes and hash are reported.
        let path = write_tensors(
            dir.path(),
            &[
                mean.clone(),
                components.clone(),
                ("rotation_8", Dtype::F32, vec![8, 8], eye(8)),
                ("explained_variance", Dtype::F32, vec![8], f32_bytes([1.0; 8])),
            ],
        );
        let p = Projection::load(&path, "p".into()).unwrap();
        let want_sha: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(std::fs::read(&path).unwrap())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!((p.id(), p.sha256()), ("p", want_sha.as_str()));
        assert_eq!(
            (p.input_dimension(), p.max_dimension(), p.binary_sizes()),
            (8, 8, vec![8])
        );

        let m = load_error(std::slice::from_ref(&mean));
        assert!(m.contains("tensor `components` is missing (the file has: mean)"), "{m}");
        let m = load_error(&[
            mean.clone(),
            ("components", Dtype::F32, vec![8, 4], eye(8)[..128].to_vec()),
        ]);
        assert!(m.contains("`components` has shape [8, 4], expected [K, 8]"), "{m}");
        let m = load_error(&[mean.clone(), ("components", Dtype::F64, vec![4, 8], eye(8))]);
        assert!(m.contains("`components` is F64, expected F32"), "{m}");
        let m = load_error(&[
            (
                "mean",
                Dtype::F32,
                vec![8],
                f32_bytes([0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            ),
            components.clone(),
        ]);
        assert!(m.contains("`mean` has a non-finite value at flat index 1"), "{m}");
        let m = load_error(&[
            ("mean", Dtype::F32, vec![2, 4], f32_bytes([0.0; 8])),
            components.clone(),
        ]);
        assert!(m.contains("`mean` has shape [2, 4], expected [D]"), "{m}");
        let m = load_error(&[
            mean.clone(),
            ("components", Dtype::F32, vec![8, 8], f32_bytes([0.5; 64])),
        ]);
        assert!(m.contains("not orthonormal"), "{m}");
        let m = load_error(&[
            mean.clone(),
            components.clone(),
            ("rotation_8", Dtype::F32, vec![4, 16], eye(8)),
        ]);
        assert!(m.contains("`rotation_8` has shape [4, 16], expected [8, 8]"), "{m}");
        let m = load_error(&[
            mean.clone(),
            components.clone(),
            ("rotation_12", Dtype::F32, vec![12, 12], eye(12)),
        ]);
        assert!(m.contains("positive multiple of 8"), "{m}");
        let m = load_error(&[
            mean.clone(),
            ("components", Dtype::F32, vec![4, 8], eye(8)[..128].to_vec()),
            ("rotation_8", Dtype::F32, vec![8, 8], eye(8)),
        ]);
        assert!(m.contains("at most K = 4"), "{m}");

        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"not a safetensors file").unwrap();
        assert!(
            Projection::load(&garbage, "p".into())
                .unwrap_err()
                .to_string()
                .contains("not a safetensors file")
        );
        let missing = Projection::load(&dir.path().join("missing.safetensors"), "p".into()).unwrap_err();
        assert_eq!(missing.kind(), crate::error::Kind::NotFound);
        assert!(missing.to_string().contains("missing.safetensors"));
    }
}
