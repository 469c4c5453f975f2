//! Running the process: the admin listener, SIGHUP reload, signals, start-up checks and drain.

pub mod admin;
pub mod lifecycle;
pub mod reload;
pub mod signals;
pub mod startup;
pub mod write_deadline;
