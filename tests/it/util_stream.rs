//! A minimal RabbitMQ stream-protocol client for the stream tests (tokio and std only): named and
//! unnamed readers with stored offsets and credit under the test's control, and a publisher with
//! confirms. AMQP readers of a stream expose no offset, so the lag tests need real stream-protocol
//! readers. Follows `deps/rabbitmq_stream/docs/PROTOCOL.adoc` of rabbitmq-server. A background
//! task reads frames and dispatches responses by correlation id and `Deliver` frames by
//! subscription id; another task writes frames. Broker heartbeats are echoed.

#![allow(dead_code)] // not every test uses every call

use std::collections::HashMap;
use std::io::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const DECLARE_PUBLISHER: u16 = 0x01;
const PUBLISH: u16 = 0x02;
const PUBLISH_CONFIRM: u16 = 0x03;
const PUBLISH_ERROR: u16 = 0x04;
const SUBSCRIBE: u16 = 0x07;
const DELIVER: u16 = 0x08;
const CREDIT: u16 = 0x09;
const STORE_OFFSET: u16 = 0x0a;
const QUERY_OFFSET: u16 = 0x0b;
const UNSUBSCRIBE: u16 = 0x0c;
const CREATE: u16 = 0x0d;
const DELETE: u16 = 0x0e;
const PEER_PROPERTIES: u16 = 0x11;
const SASL_HANDSHAKE: u16 = 0x12;
const SASL_AUTHENTICATE: u16 = 0x13;
const TUNE: u16 = 0x14;
const OPEN: u16 = 0x15;
const CLOSE: u16 = 0x16;
const HEARTBEAT: u16 = 0x17;
const CONSUMER_UPDATE: u16 = 0x1a;
const RESPONSE: u16 = 0x8000;

/// Response code: OK.
pub const CODE_OK: u16 = 0x01;
/// Response code: stream already exists.
pub const CODE_STREAM_ALREADY_EXISTS: u16 = 0x05;
/// Response code: no offset stored for this reference (QueryOffset).
pub const CODE_NO_OFFSET: u16 = 0x13;

const TIMEOUT: Duration = Duration::from_secs(30);

fn code_err(what: &str, code: u16) -> Error {
    let name = match code {
        0x02 => "stream does not exist",
        0x04 => "subscription id does not exist",
        0x05 => "stream already exists",
        0x06 => "stream not available",
        0x08 => "authentication failure",
        0x0c => "virtual host access failure",
        0x10 => "access refused",
        0x11 => "precondition failed",
        0x13 => "no offset",
        _ => "see PROTOCOL.adoc",
    };
    Error::other(format!("{what} failed: response code {code:#04x} ({name})"))
}

/// Wraps `body` as a minimal valid AMQP 1.0 message: one Data section
/// (descriptor `0x00 0x53 0x75`, then `vbin8` `0xa0` or `vbin32` `0xb0`).
pub fn amqp_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x53, 0x75];
    match u8::try_from(body.len()) {
        Ok(n) => m.extend_from_slice(&[0xa0, n]),
        Err(_) => {
            m.push(0xb0);
            m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        }
    }
    m.extend_from_slice(body);
    m
}

/// Body of a message made of one AMQP 1.0 Data section (inverse of [`amqp_message`]).
pub fn amqp_body(msg: &[u8]) -> Option<&[u8]> {
    match msg {
        [0x00, 0x53, 0x75, 0xa0, n, rest @ ..] if rest.len() == *n as usize => Some(rest),
        [0x00, 0x53, 0x75, 0xb0, a, b, c, d, rest @ ..]
            if rest.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// Where a subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first message still in the stream.
    First,
    /// The last chunk of the stream.
    Last,
    /// Only messages published after subscribing.
    Next,
    /// The chunk containing this offset.
    Offset(u64),
    /// Messages from this time on (milliseconds since the epoch).
    Timestamp(i64),
}

/// Outgoing frame: size placeholder, key, version 1; the flag marks an over-long string.
struct Frame(Vec<u8>, bool);

impl Frame {
    fn new(key: u16) -> Frame {
        Frame(vec![0, 0, 0, 0, (key >> 8) as u8, key as u8, 0, 1], false)
    }
    fn put<const N: usize>(&mut self, b: [u8; N]) -> &mut Self {
        self.0.extend_from_slice(&b);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.1 |= b.len() > i32::MAX as usize;
        self.put((b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.1 |= s.len() > i16::MAX as usize;
        self.put((s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn map(&mut self, kv: &[(&str, &str)]) -> &mut Self {
        self.put((kv.len() as u32).to_be_bytes());
        kv.iter().fold(self, |f, (k, v)| f.str(k).str(v))
    }
    fn finish(mut self) -> Result<Vec<u8>> {
        if self.1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "string too long for a frame",
            ));
        }
        let size = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&size.to_be_bytes());
        Ok(self.0)
    }
}

/// Bounds-checked big-endian reader over an incoming frame.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::new(ErrorKind::InvalidData, "truncated stream frame"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        self.arr().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32> {
        self.arr().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.arr().map(u64::from_be_bytes)
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as i16;
        Ok(String::from_utf8_lossy(self.take(n.max(0) as usize)?).into_owned())
    }
}

enum Confirm {
    Ok(Vec<u64>),
    Err(u64, u16),
}

/// Snapshot of a subscription's counters (updated by the connection's reader task).
#[derive(Debug, Clone, Default)]
pub struct SubStats {
    /// Messages (records of user chunks) delivered so far.
    pub delivered: u64,
    /// Chunks delivered so far.
    pub chunks: u64,
    /// First offset (chunk id) of the last delivered chunk.
    pub last_chunk_id: Option<u64>,
    /// Offset of the last delivered message: chunk id + number of records - 1.
    pub last_offset: Option<u64>,
    /// Raw bytes of the last delivered simple entry (an AMQP 1.0 message, see [`amqp_body`]).
    pub last_message: Option<Vec<u8>>,
    /// Whether the broker has this consumer active: starts false for
    /// `single-active-consumer=true` subscriptions (until a ConsumerUpdate), true otherwise.
    pub active: bool,
    /// Whether one credit is granted back for each chunk received.
    pub auto_credit: bool,
}

struct Sub {
    stats: Mutex<SubStats>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    pending: HashMap<u32, oneshot::Sender<(u16, Vec<u8>)>>,
    subs: HashMap<u8, Arc<Sub>>,
    confirms: HashMap<u8, mpsc::UnboundedSender<Confirm>>,
    tune: Option<oneshot::Sender<()>>,
    closed: Option<String>,
    next_sub: u8,
    next_pub: u8,
}

struct Inner {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    corr: AtomicU32,
    frame_max: AtomicU32,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn closed_err(&self) -> Error {
        let why = lock(&self.state)
            .closed
            .clone()
            .unwrap_or_else(|| "writer stopped".into());
        Error::new(
            ErrorKind::ConnectionAborted,
            format!("stream connection closed: {why}"),
        )
    }

    fn send(&self, frame: Frame) -> Result<()> {
        let bytes = frame.finish()?;
        self.tx.send(bytes).map_err(|_| self.closed_err())
    }

    /// Sends a request under a fresh correlation id; returns (response code, rest of response).
    async fn request(
        &self,
        key: u16,
        build: impl FnOnce(&mut Frame) -> &mut Frame,
    ) -> Result<(u16, Vec<u8>)> {
        let corr = self.corr.fetch_add(1, Ordering::Relaxed);
        let mut f = Frame::new(key);
        build(f.put(corr.to_be_bytes()));
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                drop(st);
                return Err(self.closed_err());
            }
            st.pending.insert(corr, tx);
        }
        if let Err(e) = self.send(f) {
            lock(&self.state).pending.remove(&corr);
            return Err(e);
        }
        match tokio::time::timeout(TIMEOUT, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(self.closed_err()),
            Err(_) => {
                lock(&self.state).pending.remove(&corr);
                let msg = format!("no response to command {key:#06x}");
                Err(Error::new(ErrorKind::TimedOut, msg))
            }
        }
    }

    /// Like `request`, but a response code other than OK is an error.
    async fn request_ok(
        &self,
        what: &str,
        key: u16,
        build: impl FnOnce(&mut Frame) -> &mut Frame,
    ) -> Result<Vec<u8>> {
        match self.request(key, build).await? {
            (CODE_OK, rest) => Ok(rest),
            (code, _) => Err(code_err(what, code)),
        }
    }

    fn credit(&self, sub: u8, n: u16) -> Result<()> {
        let mut f = Frame::new(CREDIT);
        f.put([sub]).put(n.to_be_bytes());
        self.send(f)
    }

    fn sub(&self, id: u8) -> Option<Arc<Sub>> {
        lock(&self.state).subs.get(&id).cloned()
    }

    fn dispatch(&self, frame: &[u8]) -> Result<()> {
        let mut r = Rd(frame);
        let (key, version) = (r.u16()?, r.u16()?);
        match key {
            DELIVER => self.on_deliver(version, r)?,
            HEARTBEAT => self.send(Frame::new(HEARTBEAT))?,
            TUNE => {
                // Agree to the broker's frame max and heartbeat.
                let (frame_max, heartbeat) = (r.u32()?, r.u32()?);
                let mut f = Frame::new(TUNE);
                f.put(frame_max.to_be_bytes()).put(heartbeat.to_be_bytes());
                self.send(f)?;
                self.frame_max.store(frame_max, Ordering::Relaxed);
                if let Some(t) = lock(&self.state).tune.take() {
                    let _ = t.send(());
                }
            }
            PUBLISH_CONFIRM | PUBLISH_ERROR => {
                let publisher = r.u8()?;
                let mut ids = Vec::new();
                let mut errors = Vec::new();
                for _ in 0..r.u32()? {
                    let id = r.u64()?;
                    match key {
                        PUBLISH_ERROR => errors.push(Confirm::Err(id, r.u16()?)),
                        _ => ids.push(id),
                    }
                }
                if let Some(tx) = lock(&self.state).confirms.get(&publisher) {
                    errors
                        .into_iter()
                        .chain([Confirm::Ok(ids)])
                        .for_each(|c| drop(tx.send(c)));
                }
            }
            CLOSE => {
                let (corr, code, reason) = (r.u32()?, r.u16()?, r.str()?);
                lock(&self.state).closed =
                    Some(format!("closed by broker ({code:#04x}, {reason})"));
                let mut f = Frame::new(CLOSE | RESPONSE);
                f.put(corr.to_be_bytes()).put(CODE_OK.to_be_bytes());
                self.send(f)?;
            }
            CONSUMER_UPDATE => {
                // Single active consumer: the broker says whether we are active and asks
                // where to start; offset type 0 ("none") = the spec given at subscribe time.
                let (corr, sub, active) = (r.u32()?, r.u8()?, r.u8()? != 0);
                if let Some(s) = self.sub(sub) {
                    lock(&s.stats).active = active;
                    s.notify.notify_waiters();
                }
                let mut f = Frame::new(CONSUMER_UPDATE | RESPONSE);
                f.put(corr.to_be_bytes())
                    .put(CODE_OK.to_be_bytes())
                    .put(0u16.to_be_bytes());
                self.send(f)?;
            }
            k if k == CREDIT | RESPONSE => {} // only sent on error, e.g. unknown subscription
            k if k & RESPONSE != 0 => {
                let (corr, code) = (r.u32()?, r.u16()?);
                if let Some(tx) = lock(&self.state).pending.remove(&corr) {
                    let _ = tx.send((code, r.0.to_vec()));
                }
            }
            _ => {} // MetadataUpdate and anything else: ignored
        }
        Ok(())
    }

    fn on_deliver(&self, version: u16, mut r: Rd<'_>) -> Result<()> {
        let sub_id = r.u8()?;
        if version >= 2 {
            r.u64()?; // committed chunk id
        }
        // OsirisChunk header: magic+version, type, entries, records, timestamp, epoch,
        // chunk id (first offset), crc, data length, trailer length, bloom size, reserved.
        let (_magic, chunk_type, _entries) = (r.u8()?, r.u8()?, r.u16()?);
        let num_records = u64::from(r.u32()?);
        let (_timestamp, _epoch, chunk_id) = (r.u64()?, r.u64()?, r.u64()?);
        let (_crc, data_len, _trailer_len) = (r.u32()?, r.u32()? as usize, r.u32()?);
        let bloom_size = r.u8()? as usize;
        r.take(3 + bloom_size)?;
        let mut data = Rd(r.take(data_len)?);
        let Some(sub) = self.sub(sub_id) else {
            return Ok(());
        };
        let mut last = None;
        while let Some(&first_byte) = data.0.first() {
            if first_byte & 0x80 == 0 {
                let len = data.u32()? as usize; // simple entry
                last = Some(data.take(len)?);
            } else {
                data.take(7)?; // sub-batch: flags, record count, uncompressed length
                let len = data.u32()? as usize;
                data.take(len)?;
            }
        }
        let auto_credit = {
            let mut s = lock(&sub.stats);
            if chunk_type == 0 && num_records > 0 {
                s.delivered += num_records;
                s.last_chunk_id = Some(chunk_id);
                s.last_offset = Some(chunk_id.saturating_add(num_records - 1));
                if let Some(m) = last {
                    s.last_message = Some(m.to_vec());
                }
            }
            s.chunks += 1;
            s.auto_credit
        };
        sub.notify.notify_waiters();
        if auto_credit {
            self.credit(sub_id, 1)?;
        }
        Ok(())
    }
}

async fn read_loop(mut rd: tokio::net::tcp::OwnedReadHalf, inner: Arc<Inner>) {
    let reason = loop {
        let mut len = [0u8; 4];
        if let Err(e) = rd.read_exact(&mut len).await {
            break format!("read: {e}");
        }
        let n = u32::from_be_bytes(len) as usize;
        if !(4..=256 << 20).contains(&n) {
            break format!("bad frame size {n}");
        }
        let mut buf = vec![0u8; n];
        if let Err(e) = rd.read_exact(&mut buf).await {
            break format!("read: {e}");
        }
        if let Err(e) = inner.dispatch(&buf) {
            break format!("bad frame: {e}");
        }
    };
    let mut st = lock(&inner.state);
    st.closed.get_or_insert(reason);
    st.pending.clear(); // waiting requests fail with the close reason
    st.confirms.clear();
    st.tune = None;
    st.subs.values().for_each(|s| s.notify.notify_waiters());
}

struct Publisher {
    id: u8,
    next_seq: u64,
    confirms: mpsc::UnboundedReceiver<Confirm>,
}

type Publishers = tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Publisher>>>>;

/// A connection to the stream protocol port of one broker node.
pub struct StreamClient {
    inner: Arc<Inner>,
    publishers: Publishers,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl StreamClient {
    /// Connects to `addr` (e.g. "127.0.0.1:5552"), authenticates with SASL PLAIN, tunes and
    /// opens `vhost`. `connection_name` is sent as the `connection_name` peer property,
    /// shown by the management API/UI as `user_provided_name`.
    pub async fn connect(
        addr: &str,
        vhost: &str,
        user: &str,
        password: &str,
        connection_name: &str,
    ) -> Result<StreamClient> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let (rd, mut wr) = sock.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (tune_tx, tune_rx) = oneshot::channel();
        let state = State {
            tune: Some(tune_tx),
            ..State::default()
        };
        let inner = Arc::new(Inner {
            tx,
            corr: AtomicU32::new(1),
            frame_max: AtomicU32::new(1 << 20),
            state: Mutex::new(state),
        });
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(rd, inner.clone()));
        let client = StreamClient {
            inner,
            publishers: Default::default(),
            tasks: [writer, reader],
        };
        let inner = &client.inner;

        let props = [
            ("product", "streamclient-it"),
            ("platform", "Rust/tokio"),
            ("connection_name", connection_name),
        ];
        inner
            .request_ok("peer properties", PEER_PROPERTIES, |f| f.map(&props))
            .await?;
        inner
            .request_ok("sasl handshake", SASL_HANDSHAKE, |f| f)
            .await?;
        let plain = format!("\0{user}\0{password}");
        let auth = inner.request_ok("sasl authenticate", SASL_AUTHENTICATE, |f| {
            f.str("PLAIN").bytes(plain.as_bytes())
        });
        auth.await?;
        match tokio::time::timeout(TIMEOUT, tune_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(inner.closed_err()),
            Err(_) => return Err(Error::new(ErrorKind::TimedOut, "no tune frame from broker")),
        }
        inner.request_ok("open", OPEN, |f| f.str(vhost)).await?;
        Ok(client)
    }

    /// Creates a stream with arguments such as `("max-length-bytes", "2000000")` or
    /// `("stream-max-segment-size-bytes", "500000")`. "Stream already exists" is `Ok`
    /// (but other arguments than the existing stream's give "precondition failed").
    pub async fn create_stream(&self, name: &str, arguments: &[(&str, &str)]) -> Result<()> {
        let (code, _) = self
            .inner
            .request(CREATE, |f| f.str(name).map(arguments))
            .await?;
        match code {
            CODE_OK | CODE_STREAM_ALREADY_EXISTS => Ok(()),
            c => Err(code_err("create stream", c)),
        }
    }

    /// Deletes a stream.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        let req = self
            .inner
            .request_ok("delete stream", DELETE, |f| f.str(name));
        req.await.map(drop)
    }

    /// Publishes `messages` (AMQP 1.0 encoded, see [`amqp_message`]) and waits until the
    /// broker confirmed all of them. One publisher per stream is declared lazily.
    pub async fn publish(&self, stream: &str, messages: &[Vec<u8>]) -> Result<()> {
        let publisher = self.publisher(stream).await?;
        let mut p = publisher.lock().await;
        let first = p.next_seq;
        p.next_seq += messages.len() as u64;
        let limit = (self.inner.frame_max.load(Ordering::Relaxed) as usize).clamp(8192, 1 << 20);
        let mut rest = messages.iter().zip(first..).peekable();
        while rest.peek().is_some() {
            let mut f = Frame::new(PUBLISH);
            f.put([p.id]).put(0u32.to_be_bytes());
            let mut count = 0u32;
            while let Some((m, seq)) =
                rest.next_if(|(m, _)| count == 0 || f.0.len() + m.len() + 12 < limit)
            {
                f.put(seq.to_be_bytes()).bytes(m);
                count += 1;
            }
            f.0[9..13].copy_from_slice(&count.to_be_bytes());
            self.inner.send(f)?;
        }
        let (end, mut confirmed) = (first + messages.len() as u64, 0);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while confirmed < messages.len() {
            match tokio::time::timeout_at(deadline, p.confirms.recv()).await {
                Ok(Some(Confirm::Ok(ids))) => {
                    confirmed += ids.iter().filter(|id| (first..end).contains(*id)).count()
                }
                Ok(Some(Confirm::Err(id, code))) => {
                    return Err(code_err(&format!("publish #{id}"), code));
                }
                Ok(None) => return Err(self.inner.closed_err()),
                Err(_) => {
                    let msg = format!("{confirmed} of {} publish confirms", messages.len());
                    return Err(Error::new(ErrorKind::TimedOut, msg));
                }
            }
        }
        Ok(())
    }

    async fn publisher(&self, stream: &str) -> Result<Arc<tokio::sync::Mutex<Publisher>>> {
        let mut pubs = self.publishers.lock().await;
        if let Some(p) = pubs.get(stream) {
            return Ok(p.clone());
        }
        let (tx, confirms) = mpsc::unbounded_channel();
        let id = {
            let mut st = lock(&self.inner.state);
            let id = st.next_pub;
            st.next_pub = id.wrapping_add(1);
            st.confirms.insert(id, tx);
            id
        };
        let declare = self
            .inner
            .request_ok("declare publisher", DECLARE_PUBLISHER, |f| {
                f.put([id]).str("").str(stream)
            });
        if let Err(e) = declare.await {
            lock(&self.inner.state).confirms.remove(&id);
            return Err(e);
        }
        let p = Arc::new(tokio::sync::Mutex::new(Publisher {
            id,
            next_seq: 0,
            confirms,
        }));
        pubs.insert(stream.to_string(), p.clone());
        Ok(p)
    }

    /// Subscribes to `stream` with `initial_credit` chunks of credit. A `consumer_name` is
    /// sent as the `name` property (needed by `store_offset`). Auto credit starts on.
    pub async fn subscribe(
        &self,
        stream: &str,
        consumer_name: Option<&str>,
        offset: OffsetSpec,
        initial_credit: u16,
    ) -> Result<Subscription> {
        let props: Vec<_> = consumer_name.map(|n| ("name", n)).into_iter().collect();
        self.subscribe_with_properties(stream, offset, initial_credit, &props)
            .await
    }

    /// Like [`subscribe`](Self::subscribe) with explicit properties, e.g. `[("name", "app"),
    /// ("single-active-consumer", "true")]`, plus `("super-stream", "name")` for a partition.
    /// The `name` property, if any, is the consumer name used by `store_offset`.
    pub async fn subscribe_with_properties(
        &self,
        stream: &str,
        offset: OffsetSpec,
        initial_credit: u16,
        properties: &[(&str, &str)],
    ) -> Result<Subscription> {
        let sac = properties.contains(&("single-active-consumer", "true"));
        let stats = SubStats {
            active: !sac,
            auto_credit: true,
            ..SubStats::default()
        };
        let sub = Arc::new(Sub {
            stats: Mutex::new(stats),
            notify: tokio::sync::Notify::new(),
        });
        let id = {
            let mut st = lock(&self.inner.state);
            let free = (0..=u8::MAX)
                .map(|k| st.next_sub.wrapping_add(k))
                .find(|i| !st.subs.contains_key(i));
            let id = free.ok_or_else(|| Error::other("no free subscription id"))?;
            st.next_sub = id.wrapping_add(1);
            st.subs.insert(id, sub.clone());
            id
        };
        let res = self.inner.request_ok("subscribe", SUBSCRIBE, |f| {
            f.put([id]).str(stream);
            match offset {
                OffsetSpec::First => f.put(1u16.to_be_bytes()),
                OffsetSpec::Last => f.put(2u16.to_be_bytes()),
                OffsetSpec::Next => f.put(3u16.to_be_bytes()),
                OffsetSpec::Offset(o) => f.put(4u16.to_be_bytes()).put(o.to_be_bytes()),
                OffsetSpec::Timestamp(t) => f.put(5u16.to_be_bytes()).put(t.to_be_bytes()),
            };
            f.put(initial_credit.to_be_bytes()).map(properties)
        });
        if let Err(e) = res.await {
            lock(&self.inner.state).subs.remove(&id);
            return Err(e);
        }
        let name = properties
            .iter()
            .find(|(k, _)| *k == "name")
            .map(|(_, v)| v.to_string());
        Ok(Subscription {
            inner: self.inner.clone(),
            sub,
            id,
            stream: stream.to_string(),
            name,
        })
    }

    /// Stored offset of `consumer_name` on `stream`; `None` when nothing was stored
    /// (response code 0x13, "no offset").
    pub async fn query_offset(&self, consumer_name: &str, stream: &str) -> Result<Option<u64>> {
        let query = self
            .inner
            .request(QUERY_OFFSET, |f| f.str(consumer_name).str(stream));
        match query.await? {
            (CODE_OK, rest) => Rd(&rest).u64().map(Some),
            (CODE_NO_OFFSET, _) => Ok(None),
            (code, _) => Err(code_err("query offset", code)),
        }
    }

    /// Closes the connection (Close request and response), then stops its tasks.
    pub async fn close(self) -> Result<()> {
        let close = self
            .inner
            .request_ok("close", CLOSE, |f| f.put(CODE_OK.to_be_bytes()).str("OK"));
        close.await.map(drop)
    }
}

/// A subscription of a [`StreamClient`].
pub struct Subscription {
    inner: Arc<Inner>,
    sub: Arc<Sub>,
    id: u8,
    stream: String,
    name: Option<String>,
}

impl Subscription {
    /// Subscription id on its connection (as in `/api/stream/consumers` `subscription_id`).
    pub fn id(&self) -> u8 {
        self.id
    }
    /// Snapshot of the counters.
    pub fn stats(&self) -> SubStats {
        lock(&self.sub.stats).clone()
    }
    /// Messages (records) delivered so far.
    pub fn delivered(&self) -> u64 {
        lock(&self.sub.stats).delivered
    }
    /// Offset of the last delivered message (chunk id + records - 1).
    pub fn last_offset(&self) -> Option<u64> {
        lock(&self.sub.stats).last_offset
    }
    /// Whether the broker has this consumer active (see [`SubStats::active`]).
    pub fn is_active(&self) -> bool {
        lock(&self.sub.stats).active
    }
    /// Grants `n` more chunks of credit.
    pub fn credit(&self, n: u16) -> Result<()> {
        self.inner.credit(self.id, n)
    }
    /// Switches auto credit (one credit back per chunk: a reader that keeps up) off (the
    /// broker stops sending once the credit is used up, so the lag grows) or on again;
    /// switching it on grants one credit so that a stalled subscription resumes.
    pub fn set_auto_credit(&self, on: bool) -> Result<()> {
        let was = std::mem::replace(&mut lock(&self.sub.stats).auto_credit, on);
        if on && !was {
            self.credit(1)?;
        }
        Ok(())
    }
    /// Stores `offset` under the subscription's consumer name (no response from the broker).
    pub fn store_offset(&self, offset: u64) -> Result<()> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| Error::other("store_offset needs a name"))?;
        let mut f = Frame::new(STORE_OFFSET);
        f.str(name).str(&self.stream).put(offset.to_be_bytes());
        self.inner.send(f)
    }
    /// Waits until at least `count` messages were delivered; fails after `timeout`.
    pub async fn wait_delivered(&self, count: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.sub.notify.notified();
            if self.delivered() >= count {
                return Ok(());
            }
            if lock(&self.inner.state).closed.is_some() {
                return Err(self.inner.closed_err());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let msg = format!("{} of {count} messages delivered", self.delivered());
                return Err(Error::new(ErrorKind::TimedOut, msg));
            }
        }
    }
    /// Cancels the subscription.
    pub async fn unsubscribe(self) -> Result<()> {
        let id = self.id;
        let res = self
            .inner
            .request_ok("unsubscribe", UNSUBSCRIBE, |f| f.put([id]))
            .await;
        lock(&self.inner.state).subs.remove(&id);
        res.map(drop)
    }
}
