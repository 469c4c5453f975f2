//! A small HTTP/1.1 client that can choose its source address (distinct clients are distinct
//! addresses in 127.0.0.0/8).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpSocket, TcpStream};

pub use test_support::Response;

/// One HTTP/1.1 connection, optionally from a chosen source address.
pub struct Conn {
    stream: AsyncBufReader<TcpStream>,
    pub closed: bool,
}

impl Conn {
    pub async fn connect(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: AsyncBufReader::new(stream),
            closed: false,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        self.send_body(method, path, headers, b"").await
    }

    /// A request with `body` after the header (the caller gives its `Content-Length`).
    pub async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        // `Host: gateway.test` unless the caller names its own.
        let own_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !own_host {
            req.push_str("Host: gateway.test\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        let io = async {
            if let Err(e) = self.stream.get_mut().write_all(&wire).await {
                return Err(not_answered(e.to_string()));
            }
            read_response(&mut self.stream, method == "HEAD").await
        };
        let resp = tokio::time::timeout(Duration::from_secs(20), io)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timeout"))??;
        if resp.closes() {
            self.closed = true;
        }
        Ok(resp)
    }
}

async fn read_response(
    stream: &mut AsyncBufReader<TcpStream>,
    head_only: bool,
) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut line = String::new();
    match stream.read_line(&mut line).await {
        Ok(0) => return Err(not_answered("connection closed before a response".into())),
        Err(e) => return Err(not_answered(e.to_string())),
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // no body
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        stream.read_exact(&mut body).await?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk"))?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        stream.read_to_end(&mut body).await?;
    }
    Ok(Response { body, ..resp })
}

/// A keep-alive client that reconnects when the server closed the connection.
pub struct Client {
    pub to: SocketAddr,
    pub from: Option<IpAddr>,
    conn: Option<Conn>,
    /// TCP connections opened so far.
    pub connections: usize,
    /// Requests re-sent because an idle kept-alive connection had been closed.
    pub stale_retries: usize,
}

/// The connection failed before any byte of a response arrived.
fn not_answered(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why)
}

fn closed_before_answer(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionAborted
}

impl Client {
    pub fn new(to: SocketAddr) -> Self {
        Self::from_addr(to, None)
    }
    pub fn from_addr(to: SocketAddr, from: Option<IpAddr>) -> Self {
        Client {
            to,
            from,
            conn: None,
            connections: 0,
            stale_retries: 0,
        }
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[]).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let reusing = self.conn.as_ref().is_some_and(|c| !c.closed);
        let result = self.request_once(method, path, headers).await;
        // Like browsers, curl and hyper: a kept-alive connection the server closed while idle
        // (before answering anything) is retried once on a fresh connection.
        match result {
            Err(e) if reusing && closed_before_answer(&e) => {
                self.stale_retries += 1;
                self.request_once(method, path, headers).await
            }
            other => other,
        }
    }

    async fn request_once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        if self.conn.as_ref().is_none_or(|c| c.closed) {
            self.conn = Some(Conn::connect(self.to, self.from).await?);
            self.connections += 1;
        }
        let conn = self.conn.as_mut().expect("connected");
        let result = conn.request(method, path, headers).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// `PUT path` with a JSON body on a fresh connection (the mock backend's `/_mock/fault`).
pub async fn put_json(to: SocketAddr, path: &str, json: &str) -> Response {
    let len = json.len().to_string();
    let mut conn = Conn::connect(to, None)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    conn.send_body(
        "PUT",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
            ("Connection", "close"),
        ],
        json.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("PUT {path} via {to}: {e}"))
}

/// One request on a fresh connection; `None` when it could not be made.
pub async fn try_get(to: SocketAddr, path: &str) -> Option<Response> {
    let mut conn = Conn::connect(to, None).await.ok()?;
    conn.request("GET", path, &[("Connection", "close")])
        .await
        .ok()
}

/// One request on a fresh connection; panics when it cannot be made.
pub async fn get(to: SocketAddr, path: &str) -> Response {
    get_with(to, None, path, &[]).await
}

pub async fn get_with(
    to: SocketAddr,
    from: Option<IpAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut conn = Conn::connect(to, from)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    conn.request("GET", path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {to}: {e}"))
}
