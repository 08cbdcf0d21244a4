//! # keybridge
//!
//! The signing bridge: the per-user daemon (`keybridge serve`), its HTTP
//! API on a Unix socket, the one client of that API, and the command line
//! (DESIGN.md §6, §9). The binary is a thin `main` over this library, as
//! mini-redis is, so that the CLI, the tests and the benchmarks speak to
//! the daemon through the same [`client`] and the same [`wire`] types.
//!
//! | module | what |
//! |---|---|
//! | [`server`] | the daemon's lifecycle: folders, locks, listen, serve with limits, drain, exit |
//! | [`api`] | the routes, one module per route group; errors → RFC 9457 problems |
//! | [`wire`] | the requests and answers of the API, as types |
//! | [`client`] | the one client of the socket (checks who listens before sending) |
//! | [`keys`] | the daemon's keys: records, workers, names |
//! | [`unlock`] | prompt frequency: modes, grants, deadlines, backoff, the expiry sweep |
//! | [`policy`] | the administrator's policy narrowed by the user's config |
//! | [`audit`] | the audit log |
//! | [`recovery`] | the account's recovery key and its age file |
//! | [`paths`] | where files live; private folders, atomic writes |
//! | [`clock`] | wall clock and boot clock |
//! | [`cli`] | the command line, one module per subcommand |

pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod keys;
pub mod logfile;
pub mod notify;
pub mod pairing;
pub mod paths;
pub mod pinentry;
pub mod policy;
pub mod recovery;
pub mod server;
pub mod unlock;
pub mod wire;
