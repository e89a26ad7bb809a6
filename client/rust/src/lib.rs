//! Rust client of sessiond, the gRPC session service for AI-agent runtimes.
//!
//! [`v1`] is generated at build time from `protos/sessiond/v1` (prost
//! messages, tonic clients for SessionService, MessageService and
//! StatsService). Errors are [`tonic::Status`]; read the google.rpc.Status
//! details the server attaches (ErrorInfo reason, BadRequest field
//! violations) with [`tonic_types::StatusExt`], re-exported here.

/// The `sessiond.v1` package: messages and clients.
pub mod v1 {
    tonic::include_proto!("sessiond.v1");
}

pub use tonic;
pub use tonic_types;
pub use tonic_types::StatusExt;
