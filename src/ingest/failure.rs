//! Why a camera's pipeline failed, in an operator's words, and whether trying again soon can help.
//!
//! GStreamer reports "Internal data stream error" for a file with only an audio track and "Your
//! GStreamer installation is missing a plug-in" for an HTML page: true, but no help to whoever
//! has to fix the camera. A failure is explained from the error's domain and code together with
//! what the pipeline learnt about its source ([`SourceFacts`]), and sorted into
//! - *permanent*: the source can never work as configured (no video in it, not media, a codec
//!   nobody decodes, not found, access denied); retried only slowly, or at once when the camera
//!   is updated;
//! - *transient*: the network, a stall, the end of a live stream; retried with backoff.

use gstreamer as gst;

use super::SourceKind;
use super::pipeline::SourceFacts;

/// The longest piece of a GStreamer message or source detail quoted in a reason.
const QUOTE_CHARS: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The source has streams, none of them video (an audio file, an audio-only stream).
    NoVideo,
    /// Not media GStreamer recognises: empty, garbage, damaged, a web page.
    NotMedia,
    /// Media, but no installed decoder handles it.
    UnsupportedCodec,
    /// No such file; HTTP or RTSP 404.
    NotFound,
    /// HTTP or RTSP 401/403: wrong or missing credentials.
    Unauthorized,
    /// Decoded video that cannot be converted for analysis.
    UnusableVideo,
    /// The node stopped while the camera was starting after a change: it is not started again
    /// until it is changed (see the manager's probation).
    CrashedOnProbation,
    /// Connection refused, timed out, reset.
    Unreachable,
    /// No frame for the stall timeout.
    Stalled,
    /// A live stream ended.
    Ended,
    /// Any other error of the pipeline.
    StreamError,
}

impl FailureKind {
    pub const ALL: [FailureKind; 11] = [
        FailureKind::NoVideo,
        FailureKind::NotMedia,
        FailureKind::UnsupportedCodec,
        FailureKind::NotFound,
        FailureKind::Unauthorized,
        FailureKind::UnusableVideo,
        FailureKind::CrashedOnProbation,
        FailureKind::Unreachable,
        FailureKind::Stalled,
        FailureKind::Ended,
        FailureKind::StreamError,
    ];

    /// A fixed label for metrics and the API: never a raw error string.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::NoVideo => "no_video",
            FailureKind::NotMedia => "not_media",
            FailureKind::UnsupportedCodec => "unsupported_codec",
            FailureKind::NotFound => "not_found",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::UnusableVideo => "unusable_video",
            FailureKind::CrashedOnProbation => "crashed_on_probation",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Stalled => "stalled",
            FailureKind::Ended => "ended",
            FailureKind::StreamError => "stream_error",
        }
    }

    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            FailureKind::NoVideo
                | FailureKind::NotMedia
                | FailureKind::UnsupportedCodec
                | FailureKind::NotFound
                | FailureKind::Unauthorized
                | FailureKind::UnusableVideo
                | FailureKind::CrashedOnProbation
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// At most [`QUOTE_CHARS`] characters of `text`, marked when cut.
pub fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A failure when the source has exposed its streams, when it has some and none of them is video.
pub fn no_video(facts: &SourceFacts) -> Option<Failure> {
    let others = facts.only_other_streams()?;
    Some(undecodable(facts).unwrap_or_else(|| no_video_failure(&others)))
}

/// A source whose video no installed decoder handles (its audio may still have been exposed).
fn undecodable(facts: &SourceFacts) -> Option<Failure> {
    let video = facts.undecodable_video()?;
    Some(Failure::new(
        FailureKind::UnsupportedCodec,
        format!("no installed GStreamer decoder handles this source's {}", quote(&video)),
    ))
}

fn no_video_failure(others: &[String]) -> Failure {
    let message = if others.is_empty() {
        "the source has no video stream".to_string()
    } else {
        format!("the source has no video stream (only {})", quote(&others.join(", ")))
    };
    Failure::new(FailureKind::NoVideo, message)
}

/// Explains an error message of the pipeline.
pub fn classify(error: &gst::glib::Error, debug: Option<&str>, facts: &SourceFacts, kind: SourceKind) -> Failure {
    let said = quote(error.message());
    // Only when no video came out of it: a DASH manifest is XML too.
    let is_text = |c: &String| c.starts_with("text/") || c.ends_with("/xml");
    if let Some(container) = facts.container().filter(is_text).filter(|_| !facts.has_video()) {
        let what = if container == "text/html" { "a web page" } else { "text" };
        return Failure::new(
            FailureKind::NotMedia,
            format!("the source is {what} ({container}), not video: is the URI the camera's stream address?"),
        );
    }
    if !facts.has_video()
        && let Some(failure) = undecodable(facts)
    {
        return failure;
    }
    if !facts.has_video() {
        // A flow error with only non-video streams so far means "no video" in a file; a live
        // stream may still be about to expose its video.
        let others = facts.only_other_streams().or_else(|| {
            let flow_error = error.matches(gst::StreamError::Failed);
            let others = facts.other_streams();
            (flow_error && kind == SourceKind::File && !others.is_empty()).then_some(others)
        });
        if let Some(others) = others {
            return no_video_failure(&others);
        }
    }
    if let Some(code) = error.kind::<gst::ResourceError>() {
        return match code {
            gst::ResourceError::NotFound => {
                Failure::new(FailureKind::NotFound, format!("the source was not found ({said})"))
            }
            gst::ResourceError::NotAuthorized => Failure::new(
                FailureKind::Unauthorized,
                format!("access denied: check the camera's user name and password ({said})"),
            ),
            _ => {
                // GStreamer's message is generic ("Could not read from resource."); the last line
                // of its details says what happened ("Could not receive message. (Parse error)").
                let detail = debug
                    .and_then(|d| d.lines().last())
                    .map(quote)
                    .filter(|d| !d.is_empty());
                let said = detail.map_or(said.clone(), |detail| format!("{said} {detail}"));
                Failure::new(FailureKind::Unreachable, format!("cannot reach the source ({said})"))
            }
        };
    }
    if error.matches(gst::CoreError::MissingPlugin) || error.matches(gst::StreamError::CodecNotFound) {
        let what = debug
            .and_then(|d| d.split("Missing decoder: ").nth(1))
            .map(|d| d.lines().next().unwrap_or(d))
            .map(quote)
            .unwrap_or(said);
        return Failure::new(
            FailureKind::UnsupportedCodec,
            format!("no installed GStreamer decoder handles this source's {what}"),
        );
    }
    if error.matches(gst::StreamError::TypeNotFound) {
        let message = if error.message().contains("no data") {
            "the source is empty (no data)".to_string()
        } else {
            "the source is not video that GStreamer recognises (not a media file, or damaged)".to_string()
        };
        return Failure::new(FailureKind::NotMedia, message);
    }
    // A file says the same every time it is read; a live stream may mend.
    let broken_file = error.matches(gst::StreamError::Demux) || error.matches(gst::StreamError::Decode);
    if broken_file && kind == SourceKind::File {
        return Failure::new(
            FailureKind::NotMedia,
            format!("the file is damaged or truncated ({said})"),
        );
    }
    if kind == SourceKind::File && !facts.has_video() {
        return Failure::new(
            FailureKind::NotMedia,
            format!("the file holds no video that can be played ({said})"),
        );
    }
    let not_negotiated = debug.is_some_and(|d| d.contains("not-negotiated"));
    if error.matches(gst::StreamError::Format) || error.matches(gst::CoreError::Negotiation) || not_negotiated {
        return Failure::new(
            FailureKind::UnusableVideo,
            format!("the video cannot be converted for analysis ({said})"),
        );
    }
    Failure::new(FailureKind::StreamError, said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indices_follow_all() {
        let labels: std::collections::HashSet<_> = FailureKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), FailureKind::ALL.len());
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn quotes_are_short_and_cut_on_a_character() {
        assert_eq!(quote("  short "), "short");
        let long = "é".repeat(5000);
        let quoted = quote(&long);
        assert_eq!(quoted.chars().count(), QUOTE_CHARS + 1);
        assert!(quoted.ends_with('…'));
    }

    #[test]
    fn errors_are_sorted_into_permanent_and_transient() {
        gst::init().unwrap();
        let facts = SourceFacts::default();
        let error = |e: gst::glib::Error| classify(&e, None, &facts, SourceKind::Live).kind;
        use gst::glib::Error as E;
        assert_eq!(
            error(E::new(gst::ResourceError::NotFound, "Not Found")),
            FailureKind::NotFound
        );
        assert_eq!(
            error(E::new(gst::ResourceError::NotAuthorized, "401")),
            FailureKind::Unauthorized
        );
        assert_eq!(
            error(E::new(gst::ResourceError::OpenRead, "refused")),
            FailureKind::Unreachable
        );
        assert_eq!(
            error(E::new(gst::StreamError::TypeNotFound, "x")),
            FailureKind::NotMedia
        );
        assert_eq!(
            error(E::new(gst::CoreError::MissingPlugin, "x")),
            FailureKind::UnsupportedCodec
        );
        assert_eq!(error(E::new(gst::StreamError::Failed, "x")), FailureKind::StreamError);
        for kind in [
            FailureKind::NotFound,
            FailureKind::NoVideo,
            FailureKind::CrashedOnProbation,
        ] {
            assert!(kind.is_permanent());
        }
        for kind in [
            FailureKind::Unreachable,
            FailureKind::Stalled,
            FailureKind::Ended,
            FailureKind::StreamError,
        ] {
            assert!(!kind.is_permanent());
        }
    }
}
