//! Connections to one upstream server, over TCP or a unix socket.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::UpstreamAddr;

pub(crate) fn target(addr: &UpstreamAddr) -> Target {
    match addr {
        UpstreamAddr::Tcp { authority } => Target::Tcp(authority.clone()),
        UpstreamAddr::Unix { path } => Target::Unix(path.clone()),
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// Opens a connection to `target` within `timeout`.
pub(crate) async fn connect(target: &Target, timeout: Duration) -> io::Result<Stream> {
    let connect = async {
        match target {
            Target::Tcp(authority) => {
                let s = TcpStream::connect(authority.as_str()).await?;
                // Requests are small writes; do not let Nagle delay them.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Target::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

/// A connection to an upstream server.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Whether an idle pooled connection can still carry a request: no
    /// end-of-stream and no stray bytes are waiting on it. One
    /// non-blocking read, no wait.
    pub(crate) fn is_reusable(&self) -> bool {
        use rustix::net::{recv, RecvFlags};
        let mut probe = [0u8; 1];
        // SECURITY: the kernel is asked (a non-blocking peek), not the
        // reactor's cached readiness: bytes that arrived since the last
        // read (a stray response) may not have reached the reactor yet,
        // and would be read as the next request's answer.
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        let r = match self {
            Stream::Tcp(s) => recv(s, &mut probe[..], flags),
            Stream::Unix(s) => recv(s, &mut probe[..], flags),
        };
        matches!(r, Err(e) if e == rustix::io::Errno::AGAIN)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
