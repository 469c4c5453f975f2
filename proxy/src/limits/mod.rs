//! Who a client is and how much it may send: exact sliding-window limits and client identity.

pub mod client_ip;
pub mod quota;
pub mod shared_store;
pub mod sliding_window;
