//! [`Recorder`]: where every usage record goes. In the request's own thread only what is cheap
//! and bounded: the in-memory totals and the metric counters (one short lock). The log line
//! and the shared totals go through a bounded channel to one writer task that writes and
//! flushes in batches; a full channel drops the record from the log (counted in
//! `gateway_usage_records_dropped_total`, never a wait).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

use super::{Outcome, Record};
use crate::clients::shared::{day_name, SharedLimits};
use crate::clients::utc_day;

/// Records waiting for the writer; past this they are dropped from the log, not waited for.
const QUEUE: usize = 65_536;
/// Records the writer takes at once at most.
const BATCH: usize = 4096;
/// How long shutdown waits for the last records to be written.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the writer gathers records before it writes them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);
/// Distinct model names kept as labels and total keys; others count as `other`.
const MAX_MODELS: usize = 64;
/// A client, model or key that is none (`null` in the record), in totals and labels.
const NONE: &str = "(none)";

/// Sums over records.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sums {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Requests whose counts are the gateway's estimate.
    pub estimated: u64,
}

impl Sums {
    fn add(&mut self, r: &Record) {
        self.requests += 1;
        self.prompt_tokens += r.usage.prompt_tokens;
        self.completion_tokens += r.usage.completion_tokens;
        self.total_tokens += r.usage.total_tokens;
        self.cached_tokens += r.usage.cached_tokens.unwrap_or(0);
        self.reasoning_tokens += r.usage.reasoning_tokens.unwrap_or(0);
        self.estimated += u64::from(r.estimated);
    }

    fn add_field(&mut self, field: &str, n: u64) {
        match field {
            "requests" => self.requests += n,
            "prompt" => self.prompt_tokens += n,
            "completion" => self.completion_tokens += n,
            "total" => self.total_tokens += n,
            "cached" => self.cached_tokens += n,
            "reasoning" => self.reasoning_tokens += n,
            "estimated" => self.estimated += n,
            _ => {}
        }
    }
}

/// Totals by (client, model, key). hashbrown's, for its lookups by borrowed names
/// ([`Names`]): a triple already counted is found without allocating its three strings.
type ByTriple = hashbrown::HashMap<(String, String, String), Sums>;

/// A key of [`ByTriple`] or of the token counts, by reference. Hashes as the owned tuple does
/// (`str` and `String` hash alike, fields in order).
#[derive(Hash)]
struct Names<'a, T>(&'a str, &'a str, T);

/// The owned key [`Names`] stand for, and how they compare with it.
trait KeyOf<K>: std::hash::Hash + hashbrown::Equivalent<K> {
    /// The same strings, owned: equivalent by construction (hashbrown's `insert_with_key`
    /// checks it).
    fn owned(&self) -> K;
}

impl hashbrown::Equivalent<(String, String, String)> for Names<'_, &str> {
    fn equivalent(&self, key: &(String, String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

impl KeyOf<(String, String, String)> for Names<'_, &str> {
    fn owned(&self) -> (String, String, String) {
        (self.0.to_owned(), self.1.to_owned(), self.2.to_owned())
    }
}

impl hashbrown::Equivalent<(String, String, &'static str)> for Names<'_, &'static str> {
    fn equivalent(&self, key: &(String, String, &'static str)) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

impl KeyOf<(String, String, &'static str)> for Names<'_, &'static str> {
    fn owned(&self) -> (String, String, &'static str) {
        (self.0.to_owned(), self.1.to_owned(), self.2)
    }
}

/// The count under `names` in `map`, made (with its key's strings) only the first time: one
/// lookup, and an owned key only for a new triple, which is rare (the triples are bounded by
/// clients × models × keys).
fn count<'m, K: std::hash::Hash + Eq, V: Default>(
    map: &'m mut hashbrown::HashMap<K, V>,
    names: &impl KeyOf<K>,
) -> &'m mut V {
    match map.entry_ref(names) {
        hashbrown::hash_map::EntryRef::Occupied(entry) => entry.into_mut(),
        hashbrown::hash_map::EntryRef::Vacant(entry) => {
            entry.insert_with_key(names.owned(), V::default())
        }
    }
}

#[derive(Default)]
struct Totals {
    since_start: ByTriple,
    /// The UTC day `today` counts, and its totals.
    day: u64,
    today: ByTriple,
    /// Model names kept as themselves (bounded by [`MAX_MODELS`]).
    models: Vec<String>,
    /// `gateway_tokens_total` by (client, model, type).
    tokens: hashbrown::HashMap<(String, String, &'static str), u64>,
    outcomes: BTreeMap<&'static str, u64>,
}

impl Totals {
    fn model_label<'a>(&mut self, model: &'a str) -> &'a str {
        if self.models.iter().any(|m| m == model) {
            return model;
        }
        if self.models.len() < MAX_MODELS {
            self.models.push(model.to_owned());
            return model;
        }
        "other"
    }
}

pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
    totals: Mutex<Totals>,
    dropped: AtomicU64,
    /// Signalled on SIGHUP: the writer reopens the log file (rotation).
    reopen: Arc<Notify>,
    /// Signalled at shutdown: the writer writes what it holds and says so on `written`.
    finish: Arc<Notify>,
    written: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    started: SystemTime,
    shared: Option<SharedLimits>,
}

impl Recorder {
    /// A recorder; with a log file or shared totals, its writer task is spawned here.
    pub fn new(log: Option<PathBuf>, shared: Option<SharedLimits>) -> Recorder {
        let reopen = Arc::new(Notify::new());
        let finish = Arc::new(Notify::new());
        let mut written = None;
        let tx = (log.is_some() || shared.is_some()).then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (done, done_rx) = tokio::sync::oneshot::channel();
            written = Some(done_rx);
            let signals = Signals {
                reopen: reopen.clone(),
                finish: finish.clone(),
                done,
            };
            tokio::spawn(writer(log, shared.clone(), rx, signals));
            tx
        });
        Recorder {
            tx,
            totals: Mutex::new(Totals::default()),
            dropped: AtomicU64::new(0),
            reopen,
            finish,
            written: Mutex::new(written),
            started: SystemTime::now(),
            shared,
        }
    }

    /// Reopens the usage log (after a rotation moved it away).
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }

    /// At shutdown, once no request is left: the writer writes every record it was given
    /// (waited for, at most [`FLUSH_WAIT`]).
    pub async fn flush(&self) {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(written) = written {
            self.finish.notify_one();
            if tokio::time::timeout(FLUSH_WAIT, written).await.is_err() {
                tracing::warn!("the usage log was not flushed in time at shutdown");
            }
        }
    }

    /// Counts one record and queues it for the log.
    pub fn record(&self, record: Record) {
        {
            let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            let today = utc_day(SystemTime::now());
            if t.day != today {
                t.day = today;
                t.today.clear();
            }
            let model = t.model_label(record.model.as_deref().unwrap_or(NONE));
            let client = record.client.as_deref().unwrap_or(NONE);
            let key = record.key.as_deref().unwrap_or(NONE);
            let names = Names(client, model, key);
            count(&mut t.since_start, &names).add(&record);
            count(&mut t.today, &names).add(&record);
            let u = &record.usage;
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("cached", u.cached_tokens.unwrap_or(0)),
                ("reasoning", u.reasoning_tokens.unwrap_or(0)),
            ] {
                if n > 0 || kind == "prompt" || kind == "completion" {
                    *count(&mut t.tokens, &Names(client, model, kind)) += n;
                }
            }
            *t.outcomes.entry(record.outcome.name()).or_default() += 1;
        }
        if let Some(tx) = &self.tx {
            if tx.try_send(record).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!("the usage log falls behind; records are dropped from it (gateway_usage_records_dropped_total)");
                }
            }
        }
    }

    /// `/admin/usage`: totals per client, per model and per key, for today (UTC) and since
    /// this process started; with Redis, also every replica's (today and all time).
    pub async fn report(&self) -> serde_json::Value {
        let (today, since_start, day) = {
            let t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            let current = utc_day(SystemTime::now());
            let today = if t.day == current {
                t.today.clone()
            } else {
                ByTriple::new()
            };
            (today, t.since_start.clone(), current)
        };
        let mut out = serde_json::json!({
            "started": super::time::rfc3339(self.started),
            "today": { "date": day_name(day), "by": grouped(&today) },
            "since_start": { "by": grouped(&since_start) },
        });
        if let Some(shared) = &self.shared {
            let total = shared.key("usage:total");
            let today_key = shared.key(&format!("usage:day:{}", day_name(day)));
            let read: Option<(HashMap<String, u64>, HashMap<String, u64>)> = shared
                .call(|mut conn| async move {
                    redis::pipe()
                        .hgetall(&today_key)
                        .hgetall(&total)
                        .query_async(&mut conn)
                        .await
                })
                .await;
            out["shared"] = match read {
                Some((today, total)) => serde_json::json!({
                    "today": { "by": grouped(&from_fields(&today)) },
                    "all_time": { "by": grouped(&from_fields(&total)) },
                }),
                None => serde_json::json!({"error": "Redis did not answer"}),
            };
        }
        out
    }

    /// The usage metrics, in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        let t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP gateway_tokens_total Tokens used by client, model and type (prompt, completion, cached, reasoning), as the upstream counted them or the gateway estimated them.\n# TYPE gateway_tokens_total counter\n");
        // Sorted, as the metrics are everywhere else: a scrape is rare, a record is not.
        let mut tokens: Vec<_> = t.tokens.iter().collect();
        tokens.sort_unstable();
        for ((client, model, kind), n) in tokens {
            let _ = writeln!(
                out,
                "gateway_tokens_total{{client=\"{}\",model=\"{}\",type=\"{kind}\"}} {n}",
                escape(client),
                escape(model)
            );
        }
        out.push_str("# HELP gateway_usage_records_total Usage records by how the request ended.\n# TYPE gateway_usage_records_total counter\n");
        for (outcome, n) in &t.outcomes {
            let _ = writeln!(
                out,
                "gateway_usage_records_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP gateway_usage_records_dropped_total Usage records the log writer could not keep up with.\n# TYPE gateway_usage_records_dropped_total counter\n");
        let _ = writeln!(
            out,
            "gateway_usage_records_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Totals by client, by model and by key.
fn grouped(by: &ByTriple) -> serde_json::Value {
    let mut clients: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut models: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut keys: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut all = Sums::default();
    for ((client, model, key), sums) in by {
        for (map, name) in [
            (&mut clients, client.as_str()),
            (&mut models, model.as_str()),
            (&mut keys, key.as_str()),
        ] {
            merge(map.entry(name).or_default(), sums);
        }
        merge(&mut all, sums);
    }
    serde_json::json!({"all": all, "client": clients, "model": models, "key": keys})
}

fn merge(into: &mut Sums, from: &Sums) {
    into.requests += from.requests;
    into.prompt_tokens += from.prompt_tokens;
    into.completion_tokens += from.completion_tokens;
    into.total_tokens += from.total_tokens;
    into.cached_tokens += from.cached_tokens;
    into.reasoning_tokens += from.reasoning_tokens;
    into.estimated += from.estimated;
}

/// The shared totals' hash fields (`client|model|key|type`) as totals.
fn from_fields(fields: &HashMap<String, u64>) -> ByTriple {
    let mut by = ByTriple::new();
    for (field, n) in fields {
        // Client names and key ids hold no `|`; a model name might.
        let Some((client, rest)) = field.split_once('|') else {
            continue;
        };
        let mut parts = rest.rsplitn(3, '|');
        let (Some(kind), Some(key), Some(model)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        by.entry((client.to_owned(), model.to_owned(), key.to_owned()))
            .or_default()
            .add_field(kind, *n);
    }
    by
}

/// Writes queued records to the log in batches (one write and one flush per batch), and adds
/// them to the shared totals; reopens the log when told.
/// What the writer is told, and how it answers the last.
struct Signals {
    reopen: Arc<Notify>,
    finish: Arc<Notify>,
    done: tokio::sync::oneshot::Sender<()>,
}

async fn writer(
    path: Option<PathBuf>,
    shared: Option<SharedLimits>,
    mut rx: mpsc::Receiver<Record>,
    signals: Signals,
) {
    let Signals {
        reopen,
        finish,
        done,
    } = signals;
    let mut file = match &path {
        Some(path) => open(path).await,
        None => None,
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut text = Vec::with_capacity(64 * 1024);
    let mut closed = false;
    let mut finishing = false;
    while !closed {
        // Finishing: take what is queued without waiting for more.
        if !finishing {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                _ = finish.notified() => finishing = true,
                _ = reopen.notified() => {
                    if let Some(path) = &path {
                        file = open(path).await;
                        tracing::info!(path = %path.display(), "usage log reopened");
                    }
                    continue;
                }
            }
        }
        // Gather what comes in the next moment too: one write (a hop to the blocking pool)
        // and one Redis pipeline for many records, not one each.
        if batch.len() < BATCH {
            if !finishing {
                tokio::time::sleep(GATHER).await;
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        closed = finishing;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(f) = &mut file {
            text.clear();
            for record in &batch {
                if serde_json::to_writer(&mut text, record).is_ok() {
                    text.push(b'\n');
                }
            }
            if let Err(e) = async {
                f.write_all(&text).await?;
                f.flush().await
            }
            .await
            {
                tracing::warn!(error = %e, "cannot write the usage log");
            }
        }
        if let Some(shared) = &shared {
            add_shared(shared, &batch).await;
        }
        batch.clear();
    }
    let _ = done.send(());
}

async fn open(path: &std::path::Path) -> Option<tokio::fs::File> {
    match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the usage log");
            None
        }
    }
}

/// One pipeline of `HINCRBY`s for a batch: every replica's totals, all time and by day.
async fn add_shared(shared: &SharedLimits, batch: &[Record]) {
    let mut sums: HashMap<String, u64> = HashMap::new();
    for r in batch {
        let base = format!(
            "{}|{}|{}",
            r.client.as_deref().unwrap_or(NONE),
            r.model.as_deref().unwrap_or(NONE),
            r.key.as_deref().unwrap_or(NONE)
        );
        let u = &r.usage;
        for (kind, n) in [
            ("requests", 1),
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
            ("total", u.total_tokens),
            ("cached", u.cached_tokens.unwrap_or(0)),
            ("reasoning", u.reasoning_tokens.unwrap_or(0)),
            ("estimated", u64::from(r.estimated)),
        ] {
            if n > 0 {
                *sums.entry(format!("{base}|{kind}")).or_default() += n;
            }
        }
    }
    let total = shared.key("usage:total");
    let day = shared.key(&format!(
        "usage:day:{}",
        day_name(utc_day(SystemTime::now()))
    ));
    let mut pipe = redis::pipe();
    for (field, n) in &sums {
        pipe.hincr(&total, field, *n).ignore();
        pipe.hincr(&day, field, *n).ignore();
    }
    pipe.expire(&day, 40 * 86_400).ignore();
    let done: Option<()> = shared
        .call(|mut conn| async move { pipe.query_async(&mut conn).await })
        .await;
    if done.is_none() {
        tracing::debug!(
            "usage totals: Redis did not answer; this batch is in the local totals only"
        );
    }
}

impl Outcome {
    #[cfg(test)]
    fn all() -> [Outcome; 5] {
        [
            Outcome::Completed,
            Outcome::Broken,
            Outcome::Cancelled,
            Outcome::TimedOut,
            Outcome::Error,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record finds the totals its (client, model, key) already has by borrowed names: the
    /// borrowed key hashes and compares as the owned one, so nothing is counted twice apart.
    #[test]
    fn a_triple_already_counted_is_found_by_its_names() {
        let mut by = ByTriple::new();
        count(&mut by, &Names("a", "m", "key-1")).requests += 1;
        count(&mut by, &Names("a", "m", "key-1")).requests += 1;
        count(&mut by, &Names("b", "m", "key-1")).requests += 1;
        assert_eq!(by.len(), 2);
        assert_eq!(by[&("a".into(), "m".into(), "key-1".into())].requests, 2);
        let mut tokens = hashbrown::HashMap::<(String, String, &'static str), u64>::new();
        *count(&mut tokens, &Names("a", "m", "prompt")) += 3;
        *count(&mut tokens, &Names("a", "m", "prompt")) += 4;
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[&("a".into(), "m".into(), "prompt")], 7);
    }

    #[test]
    fn shared_fields_group_back() {
        let mut f = HashMap::new();
        f.insert("billing|gpt-4o|key-1|total".to_owned(), 7);
        f.insert("billing|gpt-4o|key-1|requests".to_owned(), 2);
        let by = from_fields(&f);
        let s = by[&("billing".into(), "gpt-4o".into(), "key-1".into())];
        assert_eq!((s.requests, s.total_tokens), (2, 7));
        assert_eq!(Outcome::all().len(), 5);
    }
}
