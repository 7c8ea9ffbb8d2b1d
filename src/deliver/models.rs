//! The model RPCs of `retina.v1.Admin`: packages are received in chunks, checked against their
//! header (size, SHA-256) as they arrive, put together on disk beside the model store, and stored
//! only once whole; switching the running set is the node's, behind [`ModelControl`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::{Status, Streaming};

use crate::error::{Result, quoted};
use crate::infer::registry::{ModelSet, RunningSet, StoredModel};
use crate::infer::self_test::SelfTestReport;
use crate::infer::shadow::ShadowReport;
use crate::pb;

/// A package may have the manifest and this many files besides.
const MAX_FILES: usize = 8;
/// The most a package may weigh: the largest detectors here are tens of MB.
pub const MAX_PACKAGE_BYTES: u64 = 512 * 1024 * 1024;
/// The largest chunk a client sends: a message of it stays within the 64 KiB every request to
/// the node is held to.
pub const MAX_CHUNK_BYTES: usize = 60 * 1024;
const MAX_NAME_CHARS: usize = 128;

/// What the model RPCs need of the node (`node::LiveModels`): the store, and the live switch.
pub trait ModelControl: Send + Sync + 'static {
    /// A directory on the store's file system for packages being received.
    fn staging_dir(&self) -> PathBuf;
    fn install_received(&self, manifest: &Path) -> Result<StoredModel>;
    fn stored(&self) -> Result<(Vec<StoredModel>, Option<ModelSet>)>;
    /// Blocks for as long as loading the set takes.
    fn switch(&self, detector: Option<&str>, embedder: Option<&str>) -> Result<RunningSet>;
    fn roll_back(&self) -> Result<RunningSet>;
}

pub(super) fn stored_info(model: &StoredModel) -> pb::StoredModelInfo {
    pb::StoredModelInfo {
        hash: model.hash.clone(),
        role: model.role.as_str().to_string(),
        id: model.id.clone(),
        version: model.version.clone(),
        decoder: model.decoder.clone(),
    }
}

pub(super) fn activated(running: RunningSet) -> pb::ActivateModelsResponse {
    let report = &running.self_test;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    pb::ActivateModelsResponse {
        model_generation: running.generation,
        self_test: Some(pb::ModelSelfTest {
            frames: report.frames as u32,
            cameras: report.cameras as u32,
            objects_running: report.objects_running as u32,
            objects_new: report.objects_new as u32,
            median_latency_ms_running: ms(report.median_latency_running),
            median_latency_ms_new: ms(report.median_latency_new),
        }),
        shadow: running.shadow.as_ref().map(|shadow| pb::ModelShadowRun {
            frames: shadow.frames as u32,
            cameras: shadow.cameras as u32,
            objects_running: shadow.objects_running as u32,
            objects_new: shadow.objects_new as u32,
            matched: shadow.matched as u32,
            detection_agreement: shadow.detection_agreement,
            rank_objects: shadow.rank_objects as u32,
            rank_agreement: shadow.rank_agreement,
            latency_ratio: shadow.latency_ratio(),
            median_latency_ms_running: ms(shadow.median_latency_running),
            median_latency_ms_new: ms(shadow.median_latency_new),
        }),
        detector: running.set.detector,
        embedder: running.set.embedder,
    }
}

fn duration(ms: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(if ms.is_finite() { ms.max(0.0) / 1e3 } else { 0.0 })
}

/// The shadow run a node reported, to print as the node logs it.
pub fn shadow_report(sent: &pb::ModelShadowRun) -> ShadowReport {
    ShadowReport {
        frames: sent.frames as usize,
        cameras: sent.cameras as usize,
        objects_running: sent.objects_running as usize,
        objects_new: sent.objects_new as usize,
        matched: sent.matched as usize,
        detection_agreement: sent.detection_agreement,
        rank_objects: sent.rank_objects as usize,
        rank_agreement: sent.rank_agreement,
        median_latency_running: duration(sent.median_latency_ms_running),
        median_latency_new: duration(sent.median_latency_ms_new),
    }
}

/// The report a node sent, to print as the node logs it.
pub fn self_test_report(sent: &pb::ModelSelfTest) -> SelfTestReport {
    SelfTestReport {
        frames: sent.frames as usize,
        cameras: sent.cameras as usize,
        objects_running: sent.objects_running as usize,
        objects_new: sent.objects_new as usize,
        median_latency_running: duration(sent.median_latency_ms_running),
        median_latency_new: duration(sent.median_latency_ms_new),
    }
}

/// A file being received: where it goes, what it must add up to.
struct Incoming {
    file: tokio::fs::File,
    expected_size: u64,
    expected_sha256: String,
    received: u64,
    hasher: Sha256,
}

/// Receives one package and stores it. The staging directory is removed however this ends.
pub(super) async fn receive(
    control: Arc<dyn ModelControl>,
    mut stream: Streaming<pb::UploadModelRequest>,
) -> std::result::Result<pb::StoredModelInfo, Status> {
    use pb::upload_model_request::Part;
    let header = match stream.message().await? {
        Some(pb::UploadModelRequest {
            part: Some(Part::Header(header)),
        }) => header,
        _ => {
            return Err(Status::invalid_argument(
                "the first message of an upload must be its header",
            ));
        }
    };
    check_header(&header)?;
    let staging_dir = control.staging_dir();
    let staging = super::service::blocking(move || {
        std::fs::create_dir_all(&staging_dir)
            .and_then(|()| tempfile::Builder::new().prefix(".upload-").tempdir_in(&staging_dir))
            .map_err(|e| crate::Error::io(format!("making room for an upload in {}", staging_dir.display()), e))
    })
    .await?;
    let outcome = receive_files(&header, staging.path(), &mut stream).await;
    let result = match outcome {
        Ok(()) => {
            let manifest = staging.path().join(&header.manifest);
            super::service::blocking(move || control.install_received(&manifest)).await
        }
        Err(status) => Err(status),
    };
    // Removing a directory of tens of MB is file-system work: off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
    result.map(|model| stored_info(&model))
}

async fn receive_files(
    header: &pb::ModelUploadHeader,
    dir: &Path,
    stream: &mut Streaming<pb::UploadModelRequest>,
) -> std::result::Result<(), Status> {
    use pb::upload_model_request::Part;
    let unavailable = |what: &str, e: std::io::Error| Status::unavailable(format!("{what} of the upload: {e}"));
    let mut files = HashMap::new();
    for spec in &header.files {
        let file = tokio::fs::File::create(dir.join(&spec.name))
            .await
            .map_err(|e| unavailable("storing", e))?;
        files.insert(
            spec.name.clone(),
            Incoming {
                file,
                expected_size: spec.size,
                expected_sha256: spec.sha256.to_ascii_lowercase(),
                received: 0,
                hasher: Sha256::new(),
            },
        );
    }
    while let Some(message) = stream.message().await? {
        let chunk = match message.part {
            Some(Part::Chunk(chunk)) => chunk,
            Some(Part::Header(_)) => return Err(Status::invalid_argument("an upload has one header")),
            None => {
                return Err(Status::invalid_argument(
                    "an upload message carries a header or a chunk",
                ));
            }
        };
        let Some(incoming) = files.get_mut(&chunk.name) else {
            return Err(Status::invalid_argument(format!(
                "chunk of {}, which the header does not list",
                quoted(&chunk.name)
            )));
        };
        incoming.received += chunk.data.len() as u64;
        if incoming.received > incoming.expected_size {
            return Err(Status::invalid_argument(format!(
                "{} is longer than the {} bytes the header gives",
                chunk.name, incoming.expected_size
            )));
        }
        incoming.hasher.update(&chunk.data);
        incoming
            .file
            .write_all(&chunk.data)
            .await
            .map_err(|e| unavailable("writing", e))?;
    }
    for (name, mut incoming) in files {
        if incoming.received != incoming.expected_size {
            return Err(Status::invalid_argument(format!(
                "{name}: {} bytes received, the header gives {}",
                incoming.received, incoming.expected_size
            )));
        }
        let sha256 = data_encoding::HEXLOWER.encode(&incoming.hasher.finalize());
        if sha256 != incoming.expected_sha256 {
            return Err(Status::invalid_argument(format!(
                "{name}: SHA-256 {sha256} of the bytes received, the header gives {}",
                quoted(&incoming.expected_sha256)
            )));
        }
        incoming.file.flush().await.map_err(|e| unavailable("writing", e))?;
    }
    if !header.signature.is_empty() {
        let path = crate::infer::registry::signature_path(&dir.join(&header.manifest));
        tokio::fs::write(&path, &header.signature)
            .await
            .map_err(|e| unavailable("storing the signature", e))?;
    }
    Ok(())
}

/// The header names a manifest among a few plain, distinct file names of a bounded total size.
fn check_header(header: &pb::ModelUploadHeader) -> std::result::Result<(), Status> {
    let bad = |message: String| Err(Status::invalid_argument(message));
    if header.files.is_empty() || header.files.len() > MAX_FILES + 1 {
        return bad(format!(
            "an upload has the manifest and at most {MAX_FILES} files, not {}",
            header.files.len()
        ));
    }
    let mut total = 0u64;
    for (i, file) in header.files.iter().enumerate() {
        let name = &file.name;
        let plain = !name.is_empty()
            && name.chars().count() <= MAX_NAME_CHARS
            && !name.starts_with('.')
            && !name.ends_with(".sig")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+@".contains(c));
        if !plain {
            return bad(format!(
                "file name {} is not a plain file name (letters, digits, '-', '_', '.', '+', '@'; not \
                 starting with '.', not a .sig; at most {MAX_NAME_CHARS})",
                quoted(name)
            ));
        }
        if header.files[..i].iter().any(|other| other.name == *name) {
            return bad(format!("file {} is listed twice", quoted(name)));
        }
        if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("{name}: {} is not a hex SHA-256", quoted(&file.sha256)));
        }
        total = total.saturating_add(file.size);
    }
    if total > MAX_PACKAGE_BYTES {
        return bad(format!(
            "the package is {total} bytes; at most {MAX_PACKAGE_BYTES} are taken"
        ));
    }
    if !header.files.iter().any(|f| f.name == header.manifest) || !header.manifest.ends_with(".toml") {
        return bad(format!(
            "the manifest {} must be one of the files, and a .toml",
            quoted(&header.manifest)
        ));
    }
    if header.signature.len() > 1024 {
        return bad("a signature is a line of hex, not this long".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> pb::ModelUploadHeader {
        pb::ModelUploadHeader {
            manifest: "m.toml".into(),
            files: names
                .iter()
                .map(|name| pb::ModelUploadFile {
                    name: name.to_string(),
                    size: 10,
                    sha256: "a".repeat(64),
                })
                .collect(),
            signature: Vec::new(),
        }
    }

    #[test]
    fn a_header_names_only_plain_distinct_files_beside_a_manifest() {
        assert!(check_header(&header(&["m.toml", "model.onnx"])).is_ok());
        for names in [
            &["m.toml", "../etc/passwd"][..],
            &["m.toml", "sub/model.onnx"],
            &["m.toml", ".hidden"],
            &["m.toml", "m.toml.sig"],
            &["m.toml", "model.onnx", "model.onnx"],
            &["model.onnx"],
            &[],
        ] {
            assert!(check_header(&header(names)).is_err(), "{names:?}");
        }
        let mut big = header(&["m.toml", "model.onnx"]);
        big.files[1].size = MAX_PACKAGE_BYTES;
        assert!(check_header(&big).is_err());
        let mut not_hex = header(&["m.toml"]);
        not_hex.files[0].sha256 = "z".repeat(64);
        assert!(check_header(&not_hex).is_err());
    }
}
