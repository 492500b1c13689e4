//! Where `.vm` DNS sends the questions that are not its own: the host's
//! upstream resolvers, asked so that neither a guest nor the network can
//! poison the answers or use the daemon as an amplifier.
//!
//! - Each forwarded question goes out from a socket of its own (a random
//!   source port), connected to its one server, so the kernel drops
//!   datagrams from anyone else, with a random id from the kernel's
//!   generator; only an answer with that id and the same question is taken.
//! - Forwarding is rate-limited (a token bucket, [`RATE_PER_SEC`] with bursts
//!   of [`BURST`]); past it a client gets SERVFAIL at once.
//!
//! Sockets are made in the host's network namespace, so forwarding works
//! when bangerd lives in its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};

/// Questions forwarded per second, on average.
pub const RATE_PER_SEC: f64 = 200.0;
/// Questions forwarded at once before the rate applies.
pub const BURST: f64 = 400.0;
/// How long one server gets to answer.
const WAIT: Duration = Duration::from_secs(2);

/// A token bucket, with time passed in. Pure.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `answer` is a response to the question of `query`. Pure.
fn same_question(query: &[u8], answer: &[u8]) -> bool {
    match (Message::from_vec(query), Message::from_vec(answer)) {
        (Ok(q), Ok(a)) => a.message_type() == MessageType::Response && a.queries() == q.queries(),
        _ => false,
    }
}

/// A query id from the kernel's random generator.
fn random_id() -> u16 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

/// The host's resolvers, as `.vm` DNS forwards to them.
#[derive(Clone)]
pub struct Upstream {
    servers: Arc<Vec<SocketAddr>>,
    bucket: Arc<Mutex<Bucket>>,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>) -> Upstream {
        Upstream {
            servers: Arc::new(servers),
            bucket: Arc::new(Mutex::new(Bucket::new(RATE_PER_SEC, BURST, Instant::now()))),
        }
    }

    /// The first upstream answer to `query`, with the client's id; `None`
    /// when over the rate, or when no server answered in time.
    pub async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        if !allowed {
            tracing::debug!("DNS forwarding over its rate: SERVFAIL");
            return None;
        }
        for server in self.servers.iter() {
            let id = random_id();
            let mut q = query.to_vec();
            q[..2].copy_from_slice(&id.to_be_bytes());
            if let Some(mut a) = ask(*server, &q).await {
                a[..2].copy_from_slice(&query[..2]);
                return Some(a);
            }
        }
        None
    }
}

/// Sends `q` to `server` from a fresh socket; its answer, if one with the
/// same id and question comes within [`WAIT`].
async fn ask(server: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    let any: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = crate::network::in_host_netns(move || {
        let s = std::net::UdpSocket::bind(any)?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    })
    .ok()?
    .ok()?;
    let sock = tokio::net::UdpSocket::from_std(sock).ok()?;
    sock.connect(server).await.ok()?;
    sock.send(q).await.ok()?;
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        let a = &buf[..n];
        if n >= 12 && a[..2] == q[..2] && same_question(q, a) {
            return Some(a.to_vec());
        }
        tracing::debug!(%server, "a DNS answer that is not to our question: dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(true);
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m.to_vec().expect("encode")
    }

    /// An answer to `q` with `id` and the question of `name` instead.
    fn answer(q: &[u8], id: u16, name: Option<&str>) -> Vec<u8> {
        let q = Message::from_vec(q).expect("query");
        let mut a = Message::new();
        a.set_id(id).set_message_type(MessageType::Response);
        match name {
            Some(n) => {
                a.add_query(Query::query(
                    Name::from_ascii(n).expect("name"),
                    RecordType::A,
                ));
            }
            None => {
                a.add_queries(q.queries().to_vec());
            }
        }
        a.to_vec().expect("encode")
    }

    /// A fake upstream that first sends a spoof with another id, then one
    /// with the right id but another question, then the real answer; it
    /// records the ids it was asked with.
    async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seen = ids.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let q = buf[..n].to_vec();
                let id = u16::from_be_bytes([q[0], q[1]]);
                seen.lock().expect("lock").push(id);
                for a in [
                    answer(&q, id.wrapping_add(1), None),
                    answer(&q, id, Some("evil.example")),
                    answer(&q, id, None),
                ] {
                    let _ = server.send_to(&a, from).await;
                }
            }
        });
        (addr, ids)
    }

    #[tokio::test]
    async fn only_the_answer_to_our_question_counts_and_ids_are_random() {
        let (addr, ids) = upstream().await;
        let up = Upstream::new(vec![addr]);
        let (q1, q2) = (query(0xabcd, "a.example."), query(0xabcd, "b.example."));
        let (a, b) = tokio::join!(up.forward(&q1), up.forward(&q2));
        let (a, b) = (a.expect("answer a"), b.expect("answer b"));
        for (ans, name) in [(&a, "a.example."), (&b, "b.example.")] {
            let m = Message::from_vec(ans).expect("answer");
            assert_eq!(m.id(), 0xabcd, "the client's id is given back");
            assert_eq!(m.queries()[0].name().to_ascii(), name);
        }
        for i in 0..30 {
            assert!(up.forward(&query(i, "c.example.")).await.is_some());
        }
        let ids = ids.lock().expect("lock").clone();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert!(distinct.len() >= ids.len() - 2, "ids repeat: {ids:?}");
        let steps = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(steps < 3, "ids go up one by one: {ids:?}");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3.0, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0), "the burst is spent");
        assert!(
            b.take(t0 + Duration::from_millis(500)),
            "one more after 1/rate"
        );
        assert!(!b.take(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..10).filter(|_| b.take(later)).count(),
            3,
            "capped at the burst"
        );
    }

    #[test]
    fn answers_to_other_questions_or_garbage_do_not_count() {
        let q = query(1, "a.example.");
        assert!(same_question(&q, &answer(&q, 1, None)));
        assert!(!same_question(&q, &answer(&q, 1, Some("b.example."))));
        assert!(!same_question(&q, &q), "a query is no answer");
        assert!(!same_question(&q, b"garbage garbage"));
    }
}
