//! The replication connection's wire protocol, on a plain tokio socket.
//!
//! tokio-postgres has no replication support, so this is a small frontend of
//! its own: SSL negotiation, startup with `replication=database`, password
//! authentication (cleartext, MD5, SCRAM-SHA-256 via `postgres-protocol`),
//! simple queries returning text rows, and the CopyBoth sub-protocol that
//! `START_REPLICATION` switches to. Reads are cancel-safe: bytes stay in the
//! connection's buffer until a whole message is there.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::pgconn::{ConnInfo, SslMode};

/// A message is never allowed to claim more than this many bytes (1 GiB is
/// Postgres's own limit for one field).
const MAX_MESSAGE: usize = 1 << 30;

/// An error reported by the server (`ErrorResponse`).
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, " detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

/// What can go wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("server: {0}")]
    Server(ServerError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("settings: {0}")]
    Settings(#[from] crate::pgconn::ConnInfoError),
}

impl WireError {
    /// The SQLSTATE, when the server said no.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            WireError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Plain TCP or TLS, behind one type.
struct Socket(Box<dyn Stream>);

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// One backend message: its type byte and body.
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// What arrives while streaming.
pub enum CopyMessage {
    Data(Bytes),
    Done,
}

/// A connection in replication mode.
pub struct ReplConnection {
    socket: Socket,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// ParameterStatus values the server reported (server_version, ...).
    pub params: HashMap<String, String>,
    pub tls: bool,
}

impl ReplConnection {
    /// Connects, negotiates TLS per `sslmode`, starts up in `replication=database`
    /// mode and authenticates, within `info.connect_timeout`.
    pub async fn connect(info: &ConnInfo) -> Result<ReplConnection, WireError> {
        tokio::time::timeout(info.connect_timeout, Self::connect_inner(info))
            .await
            .map_err(|_| WireError::Timeout("connecting to postgres"))?
    }

    async fn connect_inner(info: &ConnInfo) -> Result<ReplConnection, WireError> {
        let mut tcp = TcpStream::connect((info.host.as_str(), info.port)).await?;
        tcp.set_nodelay(true)?;
        // A peer that vanishes (a failed-over database, a cut network) is
        // noticed by the kernel in about 25 s instead of 15 minutes; the
        // stream's own receive deadline is usually faster still.
        let sock = socket2::SockRef::from(&tcp);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(10))
            .with_interval(std::time::Duration::from_secs(5))
            .with_retries(3);
        sock.set_tcp_keepalive(&keepalive)?;
        #[cfg(target_os = "linux")]
        sock.set_tcp_user_timeout(Some(std::time::Duration::from_secs(25)))?;
        let (socket, tls) = match info.tls_config()? {
            None => (Socket(Box::new(tcp)), false),
            Some(config) => {
                let mut buf = BytesMut::new();
                frontend::ssl_request(&mut buf);
                tcp.write_all(&buf).await?;
                let answer = tcp.read_u8().await?;
                match answer {
                    b'S' => {
                        let connector = tokio_rustls::TlsConnector::from(config);
                        let stream = connector
                            .connect(info.server_name()?, tcp)
                            .await
                            .map_err(|e| WireError::Tls(e.to_string()))?;
                        (Socket(Box::new(stream)), true)
                    }
                    b'N' if info.sslmode == SslMode::Prefer => (Socket(Box::new(tcp)), false),
                    b'N' => return Err(WireError::Tls("server does not support SSL, but sslmode requires it".into())),
                    other => return Err(WireError::Protocol(format!("unexpected answer {other:#x} to SSLRequest"))),
                }
            }
        };
        let mut conn = ReplConnection {
            socket,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            params: HashMap::new(),
            tls,
        };
        conn.startup(info).await?;
        Ok(conn)
    }

    async fn startup(&mut self, info: &ConnInfo) -> Result<(), WireError> {
        let params: [(&str, &str); 7] = [
            ("user", &info.user),
            ("database", &info.dbname),
            ("replication", "database"),
            ("application_name", &info.application_name),
            ("client_encoding", "UTF8"),
            // Decoded values are rendered by the walsender's output functions:
            // fix their format so timestamps parse the same everywhere.
            ("DateStyle", "ISO, YMD"),
            ("TimeZone", "UTC"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'R' => {
                    let mut body = frame.body;
                    if body.len() < 4 {
                        return Err(WireError::Protocol("short authentication message".into()));
                    }
                    let kind = body.get_i32();
                    match kind {
                        0 => {}
                        3 => {
                            let pw = password(info)?;
                            frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        5 => {
                            if body.len() < 4 {
                                return Err(WireError::Protocol("short MD5 salt".into()));
                            }
                            let mut salt = [0u8; 4];
                            body.copy_to_slice(&mut salt);
                            let pw = password(info)?;
                            let hash =
                                postgres_protocol::authentication::md5_hash(info.user.as_bytes(), pw.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechanisms: Vec<String> = body
                                .split(|b| *b == 0)
                                .filter(|m| !m.is_empty())
                                .map(|m| String::from_utf8_lossy(m).into_owned())
                                .collect();
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(WireError::Auth(format!(
                                    "server offers SASL mechanisms {mechanisms:?}, none supported"
                                )));
                            }
                            // Plain SCRAM-SHA-256 without channel binding ("n"):
                            // always accepted; with verify-full TLS the channel is
                            // already authenticated.
                            let pw = password(info)?;
                            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| WireError::Protocol("SASL continue without start".into()))?;
                            s.update(&body).map_err(|e| WireError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s =
                                scram.as_mut().ok_or_else(|| WireError::Protocol("SASL final without start".into()))?;
                            s.finish(&body).map_err(|e| WireError::Auth(format!("server signature invalid: {e}")))?;
                        }
                        other => return Err(WireError::Auth(format!("unsupported authentication method {other}"))),
                    }
                }
                b'S' => {
                    let mut parts = frame.body.split(|b| *b == 0);
                    if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                        self.params
                            .insert(String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned());
                    }
                }
                b'K' | b'N' => {}
                b'E' => return Err(parse_server_error(&frame.body)),
                b'Z' => return Ok(()),
                other => {
                    return Err(WireError::Protocol(format!("unexpected message {:?} during startup", other as char)))
                }
            }
        }
    }

    /// Reads one whole backend message. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(WireError::Protocol(format!("invalid message length {len}")));
                }
                if self.rbuf.len() > len {
                    let tag = self.rbuf[0];
                    let mut msg = self.rbuf.split_to(len + 1);
                    msg.advance(5);
                    return Ok(Frame { tag, body: msg.freeze() });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8 * 1024 {
                self.rbuf.reserve(64 * 1024);
            }
            let n = self.socket.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.socket.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.socket.flush().await?;
        Ok(())
    }

    /// Runs one simple query and returns its rows as text (NULL as None).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'D' => rows.push(parse_data_row(&frame.body)?),
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'E' => error = Some(parse_server_error(&frame.body)),
                b'Z' => break,
                other => return Err(WireError::Protocol(format!("unexpected message {:?} in query", other as char))),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends a command that answers with CopyBothResponse (START_REPLICATION).
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'N' | b'S' => {}
                b'E' => {
                    let err = parse_server_error(&frame.body);
                    // Drain to ReadyForQuery so the caller may retry on this connection.
                    loop {
                        if self.read_frame().await?.tag == b'Z' {
                            break;
                        }
                    }
                    return Err(err);
                }
                other => {
                    return Err(WireError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// The next CopyData payload (or the server's CopyDone). Cancel-safe.
    pub async fn recv_copy(&mut self) -> Result<CopyMessage, WireError> {
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'd' => return Ok(CopyMessage::Data(frame.body)),
                // CopyDone, or the walsender finishing the command (server shutdown).
                b'c' | b'C' | b'Z' => return Ok(CopyMessage::Done),
                b'E' => return Err(parse_server_error(&frame.body)),
                b'N' => {
                    let notice = parse_server_error(&frame.body);
                    tracing::info!(notice = %notice, "postgres notice");
                }
                b'S' => {}
                other => {
                    return Err(WireError::Protocol(format!("unexpected message {:?} while streaming", other as char)))
                }
            }
        }
    }

    /// Sends one CopyData message (standby status updates).
    pub async fn send_copy_data(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.wbuf.extend_from_slice(b"d");
        self.wbuf.extend_from_slice(&((data.len() + 4) as u32).to_be_bytes());
        self.wbuf.extend_from_slice(data);
        self.flush().await
    }

    /// Ends the copy and the session politely (best effort).
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.flush()).await;
        let _ = self.socket.shutdown().await;
    }
}

fn password(info: &ConnInfo) -> Result<&str, WireError> {
    info.password
        .as_deref()
        .ok_or_else(|| WireError::Auth("the server asked for a password and DATABASE_URL has none".into()))
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let short = || WireError::Protocol("truncated DataRow".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(short());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(short());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return Err(short());
            }
            row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
            b.advance(len);
        }
    }
    Ok(row)
}

/// Parses the fields of an ErrorResponse or NoticeResponse.
pub fn parse_server_error(body: &[u8]) -> WireError {
    let mut e = ServerError::default();
    for field in body.split(|b| *b == 0) {
        if let Some((&kind, value)) = field.split_first() {
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
    }
    WireError::Server(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"x\" is active for PID 7\0\0";
        match parse_server_error(body) {
            WireError::Server(e) => {
                assert_eq!(e.code, "55006");
                assert_eq!(e.severity, "ERROR");
                assert!(e.message.contains("is active"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_row_rejects_truncation() {
        let mut ok = vec![0, 2, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&ok).unwrap(), vec![Some("a".to_string()), None]);
        ok.truncate(6);
        assert!(parse_data_row(&ok).is_err());
        assert!(parse_data_row(&[0]).is_err());
    }
}
