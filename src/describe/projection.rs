//! The projection behind the projected embedding codecs (PCA_INT8, BINARY), as documented above
//! `EmbeddingCodec` in `proto/retina/v1/retina.proto`: y = P_d (x - m), and for binary codes
//! z = R_d y.
//!
//! It is learned offline and shipped as a safetensors file beside the embedder's manifest, with
//! f32 tensors `mean` [D], `components` [K, D] (rows orthonormal, by decreasing variance) and any
//! number of `rotation_<d>` [d, d] (orthogonal; d a multiple of 8, at most K), one per binary code
//! size the node can produce. Other tensors are ignored, so a fitting tool may keep extras (such
//! as explained variance) in the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayView1};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::infer::sha256_hex;

/// Rows of `components` and of each rotation must be orthonormal to this much. Generous: a fit
/// done in f64 and stored as f32 is off by ~1e-7; what this catches is a wrong or whitened matrix,
/// which would silently distort every code.
const ORTHONORMAL_TOLERANCE: f32 = 1e-3;

const ROTATION_PREFIX: &str = "rotation_";

pub struct Projection {
    id: String,
    sha256: String,
    path: PathBuf,
    mean: Array1<f32>,
    /// [K, D].
    components: Array2<f32>,
    /// Code size d -> R_d [d, d].
    rotations: BTreeMap<usize, Array2<f32>>,
}

impl std::fmt::Debug for Projection {
    // The matrices are large and say nothing to a reader of a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("id", &self.id)
            .field("sha256", &self.sha256)
            .field("path", &self.path)
            .field("input_dimension", &self.input_dimension())
            .field("max_dimension", &self.max_dimension())
            .field("binary_sizes", &self.binary_sizes())
            .finish()
    }
}

impl Projection {
    /// Loads and checks a projection file. `id` is what goes into `Embedding.projection_id` and
    /// `ModelInfo.projection_id`.
    pub fn load(path: &Path, id: String) -> Result<Projection> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading projection {}", path.display()), e))?;
        let sha256 = sha256_hex(&bytes);
        let invalid = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message: format!("projection file: {message}"),
        };
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| invalid(format!("not a safetensors file: {e}")))?;

        let (mean, mean_shape) = f32_tensor(&tensors, "mean").map_err(invalid)?;
        let [d_in] = mean_shape[..] else {
            return Err(invalid(format!("tensor `mean` has shape {mean_shape:?}, expected [D]")));
        };
        if d_in == 0 {
            return Err(invalid("tensor `mean` is empty".into()));
        }
        let (components, components_shape) = f32_tensor(&tensors, "components").map_err(invalid)?;
        let [k, d] = components_shape[..] else {
            return Err(invalid(format!(
                "tensor `components` has shape {components_shape:?}, expected [K, {d_in}]"
            )));
        };
        if d != d_in || k == 0 || k > d_in {
            return Err(invalid(format!(
                "tensor `components` has shape [{k}, {d}], expected [K, {d_in}] with 1 <= K <= {d_in}"
            )));
        }
        let components =
            Array2::from_shape_vec((k, d), components).map_err(|e| invalid(format!("tensor `components`: {e}")))?;
        check_orthonormal_rows(&components, "components").map_err(invalid)?;

        let mut rotations = BTreeMap::new();
        for name in tensors.names() {
            let Some(size) = name.strip_prefix(ROTATION_PREFIX) else {
                continue;
            };
            let bits = match size.parse::<usize>() {
                Ok(bits) if bits > 0 && bits.is_multiple_of(8) && bits <= k => bits,
                _ => {
                    return Err(invalid(format!(
                        "tensor `{name}`: the code size after `{ROTATION_PREFIX}` must be a positive multiple of 8 \
                         and at most K = {k}"
                    )));
                }
            };
            let (values, shape) = f32_tensor(&tensors, name).map_err(invalid)?;
            if shape[..] != [bits, bits] {
                return Err(invalid(format!(
                    "tensor `{name}` has shape {shape:?}, expected [{bits}, {bits}]"
                )));
            }
            let rotation =
                Array2::from_shape_vec((bits, bits), values).map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
            check_orthonormal_rows(&rotation, name).map_err(invalid)?;
            rotations.insert(bits, rotation);
        }

        Ok(Projection {
            id,
            sha256,
            path: path.to_path_buf(),
            mean: Array1::from_vec(mean),
            components,
            rotations,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Lower-case hex SHA-256 of the file, for `ModelInfo.projection_sha256`.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// D: the length of the embedder output this projection takes.
    pub fn input_dimension(&self) -> usize {
        self.mean.len()
    }

    /// K: the most components a projected vector can keep.
    pub fn max_dimension(&self) -> usize {
        self.components.nrows()
    }

    /// Binary code sizes (bits) this file has a rotation for, ascending.
    pub fn binary_sizes(&self) -> Vec<usize> {
        self.rotations.keys().copied().collect()
    }

    /// y = P_d (x - m) into `out` (not normalised). Returns false, leaving `out` empty, unless
    /// `x.len()` is D and `d` is in 1..=K.
    #[must_use]
    pub fn project(&self, x: &[f32], d: usize, out: &mut Vec<f32>) -> bool {
        out.clear();
        if x.len() != self.input_dimension() || d == 0 || d > self.max_dimension() {
            return false;
        }
        let centred: Vec<f32> = x.iter().zip(self.mean.iter()).map(|(x, m)| x - m).collect();
        out.extend(self.components.rows().into_iter().take(d).map(|p| dot(p, &centred)));
        true
    }

    /// z = R_d y into `out`, with d = `y.len()`. Returns false, leaving `out` empty, if the file
    /// has no rotation for d.
    #[must_use]
    pub fn rotate(&self, y: &[f32], out: &mut Vec<f32>) -> bool {
        out.clear();
        let Some(rotation) = self.rotations.get(&y.len()) else {
            return false;
        };
        out.extend(rotation.rows().into_iter().map(|r| dot(r, y)));
        true
    }
}

fn dot(row: ArrayView1<'_, f32>, v: &[f32]) -> f32 {
    row.iter().zip(v).map(|(a, b)| a * b).sum()
}

/// A tensor's values and shape, if it is there, is f32 and is all finite.
fn f32_tensor(tensors: &SafeTensors<'_>, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let view = tensors.tensor(name).map_err(|_| {
        let mut names = tensors.names();
        names.sort_unstable();
        format!("tensor `{name}` is missing (the file has: {})", names.join(", "))
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(format!("tensor `{name}` is {:?}, expected F32", view.dtype()));
    }
    // safetensors stores little-endian whatever the host.
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("tensor `{name}` has a non-finite value at flat index {i}"));
    }
    Ok((values, view.shape().to_vec()))
}

fn check_orthonormal_rows(m: &Array2<f32>, name: &str) -> Result<(), String> {
    let gram = m.dot(&m.t());
    for ((i, j), g) in gram.indexed_iter() {
        let want = if i == j { 1.0 } else { 0.0 };
        if (g - want).abs() > ORTHONORMAL_TOLERANCE {
            return Err(format!(
                "rows of tensor `{name}` are not orthonormal: row {i} . row {j} = {g}, expected {want}"
            ));
        }
    }
    Ok(())
}

/// A projection file's bytes. For tests and for tools that fit a projection; `components` is
/// [K, D] and each rotation is [d, d], named `rotation_<d>`.
pub fn to_safetensors_bytes(mean: &[f32], components: &Array2<f32>, rotations: &[Array2<f32>]) -> Result<Vec<u8>> {
    fn view<'a>(shape: Vec<usize>, bytes: &'a [u8]) -> Result<safetensors::tensor::TensorView<'a>> {
        safetensors::tensor::TensorView::new(Dtype::F32, shape, bytes)
            .map_err(|e| Error::Internal(format!("building projection tensor: {e}")))
    }
    fn le<'a>(values: impl Iterator<Item = &'a f32>) -> Vec<u8> {
        values.flat_map(|v| v.to_le_bytes()).collect()
    }
    let mean_bytes = le(mean.iter());
    let components_bytes = le(components.iter());
    let rotation_bytes: Vec<(String, Vec<usize>, Vec<u8>)> = rotations
        .iter()
        .map(|r| {
            (
                format!("{ROTATION_PREFIX}{}", r.nrows()),
                r.shape().to_vec(),
                le(r.iter()),
            )
        })
        .collect();
    let mut views = vec![
        ("mean".to_string(), view(vec![mean.len()], &mean_bytes)?),
        (
            "components".to_string(),
            view(components.shape().to_vec(), &components_bytes)?,
        ),
    ];
    for (name, shape, bytes) in &rotation_bytes {
        views.push((name.clone(), view(shape.clone(), bytes)?));
    }
    safetensors::serialize(views, None).map_err(|e| Error::Internal(format!("serialising projection: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A projection file with bytes changed, cut short, or replaced by garbage loads or is
        /// refused clearly: its header names shapes and offsets that must not be trusted.
        #[test]
        fn a_damaged_projection_file_is_refused_clearly(
            changes in proptest::collection::vec((0usize..800_000, proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::option::of(0usize..800_000),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mobilenetv2-1280.projection.safetensors");
            let mut bytes = std::fs::read(shipped).unwrap();
            // The header (a length and JSON) comes first: aim half of the changes at it.
            for (i, (at, byte)) in changes.iter().enumerate() {
                let at = if i % 2 == 0 { at % 200 } else { at % bytes.len() };
                bytes[at] = *byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if !garbage.is_empty() && changes.is_empty() {
                bytes = garbage;
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.safetensors");
            std::fs::write(&path, &bytes).unwrap();
            if let Err(err) = Projection::load(&path, "fuzz".into()) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}
