//! TLS to an upstream over rustls's unbuffered client connection: between
//! records the connection holds no buffer.
//!
//! Why not tokio-rustls: rustls's buffered connection keeps a 4 KiB read
//! buffer for as long as the connection lives (sized again before every
//! read, even one that finds nothing), and an upstream connection relaying
//! an event stream waits between events for minutes: 4 KiB of the 14 KiB a
//! TLS stream held (heap profile in docs/BENCHMARKS.md). Here a read goes
//! into a buffer the thread lends, which the connection keeps only while a
//! record is incomplete; so do decrypted bytes the reader had no room for,
//! and encrypted ones the socket did not take. (nginx does the same with
//! OpenSSL's `SSL_MODE_RELEASE_BUFFERS`.)
//!
//! Errors are rustls's inside an `io::Error` of kind `InvalidData`, as
//! tokio-rustls gives them, so that a failed connect is classified the
//! same way (`connect::ConnectError`). A peer that closes TCP without
//! `close_notify` ends the read with `UnexpectedEof`, as rustls's reader
//! does.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::thread::LocalKey;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room asked of a read from the socket: a whole record of the largest
/// size (16 KiB of payload and its header, tag and padding).
const READ_ROOM: usize = 16 * 1024 + 256;

/// The most plaintext one write encrypts: the socket's backpressure
/// reaches the writer past this.
const MAX_WRITE: usize = 64 * 1024;

/// Room a record adds to its payload, for sizing the output before
/// encrypting (rustls says how much it needs if this falls short).
const RECORD_OVERHEAD: usize = 64;

thread_local! {
    /// Buffers the thread lends to the read, and to the write, under way
    /// on one of its connections; a connection that must keep one (an
    /// incomplete record, a socket that took only part) takes it along.
    static SPARE_IN: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static SPARE_OUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Borrows the thread's spare buffer into `buf` if it holds none.
fn borrow(buf: &mut Vec<u8>, spare: &'static LocalKey<Cell<Vec<u8>>>) {
    if buf.capacity() == 0 {
        *buf = spare.with(Cell::take);
    }
}

/// Gives `buf` back to the thread once it is empty.
fn give_back(buf: &mut Vec<u8>, spare: &'static LocalKey<Cell<Vec<u8>>>) {
    if buf.is_empty() && buf.capacity() != 0 {
        let buf = mem::take(buf);
        spare.with(|s| {
            let kept = s.take();
            s.set(if kept.capacity() >= buf.capacity() {
                kept
            } else {
                buf
            });
        });
    }
}

/// A TLS client stream over TCP, its handshake done.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    tls: UnbufferedClientConnection,
    /// TLS bytes read and not yet processed: an incomplete record.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// TLS bytes made and not yet written, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent `close_notify`: it sends no more.
    read_closed: bool,
    /// We queued our `close_notify`.
    write_closed: bool,
}

/// What rustls is left waiting for once it has done what it can.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Handshake bytes from the peer.
    Handshake,
    /// Nothing: application data may flow.
    Traffic,
    /// Both sides have sent `close_notify`.
    Closed,
}

/// What [`TlsStream::process`] is to send once application data may flow.
#[derive(Clone, Copy)]
enum Outbound<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Opens TLS on `tcp` to `name`, with the ALPN protocols of `config`.
pub(crate) async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsStream> {
    let mut stream = TlsStream {
        tcp,
        tls: UnbufferedClientConnection::new(config, name).map_err(tls_error)?,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        read_closed: false,
        write_closed: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// The protocol the server chose by ALPN.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (next, _) = self.process(Outbound::Nothing, None)?;
            // Our flight (ClientHello, Finished) goes before we wait.
            ready!(self.poll_write_tls(cx))?;
            match next {
                Next::Traffic => return Poll::Ready(Ok(())),
                Next::Closed => return Poll::Ready(Err(closed_in_handshake())),
                Next::Handshake if self.read_closed => {
                    return Poll::Ready(Err(closed_in_handshake()))
                }
                Next::Handshake => {}
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(closed_in_handshake()));
            }
        }
    }

    /// Runs rustls over the bytes read: decrypted data goes to `read` as
    /// far as it has room, the rest to `plain`; records to send go to
    /// `outgoing`; `send` is encrypted once application data may flow.
    /// Returns what rustls waits for, and how much of `send` it took.
    fn process(
        &mut self,
        send: Outbound<'_>,
        mut read: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<(Next, usize)> {
        let mut sent = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let next = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(buf) = read.as_deref_mut() {
                            let n = payload.len().min(buf.remaining());
                            buf.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plain.extend_from_slice(payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut room = 512;
                    loop {
                        let start = reserve_out(&mut self.outgoing, room);
                        match encode.encode(&mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(e)) => {
                                self.outgoing.truncate(start);
                                room = e.required_size;
                            }
                            Err(EncodeError::AlreadyEncoded) => {
                                self.outgoing.truncate(start);
                                break;
                            }
                        }
                    }
                    None
                }
                // Queued in `outgoing`, which is written before anything
                // made after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Next::Handshake),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match send {
                        Outbound::Data(data) if sent == 0 && !data.is_empty() => {
                            let data = &data[..data.len().min(MAX_WRITE)];
                            let mut room = data.len() + RECORD_OVERHEAD * (1 + data.len() / 16384);
                            loop {
                                let start = reserve_out(&mut self.outgoing, room);
                                match traffic.encrypt(data, &mut self.outgoing[start..]) {
                                    Ok(n) => {
                                        self.outgoing.truncate(start + n);
                                        sent = data.len();
                                        break;
                                    }
                                    Err(EncryptError::InsufficientSize(e)) => {
                                        self.outgoing.truncate(start);
                                        room = e.required_size;
                                    }
                                    Err(e @ EncryptError::EncryptExhausted) => {
                                        self.outgoing.truncate(start);
                                        return Err(io::Error::other(e));
                                    }
                                }
                            }
                        }
                        Outbound::CloseNotify if !self.write_closed => {
                            let start = reserve_out(&mut self.outgoing, RECORD_OVERHEAD);
                            match traffic.queue_close_notify(&mut self.outgoing[start..]) {
                                Ok(n) => self.outgoing.truncate(start + n),
                                Err(e) => {
                                    self.outgoing.truncate(start);
                                    return Err(io::Error::other(e));
                                }
                            }
                            self.write_closed = true;
                        }
                        _ => {}
                    }
                    Some(Next::Traffic)
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(Next::Closed)
                }
                // Early data is the server's; the enum is non-exhaustive.
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS client state {other:?}"
                    )))
                }
            };
            self.incoming.drain(..discard);
            if let Some(next) = next {
                give_back(&mut self.incoming, &SPARE_IN);
                return Ok((next, sent));
            }
        }
    }

    /// Reads what the socket has after the bytes kept: `Ok(0)` at its
    /// close. Borrows the thread's buffer only for a socket that is ready.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            borrow(&mut self.incoming, &SPARE_IN);
            self.incoming.reserve(READ_ROOM);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    give_back(&mut self.incoming, &SPARE_IN);
                }
                result => return Poll::Ready(result),
            }
        }
    }

    /// Writes what `outgoing` holds; gives the buffer back when done.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.outgoing.clear();
        self.out_at = 0;
        give_back(&mut self.outgoing, &SPARE_OUT);
        Poll::Ready(Ok(()))
    }
}

/// Grows `outgoing` by `room` zeroed bytes (rustls writes into a slice);
/// returns where they start.
fn reserve_out(outgoing: &mut Vec<u8>, room: usize) -> usize {
    borrow(outgoing, &SPARE_OUT);
    let start = outgoing.len();
    outgoing.resize(start + room, 0);
    start
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upstream closed the connection during the TLS handshake",
    )
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    // Left over only when a reader had too little room, or
                    // records arrived during a write: not kept.
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // What rustls made while reading (an alert, a key update's
            // answer) goes out; a socket full for writing does not stop
            // the read.
            if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            this.process(Outbound::Nothing, Some(buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection without a TLS close_notify",
                )));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was made before goes first: a socket that has not taken it
        // holds the writer back.
        ready!(this.poll_write_tls(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS close_notify already sent",
            )));
        }
        let (_, sent) = this.process(Outbound::Data(data), None)?;
        if sent == 0 && !data.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS connection cannot send application data",
            )));
        }
        // Started now; what the socket does not take goes with the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(sent))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.process(Outbound::CloseNotify, None)?;
            this.write_closed = true;
        }
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::SocketAddr;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::server;

    use super::*;

    /// A rustls server (tokio-rustls) for `localhost` on a free port that
    /// runs `serve` on its first connection; and a client config that
    /// trusts its certificate, or (`trusted` false) nothing.
    async fn server<F, Fut>(trusted: bool, serve: F) -> (SocketAddr, Arc<ClientConfig>)
    where
        F: FnOnce(io::Result<server::TlsStream<TcpStream>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut roots = rustls::RootCertStore::empty();
        if trusted {
            roots.add(der).unwrap();
        }
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(acceptor.accept(tcp).await).await;
        });
        (addr, Arc::new(client))
    }

    async fn dial(addr: SocketAddr, client: Arc<ClientConfig>) -> io::Result<TlsStream> {
        let tcp = TcpStream::connect(addr).await?;
        connect(tcp, client, ServerName::try_from("localhost").unwrap()).await
    }

    fn buffers_held(tls: &TlsStream) -> [usize; 3] {
        [
            tls.incoming.capacity(),
            tls.plain.capacity(),
            tls.outgoing.capacity(),
        ]
    }

    /// 1 MiB up and back through an echoing server, read in pieces of 1000
    /// bytes: records cross reads, and are read in several parts.
    #[tokio::test]
    async fn bytes_cross_both_ways_whole_whatever_the_read_size() {
        let (addr, client) = server(true, |tls| async move {
            let (mut r, mut w) = tokio::io::split(tls.unwrap());
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        })
        .await;
        let (mut r, mut w) = tokio::io::split(dial(addr, client).await.unwrap());
        let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let up = sent.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&up).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(sent.len());
        let mut piece = [0u8; 1000];
        loop {
            let n = r.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&piece[..n]);
        }
        writer.await.unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(back == sent, "the bytes came back changed");
    }

    /// The point of the module: between exchanges a connection keeps no
    /// buffer, not even after reading a session ticket.
    #[tokio::test]
    async fn a_connection_between_exchanges_holds_no_buffer() {
        let (addr, client) = server(true, |tls| async move {
            let mut tls = tls.unwrap();
            let mut ask = [0u8; 5];
            for _ in 0..2 {
                tls.read_exact(&mut ask).await.unwrap();
                tls.write_all(&[b'x'; 3000]).await.unwrap();
            }
            let _ = tls.read(&mut ask).await;
        })
        .await;
        let mut tls = dial(addr, client).await.unwrap();
        assert_eq!(buffers_held(&tls), [0, 0, 0], "after the handshake");
        for _ in 0..2 {
            tls.write_all(b"hello").await.unwrap();
            let mut answer = vec![0u8; 3000];
            tls.read_exact(&mut answer).await.unwrap();
            assert!(answer.iter().all(|&b| b == b'x'));
            assert_eq!(buffers_held(&tls), [0, 0, 0], "after an exchange");
        }
        // The borrowed buffers went back to the thread.
        assert!(SPARE_IN.with(|s| {
            let b = s.take();
            let cap = b.capacity();
            s.set(b);
            cap >= READ_ROOM
        }));
    }

    /// `close_notify` ends the read cleanly; a TCP close without it, after
    /// the data, is `UnexpectedEof`, as rustls's own reader says.
    #[tokio::test]
    async fn close_notify_ends_the_read_and_a_bare_close_is_an_error() {
        let (addr, client) = server(true, |tls| async move {
            let mut tls = tls.unwrap();
            tls.write_all(b"bye").await.unwrap();
            tls.shutdown().await.unwrap();
        })
        .await;
        let mut tls = dial(addr, client).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");

        let (addr, client) = server(true, |tls| async move {
            let mut tls = tls.unwrap();
            tls.write_all(b"cut").await.unwrap();
            tls.flush().await.unwrap();
            // The socket closed under TLS: no close_notify.
            let (tcp, _) = tls.into_inner();
            drop(tcp);
        })
        .await;
        let mut tls = dial(addr, client).await.unwrap();
        let mut got = [0u8; 3];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"cut");
        let err = tls.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// Our shutdown sends `close_notify`: the server reads a clean end.
    #[tokio::test]
    async fn shutdown_sends_close_notify() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (addr, client) = server(true, |tls| async move {
            let mut tls = tls.unwrap();
            let mut got = Vec::new();
            let _ = tx.send(tls.read_to_end(&mut got).await.map(|_| got));
        })
        .await;
        let mut tls = dial(addr, client).await.unwrap();
        tls.write_all(b"last words").await.unwrap();
        tls.shutdown().await.unwrap();
        let got = rx
            .await
            .unwrap()
            .expect("a clean end, not an unexpected EOF");
        assert_eq!(got, b"last words");
    }

    /// An untrusted certificate fails the connect with rustls's error
    /// inside the `io::Error`, which is how a connect failure is told to
    /// be a TLS one.
    #[tokio::test]
    async fn an_untrusted_certificate_fails_with_the_rustls_error() {
        let (addr, client) = server(false, |_| async {}).await;
        let err = match dial(addr, client).await {
            Ok(_) => panic!("an untrusted certificate was accepted"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(inner, Some(rustls::Error::InvalidCertificate(_))),
            "{err:?}"
        );
    }
}
