//! Gossip traffic signed with the cluster key.
//!
//! Every datagram carries an HMAC-SHA256 tag (first 16 bytes) of its chitchat message
//! under the cluster key. A datagram whose tag does not check is dropped before
//! chitchat decodes it, and counted in [`Counters::rejected`]; so is one that checks but
//! does not decode ([`Counters::undecodable`]). Signing is per datagram, so a member
//! without the key can neither join, nor inject state, nor answer a digest.
//!
//! Each sealed datagram also carries the time it was sealed (ms since the Unix epoch,
//! under the tag). One older or newer than [`FRESHNESS`] is refused as stale, and one
//! whose tag was seen within that window is refused as a replay (both counted in
//! [`Counters::replayed`]), so a captured datagram cannot be sent again. Members' clocks
//! must agree within [`FRESHNESS`] (NTP).
//!
//! Under the seal, each message is zstd-compressed when that makes it smaller (a leading
//! byte says which): most of gossip's bytes are digests listing every member, whose ids,
//! addresses and counters repeat, and they halve or better. Decompression is bounded by
//! a datagram's size, and happens only after the tag has checked out.
//!
//! Datagrams travel over a [`Link`]: UDP in production, or a port of an in-memory
//! [`Network`](super::memory::Network) in simulations, so both exercise this code.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;

use super::budget::SendBudget;
use super::memory::Port;

/// Bytes of the tag appended to each datagram.
pub const TAG_LEN: usize = 16;
/// Bytes of the seal time before the tag.
const TIME_LEN: usize = 8;
/// How far a datagram's seal time may be from the receiver's clock.
pub const FRESHNESS: std::time::Duration = std::time::Duration::from_secs(30);
/// Most recent tags remembered to refuse replays (about 1.5 MiB at the most).
const MAX_SEEN: usize = 1 << 16;
/// Largest datagram sent (the UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;

/// The secret every member of a cluster shares.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from its bytes: at least 16 of them.
    pub fn new(bytes: &[u8]) -> anyhow::Result<ClusterKey> {
        if bytes.len() < 16 {
            bail!(
                "a cluster key needs at least 16 bytes, this one has {}",
                bytes.len()
            );
        }
        Ok(ClusterKey(bytes.into()))
    }

    /// Reads a key file: hex text (as `edge up` writes it, 64 digits for 32 bytes).
    pub fn read(path: &Path) -> anyhow::Result<ClusterKey> {
        crate::tls::check_secret_file(path)
            .map_err(|reason| anyhow::anyhow!("cluster key {}: {reason}", path.display()))?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cluster key {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .with_context(|| format!("cluster key {}: not hex", path.display()))?;
        ClusterKey::new(&bytes).with_context(|| format!("cluster key {}", path.display()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// `payload` followed by the time now and its tag.
    pub fn seal(&self, payload: Vec<u8>) -> Vec<u8> {
        self.seal_at(payload, now_ms())
    }

    /// `payload` sealed at `time` (ms since the Unix epoch).
    pub fn seal_at(&self, mut payload: Vec<u8>, time: u64) -> Vec<u8> {
        payload.extend_from_slice(&time.to_be_bytes());
        let mut mac = self.mac();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        payload.extend_from_slice(&tag[..TAG_LEN]);
        payload
    }

    /// The payload and seal time of a sealed datagram whose tag checks.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Option<(&'a [u8], u64)> {
        let split = datagram.len().checked_sub(TAG_LEN)?;
        let (signed, tag) = datagram.split_at(split);
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_truncated_left(tag).ok()?;
        let (payload, time) = signed.split_at(signed.len().checked_sub(TIME_LEN)?);
        Some((payload, u64::from_be_bytes(time.try_into().ok()?)))
    }
}

/// Gossip traffic seen by one member.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Bytes sent, tags included.
    pub sent_bytes: AtomicU64,
    /// Datagrams accepted.
    pub received: AtomicU64,
    /// Bytes accepted, tags included.
    pub received_bytes: AtomicU64,
    /// Datagrams dropped: no tag, or a tag that does not check (not from a member).
    pub rejected: AtomicU64,
    /// Datagrams dropped: signed by a member but not a chitchat message.
    pub undecodable: AtomicU64,
    /// Datagrams dropped: signed, but sealed outside the freshness window or seen before.
    pub replayed: AtomicU64,
    /// Member identities refused: not signed by the member they name (see
    /// [`super::identity`]), or older than the one accepted.
    pub forged: AtomicU64,
    /// Exchanges this member did not open, to keep within its send budget (see
    /// [`super::budget`]).
    pub held_back: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where datagrams go: a UDP socket, or a port on an in-memory network.
pub enum Link {
    /// Real UDP.
    Udp(tokio::net::UdpSocket),
    /// A simulated network.
    Memory(Port),
}

impl Link {
    /// A UDP socket bound to `addr`.
    pub async fn udp(addr: SocketAddr) -> anyhow::Result<Link> {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding gossip UDP {addr}"))?;
        Ok(Link::Udp(socket))
    }

    /// The bound address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        match self {
            Link::Udp(s) => Ok(s.local_addr()?),
            Link::Memory(p) => Ok(p.addr()),
        }
    }

    async fn send_to(&self, datagram: Vec<u8>, to: SocketAddr) -> anyhow::Result<()> {
        match self {
            Link::Udp(s) => {
                // A peer that is gone is not this socket's failure: gossip goes on.
                if let Err(e) = s.send_to(&datagram, to).await {
                    tracing::debug!(%to, error = %e, "gossip send failed");
                }
            }
            Link::Memory(p) => p.send_to(datagram, to),
        }
        Ok(())
    }

    async fn recv_from(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<SocketAddr> {
        match self {
            Link::Udp(s) => {
                buf.resize(MAX_DATAGRAM, 0);
                loop {
                    match s.recv_from(buf).await {
                        Ok((n, from)) => {
                            buf.truncate(n);
                            return Ok(from);
                        }
                        // ICMP errors from earlier sends surface here: not fatal.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e).context("gossip UDP receive"),
                    }
                }
            }
            Link::Memory(p) => {
                let (datagram, from) = p.recv().await.context("the simulated network is gone")?;
                *buf = datagram;
                Ok(from)
            }
        }
    }
}

/// A chitchat transport over one pre-bound [`Link`], signing and checking every
/// datagram with the cluster key.
pub struct SignedTransport {
    link: std::sync::Mutex<Option<Link>>,
    key: ClusterKey,
    counters: Arc<Counters>,
    budget_bytes_per_s: u64,
}

impl SignedTransport {
    /// A transport for `link` (opened once, by chitchat), opening exchanges only within
    /// `budget_bytes_per_s` sent (0: every one).
    pub fn new(
        link: Link,
        key: ClusterKey,
        counters: Arc<Counters>,
        budget_bytes_per_s: u64,
    ) -> SignedTransport {
        SignedTransport {
            link: std::sync::Mutex::new(Some(link)),
            key,
            counters,
            budget_bytes_per_s,
        }
    }
}

#[async_trait::async_trait]
impl Transport for SignedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let link = self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .context("the gossip link is already open")?;
        let bound = link.local_addr()?;
        if bound != listen_addr {
            bail!("gossip link bound to {bound}, chitchat asked for {listen_addr}");
        }
        Ok(Box::new(SignedSocket {
            link,
            key: self.key.clone(),
            counters: Arc::clone(&self.counters),
            buf: Vec::new(),
            seen: Seen::default(),
            budget: (self.budget_bytes_per_s > 0)
                .then(|| SendBudget::new(self.budget_bytes_per_s, Instant::now())),
        }))
    }
}

struct SignedSocket {
    link: Link,
    key: ClusterKey,
    counters: Arc<Counters>,
    buf: Vec<u8>,
    seen: Seen,
    budget: Option<SendBudget>,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tags of the datagrams accepted within the freshness window.
#[derive(Default)]
struct Seen {
    tags: std::collections::HashMap<[u8; TAG_LEN], u64>,
}

impl Seen {
    /// Whether a datagram sealed at `time` with `tag` is fresh and new at `now`; if so,
    /// it is remembered.
    fn admit(&mut self, tag: &[u8], time: u64, now: u64) -> bool {
        let window = FRESHNESS.as_millis() as u64;
        if time.abs_diff(now) > window {
            return false;
        }
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        if self.tags.len() >= MAX_SEEN {
            self.tags.retain(|_, &mut at| at.abs_diff(now) <= window);
        }
        if self.tags.len() >= MAX_SEEN {
            // A flood of fresh, signed datagrams: only a key holder can send those.
            self.tags.clear();
        }
        self.tags.insert(tag, time).is_none()
    }
}

#[async_trait::async_trait]
impl Socket for SignedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let opens = matches!(message, ChitchatMessage::Syn { .. });
        if let Some(budget) = &mut self.budget
            && opens
            && !budget.opens(Instant::now())
        {
            Counters::add(&self.counters.held_back, 1);
            return Ok(());
        }
        let datagram = self.key.seal(compress(&message.serialize_to_vec()));
        if datagram.len() > MAX_DATAGRAM {
            tracing::warn!(%to, bytes = datagram.len(), "gossip message too large, not sent");
            return Ok(());
        }
        if let Some(budget) = &mut self.budget {
            budget.spend(datagram.len());
        }
        Counters::add(&self.counters.sent, 1);
        Counters::add(&self.counters.sent_bytes, datagram.len());
        self.link.send_to(datagram, to).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            // Cancel-safe: a datagram is either fully handled here or still in the link.
            let from = self.link.recv_from(&mut self.buf).await?;
            let Some((sealed, time)) = self.key.open(&self.buf) else {
                let rejected = self.counters.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                // The first, then one in a thousand: a flood must not flood the log.
                if rejected == 1 || rejected.is_multiple_of(1000) {
                    tracing::warn!(%from, bytes = self.buf.len(), rejected, "gossip datagram without a valid cluster-key tag dropped");
                }
                continue;
            };
            let tag = &self.buf[self.buf.len() - TAG_LEN..];
            if !self.seen.admit(tag, time, now_ms()) {
                let replayed = self.counters.replayed.fetch_add(1, Ordering::Relaxed) + 1;
                if replayed == 1 || replayed.is_multiple_of(1000) {
                    tracing::warn!(%from, replayed, "stale or replayed gossip datagram dropped");
                }
                continue;
            }
            let Some(message) = decompress(sealed) else {
                Counters::add(&self.counters.undecodable, 1);
                tracing::warn!(%from, "signed gossip datagram did not decompress");
                continue;
            };
            match ChitchatMessage::deserialize(&mut message.as_slice()) {
                Ok(message) => {
                    Counters::add(&self.counters.received, 1);
                    Counters::add(&self.counters.received_bytes, self.buf.len());
                    return Ok((from, message));
                }
                Err(e) => {
                    Counters::add(&self.counters.undecodable, 1);
                    tracing::warn!(%from, error = %e, "signed gossip datagram did not decode");
                }
            }
        }
    }
}

/// The first byte of a datagram's payload: how the chitchat message after it is coded.
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// zstd's fastest level: gossip compresses well at it (member ids, addresses and
/// heartbeats repeat from one entry of a digest to the next).
const ZSTD_LEVEL: i32 = 1;

/// A chitchat message as it travels: zstd-compressed when that is smaller.
fn compress(message: &[u8]) -> Vec<u8> {
    match zstd::bulk::compress(message, ZSTD_LEVEL) {
        Ok(mut compressed) if compressed.len() + 1 < message.len() => {
            compressed.insert(0, ZSTD);
            compressed
        }
        _ => {
            let mut raw = Vec::with_capacity(message.len() + 1);
            raw.push(RAW);
            raw.extend_from_slice(message);
            raw
        }
    }
}

/// The chitchat message in a payload, decompressed to at most a datagram's size (it
/// was at most that before compression); `None` if it is not one.
fn decompress(payload: &[u8]) -> Option<Vec<u8>> {
    match payload.split_first()? {
        (&RAW, message) => Some(message.to_vec()),
        (&ZSTD, compressed) => zstd::bulk::decompress(compressed, MAX_DATAGRAM).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_datagram_opens_only_with_its_key() {
        let key = ClusterKey::new(&[7; 32]).unwrap();
        let other = ClusterKey::new(&[8; 32]).unwrap();
        let sealed = key.seal_at(b"load=1".to_vec(), 42);
        assert_eq!(sealed.len(), 6 + TIME_LEN + TAG_LEN);
        assert_eq!(key.open(&sealed), Some((&b"load=1"[..], 42)));
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(key.open(&tampered), None);
        assert_eq!(key.open(&sealed[..TAG_LEN - 1]), None);
        assert!(ClusterKey::new(&[1; 15]).is_err());
    }

    #[test]
    fn messages_travel_compressed_when_that_is_smaller_and_a_bomb_is_refused() {
        let digest: Vec<u8> = (0..100)
            .flat_map(|i: u32| format!("node-{i}@10.0.0.{i}:7946 1765000000{i:06} ").into_bytes())
            .collect();
        let sent = compress(&digest);
        assert_eq!(sent[0], ZSTD);
        assert!(
            sent.len() * 2 < digest.len(),
            "{} of {}",
            sent.len(),
            digest.len()
        );
        assert_eq!(decompress(&sent).as_deref(), Some(&digest[..]));
        // Too short to gain: sent as it is.
        let sent = compress(b"hi");
        assert_eq!(sent, [RAW, b'h', b'i']);
        assert_eq!(decompress(&sent).as_deref(), Some(&b"hi"[..]));
        // Decompressing beyond a datagram's size, an unknown coding, nothing: refused.
        let bomb = zstd::bulk::compress(&vec![0u8; 4 * MAX_DATAGRAM], 1).unwrap();
        let mut framed = vec![ZSTD];
        framed.extend_from_slice(&bomb);
        assert_eq!(decompress(&framed), None);
        assert_eq!(decompress(&[9, 1, 2]), None);
        assert_eq!(decompress(&[]), None);
    }

    #[test]
    fn a_stale_or_replayed_datagram_is_not_admitted() {
        let mut seen = Seen::default();
        let now = 1_000_000_000;
        let window = FRESHNESS.as_millis() as u64;
        assert!(seen.admit(&[1; TAG_LEN], now, now));
        assert!(
            !seen.admit(&[1; TAG_LEN], now, now + 5),
            "the same datagram again"
        );
        assert!(
            seen.admit(&[2; TAG_LEN], now - window, now),
            "at the window's edge"
        );
        assert!(!seen.admit(&[3; TAG_LEN], now - window - 1, now), "stale");
        assert!(
            !seen.admit(&[4; TAG_LEN], now + window + 1, now),
            "from the future"
        );
    }
}
