//! The one exchange that ranks meeting over TCP (torchrun, --rank flags) need before NCCL can
//! connect them: rank 0 listens at the master address, every other rank connects and says who
//! it is, and rank 0 answers each with its payload (NCCL's unique id). Bounded in time: a rank
//! that does not show up, or a master that never answers, is an error naming the address,
//! never a hang. Plain std networking; tests run it over loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Opens every hello, so a stray connection (another program on the port) is refused.
const MAGIC: &[u8; 8] = b"ddpm-rv1";
/// The largest payload accepted (NCCL's id is 128 bytes).
const MAX_PAYLOAD: usize = 1 << 20;

/// Rank `rank` of `size` meeting at `master` (host, port): rank 0 sends its `payload` to every
/// other rank and returns it; the others return rank 0's. Waits at most `timeout` in all.
pub fn exchange(
    rank: usize,
    size: usize,
    master: &(String, u16),
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let at = format!("{}:{}", master.0, master.1);
    let deadline = Instant::now() + timeout;
    if rank == 0 {
        serve(size, &at, &payload, deadline, timeout)?;
        Ok(payload)
    } else {
        join(rank, size, &at, deadline, timeout)
    }
}

fn err(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Rank 0: accept size - 1 ranks, each once, then send each the payload.
fn serve(
    size: usize,
    at: &str,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(err(format!(
            "rendezvous payload of {} bytes",
            payload.len()
        )));
    }
    let listener = TcpListener::bind(at).map_err(|e| {
        err(format!(
            "rank 0 cannot listen at {at} ({e}); is the master address this machine, and the port free?"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("rendezvous at {at}: {e}")))?;
    let mut joined: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    let mut missing = size - 1;
    while missing > 0 {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|_| stream.set_read_timeout(Some(left(deadline))))
                    .map_err(|e| err(format!("rendezvous at {at}: {e}")))?;
                let Some(rank) = read_hello(&mut stream, size) else {
                    // Not one of ours (or garbled): ignore it.
                    continue;
                };
                if joined[rank].is_some() {
                    return Err(err(format!(
                        "rendezvous at {at}: rank {rank} joined twice (second from {peer}); \
                         are two jobs using the same address?"
                    )));
                }
                joined[rank] = Some(stream);
                missing -= 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let absent: Vec<String> = (1..size)
                        .filter(|&r| joined[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(err(format!(
                        "rendezvous at {at}: rank(s) {} did not connect within {} s",
                        absent.join(", "),
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(err(format!("rendezvous at {at}: {e}"))),
        }
    }
    let len = (payload.len() as u32).to_le_bytes();
    for (rank, stream) in joined.iter_mut().enumerate() {
        if let Some(s) = stream {
            s.write_all(&len)
                .and_then(|_| s.write_all(payload))
                .and_then(|_| s.flush())
                .map_err(|e| err(format!("rendezvous at {at}: sending to rank {rank}: {e}")))?;
        }
    }
    Ok(())
}

/// A hello: MAGIC, rank and size as u32 little-endian. The rank, if it is one of `size`.
fn read_hello(stream: &mut TcpStream, size: usize) -> Option<usize> {
    let mut buf = [0u8; 16];
    stream.read_exact(&mut buf).ok()?;
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let (rank, their_size) = (word(8) as usize, word(12) as usize);
    (&buf[..8] == MAGIC && their_size == size && rank > 0 && rank < size).then_some(rank)
}

/// Another rank: connect (retrying while rank 0 starts), say hello, read the payload.
fn join(
    rank: usize,
    size: usize,
    at: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let last = loop {
        let last = match at.to_socket_addrs() {
            Ok(addrs) => {
                let mut last = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, left(deadline).min(Duration::from_secs(5)))
                    {
                        Ok(s) => return finish_join(s, rank, size, at, deadline, timeout),
                        Err(e) => last = Some(e.to_string()),
                    }
                }
                last.unwrap_or_else(|| "no address".into())
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            break last;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Err(err(format!(
        "rank {rank}: cannot reach rank 0 at {at} within {} s ({last})",
        timeout.as_secs()
    )))
}

fn finish_join(
    mut s: TcpStream,
    rank: usize,
    size: usize,
    at: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| {
        let late = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
        err(if late {
            format!(
                "rank {rank}: rank 0 at {at} did not answer within {} s (are all {size} ranks started?)",
                timeout.as_secs()
            )
        } else {
            format!("rank {rank}: rendezvous with rank 0 at {at}: {e}")
        })
    };
    s.set_read_timeout(Some(left(deadline))).map_err(io)?;
    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(size as u32).to_le_bytes());
    s.write_all(&hello).and_then(|_| s.flush()).map_err(io)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD {
        return Err(err(format!(
            "rank {rank}: rank 0 at {at} sent a {len}-byte id"
        )));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).map_err(io)?;
    Ok(payload)
}

/// Time left until `deadline`, at least 1 ms (a zero timeout means none to the socket calls).
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn every_rank_gets_rank_zeros_payload() {
        let master = ("127.0.0.1".to_string(), free_port());
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|rank| {
                    let master = &master;
                    s.spawn(move || {
                        let mine = if rank == 0 {
                            b"the id".to_vec()
                        } else {
                            Vec::new()
                        };
                        exchange(rank, 4, master, mine, Duration::from_secs(20)).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|p| p == b"the id"), "{got:?}");
    }

    /// A missing rank or a missing master is an error within the timeout, naming who and where.
    #[test]
    fn a_missing_rank_times_out_with_a_message() {
        let master = ("127.0.0.1".to_string(), free_port());
        let t = Instant::now();
        let e = exchange(0, 3, &master, vec![1], Duration::from_millis(300)).unwrap_err();
        assert!(
            e.to_string().contains("rank(s) 1, 2 did not connect"),
            "{e}"
        );
        let e = exchange(2, 3, &master, Vec::new(), Duration::from_millis(300)).unwrap_err();
        assert!(
            e.to_string().contains("cannot reach rank 0 at 127.0.0.1:"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    /// A connection that is not a rank's hello (a port scanner, another program) is ignored.
    #[test]
    fn strangers_are_ignored() {
        let master = ("127.0.0.1".to_string(), free_port());
        std::thread::scope(|s| {
            let root = s.spawn(|| exchange(0, 2, &master, vec![7; 128], Duration::from_secs(20)));
            let at = format!("{}:{}", master.0, master.1);
            let stranger = loop {
                if let Ok(s) = TcpStream::connect(&at) {
                    break s;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            (&stranger).write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            drop(stranger);
            let got = exchange(1, 2, &master, Vec::new(), Duration::from_secs(20)).unwrap();
            assert_eq!(got, vec![7; 128]);
            assert_eq!(root.join().unwrap().unwrap(), vec![7; 128]);
        });
    }
}
