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
//! same way (`connect::ConnectError`); the fatal alert rustls makes goes
//! to the peer, and the error is kept for every later call. A peer that
//! closes TCP without `close_notify` ends the read with `UnexpectedEof`,
//! as rustls's reader does. The read side never fails for the write
//! side: an upstream that answers early and closes, failing the rest of
//! an upload, still has its answer read.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::thread::LocalKey;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

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
    /// Where a vectored write's slices are gathered, to go in one record.
    static SPARE_GATHER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
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
    /// rustls failed: the connection is over.
    failed: Option<rustls::Error>,
    /// Writing to the socket failed: what is made is dropped, and writes
    /// fail; reads go on.
    write_failed: Option<io::ErrorKind>,
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
        failed: None,
        write_failed: None,
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
        if let Some(e) = &self.failed {
            return Err(tls_error(e.clone()));
        }
        let mut sent = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let turn = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut turn = Ok(None);
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                turn = Err(e);
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(buf) = read.as_deref_mut() {
                            let n = payload.len().min(buf.remaining());
                            buf.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plain.extend_from_slice(payload);
                    }
                    turn
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_tls(&mut self.outgoing, &mut encode);
                    Ok(None)
                }
                // Queued in `outgoing`, which is written before anything
                // made after it.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Next::Handshake)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let wrote = match send {
                        Outbound::Data(data) if sent == 0 && !data.is_empty() => {
                            let data = &data[..data.len().min(MAX_WRITE)];
                            let room = data.len() + RECORD_OVERHEAD * (1 + data.len() / 16384);
                            let wrote = append(
                                &mut self.outgoing,
                                room,
                                |out| traffic.encrypt(data, out),
                                encrypt_room,
                            );
                            sent = data.len();
                            wrote
                        }
                        Outbound::CloseNotify if !self.write_closed => {
                            self.write_closed = true;
                            append(
                                &mut self.outgoing,
                                RECORD_OVERHEAD,
                                |out| traffic.queue_close_notify(out),
                                encrypt_room,
                            )
                        }
                        _ => Ok(0),
                    };
                    // Only `EncryptExhausted`: 2^64 records on one key.
                    if let Err(e) = wrote {
                        return Err(io::Error::other(e));
                    }
                    Ok(Some(Next::Traffic))
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    Ok(Some(Next::Closed))
                }
                // Early data is the server's; the enum is non-exhaustive.
                Ok(other) => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS client state {other:?}"
                    )))
                }
            };
            self.incoming.drain(..discard);
            match turn {
                Ok(None) => {}
                Ok(Some(next)) => {
                    give_back(&mut self.incoming, &SPARE_IN);
                    return Ok((next, sent));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// rustls failed: its fatal alert goes out if the socket takes it at
    /// once, and the error stays for every later call.
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        // The alert is queued: one more turn hands it over.
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            self.tls.process_tls_records(&mut self.incoming).state
        {
            encode_tls(&mut self.outgoing, &mut encode);
        }
        self.try_write_tls();
        self.incoming = Vec::new();
        self.failed = Some(e.clone());
        tls_error(e)
    }

    /// Reads what the socket has after the bytes kept: `Ok(0)` at its
    /// close. The thread's buffer goes back if nothing came. (Through
    /// `poll_read`, not `try_read`: a read shorter than the room given
    /// tells Tokio the socket is drained, which spares the next read's
    /// syscall that would only say `EAGAIN`.)
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        borrow(&mut self.incoming, &SPARE_IN);
        self.incoming.reserve(READ_ROOM);
        let read = poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming);
        if !matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            give_back(&mut self.incoming, &SPARE_IN);
        }
        read
    }

    /// Writes what `outgoing` holds; gives the buffer back when done.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.write_failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.out_at < self.outgoing.len() {
            let written = Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]);
            match ready!(written) {
                Ok(0) => return Poll::Ready(Err(self.write_failed(io::ErrorKind::WriteZero))),
                Ok(n) => self.out_at += n,
                Err(e) => {
                    self.write_failed(e.kind());
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.written();
        Poll::Ready(Ok(()))
    }

    /// Writes what `outgoing` holds as far as the socket takes it now,
    /// without waiting (nor taking the writer's wake-up): for the read
    /// side, which sends what rustls made while reading (an alert, a key
    /// update's answer) and never fails for the write side.
    fn try_write_tls(&mut self) {
        if self.write_failed.is_some() {
            return;
        }
        while self.out_at < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.out_at..]) {
                Ok(0) => {
                    self.write_failed(io::ErrorKind::WriteZero);
                    return;
                }
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.write_failed(e.kind());
                    return;
                }
            }
        }
        self.written();
    }

    fn written(&mut self) {
        self.outgoing.clear();
        self.out_at = 0;
        give_back(&mut self.outgoing, &SPARE_OUT);
    }

    fn write_failed(&mut self, kind: io::ErrorKind) -> io::Error {
        self.write_failed = Some(kind);
        self.outgoing = Vec::new();
        self.out_at = 0;
        kind.into()
    }

    /// Encrypts and starts sending up to [`MAX_WRITE`] bytes of `data`.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        // What was made before goes first: a socket that has not taken it
        // holds the writer back.
        ready!(self.poll_write_tls(cx))?;
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS close_notify already sent",
            )));
        }
        let (_, sent) = self.process(Outbound::Data(data), None)?;
        if sent == 0 && !data.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS connection cannot send application data",
            )));
        }
        // Started now; what the socket does not take goes with the next
        // write or flush.
        if let Poll::Ready(Err(e)) = self.poll_write_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(sent))
    }
}

/// Appends to `outgoing` what `write` puts into a slice of it, sized
/// `room` and then as rustls asks (`more` reads the size from the error).
fn append<E>(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    more: impl Fn(&E) -> Option<usize>,
) -> Result<usize, E> {
    borrow(outgoing, &SPARE_OUT);
    loop {
        // rustls writes into an initialised slice.
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        match write(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(n);
            }
            Err(e) => {
                outgoing.truncate(start);
                room = more(&e).ok_or(e)?;
            }
        }
    }
}

/// Appends a handshake or alert record rustls made to `outgoing`.
fn encode_tls(outgoing: &mut Vec<u8>, encode: &mut EncodeTlsData<'_, ClientConnectionData>) {
    // Encoded once: `AlreadyEncoded` cannot come of this.
    let _ = append(
        outgoing,
        512,
        |out| encode.encode(out),
        |e| match e {
            EncodeError::InsufficientSize(e) => Some(e.required_size),
            EncodeError::AlreadyEncoded => None,
        },
    );
}

fn encrypt_room(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    }
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
            let before = buf.filled().len();
            let processed = this.process(Outbound::Nothing, Some(buf));
            this.try_write_tls();
            processed?;
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
        self.get_mut().poll_send(cx, data)
    }

    /// The slices go in one record (a head and its body, a chunk and its
    /// size line), as tokio-rustls did: one encryption and one segment.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().filter(|b| !b.is_empty()).nth(1).is_none() {
            let one = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return this.poll_send(cx, one);
        }
        let mut gathered = SPARE_GATHER.with(Cell::take);
        gathered.clear();
        for buf in bufs {
            let room = MAX_WRITE - gathered.len();
            gathered.extend_from_slice(&buf[..buf.len().min(room)]);
            if gathered.len() == MAX_WRITE {
                break;
            }
        }
        let result = this.poll_send(cx, &gathered);
        gathered.clear();
        SPARE_GATHER.with(|s| s.set(gathered));
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed && this.failed.is_none() {
            this.process(Outbound::CloseNotify, None)?;
            // Also where rustls could not send one (the peer closed both
            // ways first): shut down is shut down.
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
        server_of(rustls::DEFAULT_VERSIONS, trusted, serve).await
    }

    /// The same, speaking only `versions`.
    async fn server_of<F, Fut>(
        versions: &[&'static rustls::SupportedProtocolVersion],
        trusted: bool,
        serve: F,
    ) -> (SocketAddr, Arc<ClientConfig>)
    where
        F: FnOnce(io::Result<server::TlsStream<TcpStream>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
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

    /// 1 MiB up and back through an echoing server, the first bytes in a
    /// vectored write, read in pieces of 1000 bytes: records cross reads,
    /// and are read in several parts. Over TLS 1.3 and 1.2.
    #[tokio::test]
    async fn bytes_cross_both_ways_whole_whatever_the_read_size() {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
            echo_round_trip(versions).await;
        }
    }

    async fn echo_round_trip(versions: &[&'static rustls::SupportedProtocolVersion]) {
        let (addr, client) = server_of(versions, true, |tls| async move {
            let (mut r, mut w) = tokio::io::split(tls.unwrap());
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        })
        .await;
        let tls = dial(addr, client).await.unwrap();
        let version = tls.tls.protocol_version();
        assert_eq!(version, Some(versions[0].version));
        let (mut r, mut w) = tokio::io::split(tls);
        let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let up = sent.clone();
        let writer = tokio::spawn(async move {
            let slices = [
                io::IoSlice::new(&up[..100]),
                io::IoSlice::new(&[]),
                io::IoSlice::new(&up[100..1000]),
            ];
            let n = w.write_vectored(&slices).await.unwrap();
            assert_eq!(n, 1000, "both slices in one write");
            w.write_all(&up[n..]).await.unwrap();
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
        assert_eq!(back.len(), sent.len(), "{version:?}");
        assert!(back == sent, "the bytes came back changed ({version:?})");
    }

    /// An upstream that answers before it has read the whole upload, and
    /// closes: the rest of the upload fails, and the answer is still read
    /// (the read side does not fail for the write side).
    #[tokio::test]
    async fn an_answer_sent_before_the_upload_ended_is_read_after_the_write_fails() {
        let (addr, client) = server(true, |tls| async move {
            let mut tls = tls.unwrap();
            let mut head = [0u8; 5];
            tls.read_exact(&mut head).await.unwrap();
            tls.write_all(b"413 too large").await.unwrap();
            tls.shutdown().await.unwrap();
            // Closed with the upload unread: the kernel resets the rest.
        })
        .await;
        let mut tls = dial(addr, client).await.unwrap();
        let upload = vec![b'u'; 16 << 20];
        let err = tls.write_all(&upload).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"413 too large");
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (addr, client) = server(false, |accepted| async move {
            let _ = tx.send(accepted.err().map(|e| e.to_string()));
        })
        .await;
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
        // The server hears why, in rustls's fatal alert.
        let heard = rx.await.unwrap().expect("the server's handshake failed");
        assert!(heard.contains("alert"), "{heard}");
    }
}
