//! What the workspace's integration tests share (a dev-dependency of `proxy` and
//! `mock-backend` only): the HTTP response their clients read, and a certificate authority made
//! at test time, so nothing committed expires.

mod ca;
mod response;

pub use ca::TestCa;
pub use response::Response;
