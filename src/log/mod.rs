//! The durable descriptor log: the one seam between producing descriptors and everything that
//! reads them (issue #9). Today it holds the store; the writer and readers come next.

pub mod store;

pub use store::{CameraCounters, Record, Store};
