//! Connections, clients and the closed-loop runner every benchmark shares: `clients` workers
//! spread over `conns` gRPC connections (HTTP/2 multiplexes them), each taking the next request
//! number until `total` are done, optionally paced to `rate` requests per second overall.

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Conn;

use crate::report::Stats;

/// Settings shared by every benchmark (etcd's global flags).
#[derive(Clone, Debug)]
pub struct Global {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub precise: bool,
    pub dial_timeout: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// `host:port` or a URL, as etcd's tool accepts them.
pub fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens `conns` connections round-robin over the endpoints.
pub async fn connect(g: &Global) -> Result<Vec<Conn>, String> {
    let mut out = Vec::with_capacity(g.conns.max(1));
    for i in 0..g.conns.max(1) {
        let ep = url(&g.endpoints[i % g.endpoints.len()]);
        out.push(
            Conn::connect(&ep, g.dial_timeout)
                .await
                .map_err(|e| format!("dial error: {ep}: {e}"))?,
        );
    }
    Ok(out)
}

/// A progress bar on stderr, redrawn a few times a second.
pub struct Progress {
    done: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(total: usize, show: bool) -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let task = show.then(|| {
            let done = done.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    draw(done.load(Ordering::Relaxed), total, start.elapsed());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Progress { done, task }
    }

    /// Another counter on the same bar (for workers that count their own requests).
    pub fn handle(&self) -> Progress {
        Progress {
            done: self.done.clone(),
            task: None,
        }
    }

    pub fn add(&self, n: usize) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn finish(self, total: usize, elapsed: Duration) {
        if let Some(t) = self.task {
            t.abort();
            draw(self.done.load(Ordering::Relaxed).min(total), total, elapsed);
            eprintln!();
        }
    }
}

fn draw(done: usize, total: usize, elapsed: Duration) {
    let width = 40;
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let fill = ((frac * width as f64) as usize).min(width);
    eprint!(
        "\r{done} / {total} [{}{}] {:.2}% {}s",
        "=".repeat(fill),
        " ".repeat(width - fill),
        frac * 100.0,
        elapsed.as_secs()
    );
    let _ = std::io::stderr().flush();
}

/// Runs `total` requests from `clients` workers; `op(client, i)` performs request `i` on the
/// worker's connection. `rate` 0 means unpaced.
pub async fn run<F, Fut>(g: &Global, chans: &[Conn], total: usize, rate: u64, op: F) -> Stats
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let mut by_kind = run_kinds(g, chans, total, rate, 1, move |ch, i| {
        let fut = op(ch, i);
        async move { (0, fut.await) }
    })
    .await;
    by_kind.pop().unwrap_or_default()
}

/// Like [`run`] for requests of `kinds` kinds: `op` says which kind each request was, and
/// each kind gets its own figures (e.g. the reads and the writes of `txn-mixed`).
pub async fn run_kinds<F, Fut>(
    g: &Global,
    chans: &[Conn],
    total: usize,
    rate: u64,
    kinds: usize,
    op: F,
) -> Vec<Stats>
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (usize, Result<(), String>)> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(total, g.progress);
    let start = Instant::now();
    let mut workers = Vec::new();
    for c in 0..g.clients.max(1) {
        let chan = chans[c % chans.len()].clone();
        let (op, next, done) = (op.clone(), next.clone(), progress.handle());
        workers.push(tokio::spawn(async move {
            let mut stats = vec![Stats::default(); kinds];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if rate > 0 {
                    let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t = Instant::now();
                let (kind, res) = op(chan.clone(), i).await;
                if let Some(s) = stats.get_mut(kind) {
                    match res {
                        Ok(()) => s.lats.push(t.elapsed().as_secs_f64()),
                        Err(e) => *s.errors.entry(e).or_default() += 1,
                    }
                }
                done.add(1);
            }
            stats
        }));
    }
    let mut all = vec![Stats::default(); kinds];
    for w in workers {
        if let Ok(per_kind) = w.await {
            for (a, s) in all.iter_mut().zip(per_kind) {
                a.merge(s);
            }
        }
    }
    let elapsed = start.elapsed();
    progress.finish(total, elapsed);
    all.into_iter().map(|s| s.finish(elapsed)).collect()
}

/// Waits for every worker and merges what they measured into one report's figures.
pub async fn gather(
    workers: Vec<tokio::task::JoinHandle<Stats>>,
    progress: Progress,
    total: usize,
    start: Instant,
) -> Stats {
    let mut all = Stats::default();
    for w in workers {
        if let Ok(s) = w.await {
            all.merge(s);
        }
    }
    let elapsed = start.elapsed();
    progress.finish(total, elapsed);
    all.finish(elapsed)
}

/// Random printable bytes, as etcd's tool makes keys and values.
pub fn rand_bytes(n: usize) -> Vec<u8> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| rng.gen_range(b'a'..=b'z')).collect()
}
