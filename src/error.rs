//! One error type for the library. Each error carries a [`Kind`] that says what the caller can do
//! about it, which is also how it maps onto a gRPC status code at the service edge.

use std::path::PathBuf;

/// What kind of failure, in the caller's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input (config, manifest, URI, request) is wrong; retrying won't help.
    InvalidArgument,
    /// A named thing (file, camera, output) does not exist.
    NotFound,
    /// What the caller wants to create exists already.
    AlreadyExists,
    /// A resource (disk, buffer, library) is missing or exhausted.
    Unavailable,
    /// A position (an offset) lies beyond what exists.
    OutOfRange,
    /// A bug or an unexpected failure of a component we depend on.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("model manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    #[error("model {path} does not match its manifest:\n  - {}", .differences.join("\n  - "))]
    ModelMismatch { path: PathBuf, differences: Vec<String> },

    #[error("model {path} could not be loaded by ONNX Runtime: {message}")]
    ModelLoad { path: PathBuf, message: String },

    #[error("model store {path}: {message}")]
    ModelStore { path: PathBuf, message: String },

    /// A model set that failed its self-test on the node's own recent frames.
    #[error("model self-test failed: {0}")]
    SelfTest(String),

    #[error("ONNX Runtime library {path} could not be loaded: {message}")]
    RuntimeLibrary { path: PathBuf, message: String },

    #[error("inference with model {model}: {message}")]
    Inference { model: String, message: String },

    #[error("camera {camera}: {message}")]
    Camera { camera: String, message: String },

    #[error("{0}")]
    InvalidCamera(String),

    #[error("camera {} exists already", quoted(.0))]
    CameraExists(String),

    #[error("no camera {} on this node", quoted(.0))]
    NoSuchCamera(String),

    #[error("the node is shutting down")]
    ShuttingDown,

    #[error("camera {} is being changed by another request; try again", quoted(.0))]
    CameraBusy(String),

    #[error("unsupported source URI {uri:?}: {reason}")]
    UnsupportedUri { uri: String, reason: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("descriptor log {path}: {message}")]
    Log { path: PathBuf, message: String },

    #[error("{0}")]
    OutOfRange(String),

    #[error("GStreamer: {0}")]
    Gstreamer(String),

    #[error("internal: {0}")]
    Internal(String),

    /// TLS files, tokens, and what a listener or a caller may do.
    #[error("{0}")]
    Access(String),

    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// A peer this node or the collector depends on (a collector, JetStream) is away.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub fn kind(&self) -> Kind {
        match self {
            Error::Config { .. }
            | Error::Manifest { .. }
            | Error::ModelMismatch { .. }
            | Error::UnsupportedUri { .. }
            | Error::InvalidCamera(_)
            | Error::Access(_) => Kind::InvalidArgument,
            Error::CameraExists(_) => Kind::AlreadyExists,
            Error::NoSuchCamera(_) => Kind::NotFound,
            Error::ModelLoad { .. } | Error::ModelStore { .. } | Error::SelfTest(_) => Kind::InvalidArgument,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Kind::NotFound,
            Error::Io { .. } | Error::RuntimeLibrary { .. } | Error::Transport(_) | Error::Log { .. } => {
                Kind::Unavailable
            }
            Error::Camera { .. } | Error::ShuttingDown | Error::CameraBusy(_) | Error::Unavailable(_) => {
                Kind::Unavailable
            }
            Error::OutOfRange(_) => Kind::OutOfRange,
            Error::Inference { .. } | Error::Gstreamer(_) | Error::Internal(_) => Kind::Internal,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// A bad value as error messages show it: quoted, and only its first characters, so that a
/// 5000-character name does not come back in full (or fill a log line).
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 32;
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// Replaces the password in `scheme://user:password@host/...` with `***`.
pub fn redact_uri(uri: &str) -> String {
    match uri_userinfo(uri) {
        Some(UserInfo {
            scheme,
            user,
            password: Some(_),
            host_and_rest,
        }) => format!("{scheme}://{user}:***@{host_and_rest}"),
        _ => uri.to_string(),
    }
}

/// Whether a URI carries a password (`scheme://user:password@host/...`).
pub fn uri_has_password(uri: &str) -> bool {
    uri_userinfo(uri).is_some_and(|info| info.password.is_some())
}

/// The parts of `scheme://user[:password]@host...`.
pub struct UserInfo<'a> {
    pub scheme: &'a str,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub host_and_rest: &'a str,
}

/// The user (and password) of a URI, if it names one.
pub fn uri_userinfo(uri: &str) -> Option<UserInfo<'_>> {
    let (scheme, rest) = uri.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, _) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    Some(UserInfo {
        scheme,
        user,
        password,
        host_and_rest: &rest[userinfo.len() + 1..],
    })
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err.kind() {
            Kind::InvalidArgument => tonic::Status::invalid_argument(message),
            Kind::NotFound => tonic::Status::not_found(message),
            Kind::AlreadyExists => tonic::Status::already_exists(message),
            Kind::Unavailable => tonic::Status::unavailable(message),
            Kind::OutOfRange => tonic::Status::out_of_range(message),
            Kind::Internal => tonic::Status::internal(message),
        }
    }
}

impl From<gstreamer::glib::Error> for Error {
    fn from(err: gstreamer::glib::Error) -> Self {
        Error::Gstreamer(err.to_string())
    }
}

impl From<gstreamer::glib::BoolError> for Error {
    fn from(err: gstreamer::glib::BoolError) -> Self {
        Error::Gstreamer(err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_uri("rtsp://admin:s3cr3t@10.0.0.7:554/stream1?x=@"),
            "rtsp://admin:***@10.0.0.7:554/stream1?x=@"
        );
        assert_eq!(redact_uri("rtsp://cam/1"), "rtsp://cam/1");
        assert_eq!(redact_uri("rtsp://user@cam/1"), "rtsp://user@cam/1");
        assert_eq!(redact_uri("rtsp://u:p:q@cam"), "rtsp://u:***@cam");
        assert!(uri_has_password("rtsp://admin:s3cr3t@cam/1"));
        assert!(!uri_has_password("rtsp://admin@cam/1") && !uri_has_password("/clips/a:b@c.mp4"));
    }
}
