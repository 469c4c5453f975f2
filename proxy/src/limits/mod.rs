//! Who a client is and how much it may send: exact sliding-window limits and client identity.

pub mod client_ip;
pub mod quota;
pub mod sliding_window;
