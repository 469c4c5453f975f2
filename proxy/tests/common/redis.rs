//! A real `redis-server` on a held loopback port, persistence off, spoken to in raw RESP.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{wait_until, PortHold, TempDir};

/// `redis-server`, killed on drop. Its port stays held (see [`PortHold`]) for the fixture's
/// life, so it can be killed and started again on the same address.
pub struct Redis {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
    _hold: PortHold,
}

impl Redis {
    pub async fn start() -> Redis {
        let hold = PortHold::new();
        let mut redis = Redis {
            addr: hold.addr,
            child: None,
            dir: TempDir::new("redis"),
            _hold: hold,
        };
        redis.launch().await;
        redis
    }

    /// The URL the proxy is given.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let addr = self.addr;
        let up = wait_until(Duration::from_secs(20), || async move {
            command(addr, &["PING"]).await.as_deref() == Some("PONG")
        })
        .await;
        assert!(up, "redis-server did not answer PING on {addr}");
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// One command; its reply as text (`None` when Redis did not answer).
    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        command(self.addr, args).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `args` as a RESP array and reads one reply: a simple string, error, integer or bulk
/// string as text; an array as its elements joined by spaces (one level).
async fn command(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let io = async {
        let mut stream = BufReader::new(TcpStream::connect(addr).await.ok()?);
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.get_mut().write_all(req.as_bytes()).await.ok()?;
        read_reply(&mut stream).await
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
}

async fn read_reply(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let line = line.trim_end().to_owned();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | "-" | ":" => Some(rest.to_owned()),
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n < 0 {
                return Some(String::new());
            }
            let mut value = String::new();
            stream.read_line(&mut value).await.ok()?;
            Some(value.trim_end().to_owned())
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(Box::pin(read_reply(stream)).await?);
            }
            Some(items.join(" "))
        }
        _ => None,
    }
}
