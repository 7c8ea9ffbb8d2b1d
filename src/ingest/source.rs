//! Source URIs: what the config says, what GStreamer opens, and what may be shown.

use std::path::Path;

use gstreamer as gst;

use crate::error::{Error, Result, redact_uri, uri_userinfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A local file: ends, may loop, can be read faster than real time.
    File,
    /// A camera or stream: never meant to end; an end is a failure to recover from.
    Live,
}

#[derive(Debug, Clone)]
pub struct SourceUri {
    /// The URI GStreamer opens, credentials included.
    pub uri: String,
    /// The same without its password.
    pub redacted: String,
    pub kind: SourceKind,
}

impl SourceUri {
    /// Accepts a URI with a scheme GStreamer has a source for, or a file path (relative to
    /// `base_dir`). Needs `gst::init()`.
    pub fn resolve(raw: &str, base_dir: &Path) -> Result<SourceUri> {
        let raw = raw.trim();
        let unsupported = |reason: String| Error::UnsupportedUri {
            uri: redact_uri(raw),
            reason,
        };
        if raw.is_empty() {
            return Err(unsupported("empty".into()));
        }
        let uri = match raw.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("file") => {
                let path = gst::glib::filename_from_uri(raw)
                    .map_err(|e| unsupported(format!("not a valid file URI: {e}")))?
                    .0;
                file_uri(&path)?
            }
            Some((scheme, _)) => {
                if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                    return Err(unsupported(format!("bad scheme {scheme:?}")));
                }
                // Creating (and dropping) the source element is how GStreamer says whether any
                // installed plugin handles this protocol.
                if gst::Element::make_from_uri(gst::URIType::Src, raw, None).is_err() {
                    return Err(unsupported(if has_source_for(scheme) {
                        let user_only = uri_userinfo(raw).is_some_and(|info| info.password.is_none());
                        format!(
                            "not a valid {scheme} URI{}",
                            if user_only { USER_ONLY_HINT } else { "" }
                        )
                    } else {
                        format!(
                            "no GStreamer source handles {scheme}:// (supported here include file, rtsp, http, https)"
                        )
                    }));
                }
                raw.to_string()
            }
            None => {
                let path = base_dir.join(raw);
                file_uri(&path)?
            }
        };
        let kind = if uri.starts_with("file://") {
            SourceKind::File
        } else {
            SourceKind::Live
        };
        Ok(SourceUri {
            redacted: redact_uri(&uri),
            uri,
            kind,
        })
    }
}

/// GStreamer's RTSP source refuses `rtsp://user@host/...`: a user name without a password.
const USER_ONLY_HINT: &str = " (GStreamer takes a user name in the URI only with its password: set the camera's username and password_file instead)";

/// Whether an installed source element reads `scheme://` URIs.
fn has_source_for(scheme: &str) -> bool {
    gst::ElementFactory::factories_with_type(gst::ElementFactoryType::SRC, gst::Rank::NONE)
        .iter()
        .any(|factory| {
            factory.uri_type() == gst::URIType::Src
                && factory.uri_protocols().iter().any(|p| p.eq_ignore_ascii_case(scheme))
        })
}

fn file_uri(path: &Path) -> Result<String> {
    // A source that cannot be opened is a bad argument of the request (INVALID_ARGUMENT), not a
    // missing resource of the node: NOT_FOUND means "no such camera" to gRPC clients.
    let path = path.canonicalize().map_err(|e| Error::UnsupportedUri {
        uri: path.display().to_string(),
        reason: format!("video file: {e}"),
    })?;
    if !path.is_file() {
        return Err(Error::UnsupportedUri {
            uri: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    Ok(gst::glib::filename_to_uri(&path, None)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sources_are_refused_with_reasons() {
        gst::init().unwrap();
        let base = Path::new("/");
        let err = SourceUri::resolve("gopher://cam/1", base).unwrap_err().to_string();
        assert!(err.contains("no GStreamer source handles gopher://"), "{err}");
        let err = SourceUri::resolve("/no/such/clip.mp4", base).unwrap_err().to_string();
        assert!(err.contains("/no/such/clip.mp4"), "{err}");
        let err = SourceUri::resolve("file:///no/such/clip.mp4", base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/clip.mp4"), "{err}");
        let err = SourceUri::resolve("rtsp://viewer@127.0.0.1:8554/x", base)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a valid rtsp URI") && err.contains("password_file"),
            "{err}"
        );
        let rtsp = SourceUri::resolve("rtsp://u:pw@127.0.0.1:8554/x", base).unwrap();
        assert_eq!(rtsp.kind, SourceKind::Live);
        assert!(!rtsp.redacted.contains("pw"));
    }
}
