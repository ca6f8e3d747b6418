//! The daemon's WebSocket messages. `docs/protocol.md` is their reference, and the
//! `protocol_doc` integration test keeps it in step with this module: the ops a client may send
//! ([`ClientOp`]), the ops the daemon sends ([`ServerOp`]), the error codes ([`ErrorCode`]), the
//! close codes ([`CloseCode`]) and the hello refusals ([`HelloError`], [`HelloDetail`]) each have an `ALL` list
//! that the compiler checks against the enum, so a new variant cannot be left out of it.
//!
//! Inbound frames are parsed leniently and never panic: unknown fields are ignored (the stdio
//! shim's hello carries `protocolVersion`, `capabilities`, `clientInfo`), optional fields default,
//! and a malformed request becomes a [`RequestError`] carrying whatever `request_id`/`id` could be
//! read, so the error reply can echo them. Outbound frames are [`ServerMessage`]s, tagged by
//! `op`; every reply echoes the request's `request_id` and, for single-frame clients, its `id`
//! ([`ReplyTo`]). Both directions implement `Serialize` and `Deserialize`, so a Rust client (the
//! tests, the benchmark) speaks the protocol with the same types.
//!
//! Job ids of calls are derived here ([`call_job_id`]): per (session, request id) in streaming
//! mode, so a repeated `call_tool` attaches to its job instead of running it twice and two
//! sessions never share one; fresh and unguessable in single-frame mode ([`fresh_call_job_id`]).

/// Defines `ALL`, every variant of a field-less enum, from one list, together with a `match`
/// over the same list that has no wildcard arm: a variant missing from the list is a compile
/// error ("non-exhaustive patterns"), and one listed twice is an unreachable-pattern warning.
macro_rules! every_variant {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in the order of the list (checked exhaustive at compile time).
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
        }

        const _: () = {
            /// Never called: it only makes the compiler check that the list is exhaustive.
            #[allow(dead_code)]
            fn listed_exhaustively(value: $ty) {
                match value {
                    $($ty::$variant)|+ => {}
                }
            }
        };
    };
}

mod codes;
mod ids;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

pub use codes::*;
pub use ids::*;
pub use inbound::*;
pub use outbound::*;
