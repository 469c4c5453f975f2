//! Loopback ports held out of other tests' way.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A loopback port held out of other tests' way: a socket bound to it with SO_REUSEADDR that
/// never listens. Linux does not hand a port with a bound socket to anyone binding port 0 (mock
/// backends, other tests' holds), yet a listener that sets SO_REUSEADDR itself (Pingora, tokio
/// and std all do) may still bind it while this socket is not listening. Nothing listens on it
/// otherwise, so connecting is refused: it doubles as a backend that is and stays down.
pub struct PortHold {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl PortHold {
    /// Holds a port the OS picks.
    pub fn new() -> Self {
        Self::at("127.0.0.1:0".parse().expect("loopback address")).expect("hold a free port")
    }

    /// Holds `addr` (e.g. a killed backend's, so it can come back on it).
    pub fn at(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(PortHold {
            addr,
            _socket: socket,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
