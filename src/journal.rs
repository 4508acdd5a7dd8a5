//! The durable journal: one row per rotation (its phase and the IDs it needs to resume), one row
//! per step before and after each side effect, per-policy leases that keep one rotation in
//! flight per policy, and on-demand requests from the moment they are accepted until their
//! rotation is recorded. SQLite by default (a file, created on first use), PostgreSQL for several
//! replicas; the SQL is written once for both through sqlx's `Any` driver. The journal holds
//! credential IDs and fingerprints, never a secret value: nothing of type `Secret` can reach it,
//! because every column is written from plain strings the engine builds from IDs.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::policy::CredentialKind;
use crate::rotation::{Phase, Rotation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal: {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal: corrupt row for rotation {id}: {detail}")]
    Corrupt { id: String, detail: String },
    /// A write under a lease that another process has taken since: this process must stop.
    #[error("journal: {what}: the policy's lease was taken over by another process")]
    LeaseLost { what: &'static str },
}

/// One step record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Step {
    pub rotation_id: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub step: String,
    pub status: StepStatus,
    pub detail: String,
}

/// How a step stood when it was recorded: before its side effect, after it, or failed. Stored
/// as its `as_str` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// About to cause a side effect.
    Intent,
    Done,
    Failed,
    /// A call whose answer was lost: its side effect may or may not have happened (a create
    /// that timed out).
    Uncertain,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Intent => "intent",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Uncertain => "uncertain",
        }
    }

    fn parse(text: &str) -> Option<StepStatus> {
        [StepStatus::Intent, StepStatus::Done, StepStatus::Failed, StepStatus::Uncertain]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for StepStatus {
    /// Padded like a `str`, so step listings line up.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A held lease. `fence` increases with every acquisition (released leases are expired, not
/// deleted), and every journal write of a rotation checks holder and fence, so a process whose
/// lease was taken over cannot write any more.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub policy: String,
    pub holder: String,
    pub fence: i64,
}

/// Who holds a policy's lease when it could not be taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub holder: String,
    pub expires_at: DateTime<Utc>,
}

/// An on-demand rotation request, recorded before it is answered so any process on the journal
/// can run it. Its ID becomes the rotation's ID; recording that rotation marks the request `done`
/// in the same transaction, so a request runs at most once.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Request {
    pub id: String,
    pub policy: String,
    pub reason: Option<String>,
    pub compromised: bool,
    /// The client's `Idempotency-Key`: a retried request with the same key for the same policy
    /// gets this request back.
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub state: RequestState,
}

/// Where a request is: waiting (`queued`), taken up by a process that has not recorded its
/// rotation yet (`started`; any process runs it again if that one dies), or recorded (`done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Queued,
    Started,
    Done,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Started => "started",
            RequestState::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<RequestState> {
        [RequestState::Queued, RequestState::Started, RequestState::Done].into_iter().find(|r| r.as_str() == s)
    }
}

/// Columns added to `rotations` after its first version, with their SQL definitions; new
/// journals get them from `SCHEMA`, older ones from `Journal::migrate`.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("revoke_first", "BIGINT NOT NULL DEFAULT 0"),
    ("waiting", "TEXT"),
    ("revoked_credentials", "TEXT NOT NULL DEFAULT '[]'"),
];

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rotations (
        id TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        kind TEXT NOT NULL,
        phase TEXT NOT NULL,
        reason TEXT,
        compromised BIGINT NOT NULL,
        credential_name TEXT NOT NULL,
        new_credential_id TEXT,
        new_fingerprint TEXT,
        old_credentials TEXT NOT NULL,
        destinations TEXT NOT NULL,
        promoted_at TEXT,
        revoke_after TEXT,
        revoked_at TEXT,
        error TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT,
        revoke_first BIGINT NOT NULL,
        waiting TEXT,
        revoked_credentials TEXT NOT NULL DEFAULT '[]'
    )",
    "CREATE INDEX IF NOT EXISTS rotations_by_policy ON rotations (policy, started_at)",
    // A reconciliation pass reads each policy's latest promotion and the unfinished rotations.
    "CREATE INDEX IF NOT EXISTS rotations_promoted ON rotations (policy, promoted_at)",
    "CREATE INDEX IF NOT EXISTS rotations_by_phase ON rotations (phase)",
    "CREATE TABLE IF NOT EXISTS steps (
        rotation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at TEXT NOT NULL,
        step TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (rotation_id, seq)
    )",
    "CREATE TABLE IF NOT EXISTS leases (
        policy TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        fence BIGINT NOT NULL
    )",
    // Journals made before requests were durable get the table (and its indexes) on open.
    "CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        reason TEXT,
        compromised BIGINT NOT NULL,
        idempotency_key TEXT,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    // One open request per policy, whichever process accepted it: the database refuses a second.
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_open_by_policy ON requests (policy) WHERE state <> 'done'",
    // A key names one request per policy (NULLs, requests without a key, are all distinct).
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests (policy, idempotency_key)",
];

/// A lease duration in milliseconds, for SQL.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, which sorts correctly as text on
/// both backends.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(id: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, Error> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::Corrupt { id: id.to_string(), detail: format!("timestamp `{t}`: {e}") })
    })
    .transpose()
}

#[derive(Clone)]
pub struct Journal {
    pool: AnyPool,
    url: String,
    /// What `SELECT` reads of a rotation: [`COLUMNS`], except that a journal opened read-only
    /// from an earlier version reads the columns it lacks as their defaults.
    columns: std::sync::Arc<str>,
    sqlite: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.url)
    }
}

/// Turns what a user writes (`rotator.db`, `sqlite://x.db`, `postgres://…`) into a sqlx URL.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_string()
    } else if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if rest.contains("mode=") || rest.contains(":memory:") {
            format!("sqlite://{rest}")
        } else {
            format!("sqlite://{rest}?mode=rwc")
        }
    } else {
        format!("sqlite://{url}?mode=rwc")
    }
}

/// A URL safe to print: any password is removed.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparseable (say, an unescaped `/` in a password): hide everything between the
        // scheme and the last `@`.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
            _ => url.to_string(),
        },
    }
}

impl Journal {
    /// Opens (and creates, for SQLite) the journal and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Journal, Error> {
        sqlx::any::install_default_drivers();
        let full = normalize_url(url);
        let shown = display_url(url);
        let sqlite = full.starts_with("sqlite:");
        let mut options =
            AnyPoolOptions::new().max_connections(if sqlite { 1 } else { 8 }).acquire_timeout(Duration::from_secs(30));
        if sqlite {
            // Per connection, so a recycled connection gets them too. WAL lets `status` read while
            // a rotation writes; the busy timeout lets two processes on one file wait for each
            // other instead of failing; FULL makes every committed step survive a power cut.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in
                        ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 10000", "PRAGMA synchronous = FULL"]
                    {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = options.connect(&full).await.map_err(|source| Error::Open { url: shown.clone(), source })?;
        let journal = Journal { pool, url: shown, columns: COLUMNS.into(), sqlite };
        let mut tx = journal.pool.begin().await.map_err(|source| Error::Query { what: "create schema", source })?;
        if !sqlite {
            // Replicas starting together would race on CREATE TABLE IF NOT EXISTS.
            sqlx::query("SELECT pg_advisory_xact_lock(726370617469)")
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "lock schema", source })?;
        }
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "create schema", source })?;
        }
        tx.commit().await.map_err(|source| Error::Query { what: "create schema", source })?;
        journal.migrate().await?;
        Ok(journal)
    }

    /// Brings a journal made by an earlier version up to date: columns added since are added
    /// with their defaults (each step checks first, so it is safe to repeat and to race).
    async fn migrate(&self) -> Result<(), Error> {
        for (column, definition) in ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
            if sqlx::query(AssertSqlSafe(probe)).execute(&self.pool).await.is_err() {
                let alter = format!("ALTER TABLE rotations ADD COLUMN {column} {definition}");
                if let Err(source) = sqlx::query(AssertSqlSafe(alter)).execute(&self.pool).await {
                    // Another process may have added it meanwhile.
                    let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
                    if sqlx::query(AssertSqlSafe(probe)).execute(&self.pool).await.is_err() {
                        return Err(Error::Query { what: "migrate schema", source });
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens an existing journal for reading only, creating nothing: `None` when a SQLite
    /// journal file does not exist yet (nothing has been rotated). For `plan` and dry runs.
    pub async fn open_read_only(url: &str) -> Result<Option<Journal>, Error> {
        sqlx::any::install_default_drivers();
        let full = normalize_url(url);
        let shown = display_url(url);
        let full = match full.strip_prefix("sqlite://") {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or(rest);
                if path == ":memory:" || !std::path::Path::new(path).exists() {
                    return Ok(None);
                }
                format!("sqlite://{path}?mode=ro")
            }
            None => full,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&full)
            .await
            .map_err(|source| Error::Open { url: shown.clone(), source })?;
        let sqlite = full.starts_with("sqlite:");
        let mut journal = Journal { pool, url: shown, columns: COLUMNS.into(), sqlite };
        // Read-only: no migration, so the columns added since its version read as defaults.
        let mut columns = COLUMNS.to_string();
        for (column, definition) in ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM rotations WHERE 1 = 0");
            if sqlx::query(AssertSqlSafe(probe)).execute(&journal.pool).await.is_err() {
                let default = definition.split_once("DEFAULT ").map(|(_, d)| d).unwrap_or("NULL");
                columns = columns.replace(column, &format!("{default} AS {column}"));
            }
        }
        journal.columns = columns.into();
        Ok(Some(journal))
    }

    /// The journal's URL without a password, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "ping", source })
    }

    fn fenced(n: u64, what: &'static str) -> Result<(), Error> {
        if n == 1 { Ok(()) } else { Err(Error::LeaseLost { what }) }
    }

    /// Records a new rotation. Called before any side effect, under the policy's lease.
    /// A request with the rotation's ID is marked `done` in the same transaction.
    pub async fn insert(&self, r: &Rotation, lease: &Lease) -> Result<(), Error> {
        let query = |source| Error::Query { what: "insert rotation", source };
        let mut tx = self.pool.begin().await.map_err(query)?;
        let n = insert_query(r, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(n, "insert rotation")?;
        request_done_query(&r.id).execute(&mut *tx).await.map_err(query)?;
        tx.commit().await.map_err(query)
    }

    /// Saves a rotation's mutable fields, only while `lease` is still the policy's lease.
    ///
    /// A rotation that fails hands back, in the same transaction, what it superseded: those
    /// rotations are `promoted` again, with their revocations still to do, so nothing they held
    /// is forgotten.
    pub async fn update(&self, r: &Rotation, lease: &Lease) -> Result<(), Error> {
        self.update_and_step(r, None, lease).await
    }

    /// [`Journal::update`] and, in the same transaction, a step record `(step, status,
    /// detail)`: a phase and the step that reached it are committed together (one commit, so
    /// one disk sync, instead of two).
    pub async fn update_with_step(
        &self,
        r: &Rotation,
        (step, status, detail): (&str, StepStatus, &str),
        lease: &Lease,
    ) -> Result<(), Error> {
        self.update_and_step(r, Some((step, status.as_str(), detail)), lease).await
    }

    async fn update_and_step(
        &self,
        r: &Rotation,
        step: Option<(&str, &str, &str)>,
        lease: &Lease,
    ) -> Result<(), Error> {
        let query = |source| Error::Query { what: "update rotation", source };
        if r.phase != Phase::Failed && step.is_none() {
            let n = update_query(r, lease).execute(&self.pool).await.map_err(query)?.rows_affected();
            return Self::fenced(n, "update rotation");
        }
        let mut tx = self.pool.begin().await.map_err(query)?;
        let n = update_query(r, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(n, "update rotation")?;
        if r.phase == Phase::Failed {
            // A failed rotation gives back what it superseded (see `supersede`).
            sqlx::query(
                "UPDATE rotations SET phase = 'promoted', waiting = NULL, finished_at = NULL, updated_at = $3
                 WHERE policy = $1 AND phase = 'superseded' AND waiting LIKE $2",
            )
            .bind(&r.policy)
            .bind(format!("{}%", superseded_by(&r.id)))
            .bind(ts(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(query)?;
        }
        if let Some((step, status, detail)) = step {
            let n = step_query(&r.id, step, status, detail, lease)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query { what: "insert step", source })?
                .rows_affected();
            Self::fenced(n, "insert step")?;
        }
        tx.commit().await.map_err(query)
    }

    /// Records `new` and saves `superseded` (already marked so, their `waiting` beginning with
    /// [`superseded_by`] `new`) in one transaction: the work passes from them to the new
    /// rotation with no moment where both, or neither, hold it.
    pub async fn supersede(&self, superseded: &[Rotation], new: &Rotation, lease: &Lease) -> Result<(), Error> {
        let query = |source| Error::Query { what: "supersede rotation", source };
        let mut tx = self.pool.begin().await.map_err(query)?;
        let inserted = insert_query(new, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
        Self::fenced(inserted, "insert rotation")?;
        request_done_query(&new.id).execute(&mut *tx).await.map_err(query)?;
        for old in superseded {
            let updated = update_query(old, lease).execute(&mut *tx).await.map_err(query)?.rows_affected();
            Self::fenced(updated, "update rotation")?;
        }
        tx.commit().await.map_err(query)
    }

    /// Appends a step record, only while `lease` is still the policy's lease (which also keeps
    /// `seq` free of races). `detail` holds IDs and messages only.
    pub async fn step(
        &self,
        rotation_id: &str,
        step: &str,
        status: StepStatus,
        detail: &str,
        lease: &Lease,
    ) -> Result<(), Error> {
        let n = step_query(rotation_id, step, status.as_str(), detail, lease)
            .execute(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "insert step", source })?
            .rows_affected();
        Self::fenced(n, "insert step")
    }

    pub async fn get(&self, id: &str) -> Result<Option<Rotation>, Error> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {} FROM rotations WHERE id = $1", self.columns)))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read rotation", source })?;
        row.map(|r| rotation_from_row(&r)).transpose()
    }

    /// Rotations not yet completed or failed, oldest first; all policies when `policy` is `None`.
    pub async fn unfinished(&self, policy: Option<&str>) -> Result<Vec<Rotation>, Error> {
        let terminal: Vec<String> =
            Phase::ALL.iter().filter(|p| p.is_terminal()).map(|p| format!("'{}'", p.as_str())).collect();
        let sql = format!(
            "SELECT {} FROM rotations WHERE phase NOT IN ({}) AND ($1 = '' OR policy = $1) ORDER BY started_at, id",
            self.columns,
            terminal.join(", ")
        );
        self.fetch(sql, policy.unwrap_or(""), "read unfinished rotations").await
    }

    /// What a reconciliation pass needs rather than the whole history: for each policy its
    /// latest rotation and its latest promoted one, and every unfinished rotation; newest first.
    /// Indexed reads (`rotations_by_policy`, `rotations_promoted`, `rotations_by_phase`) on
    /// SQLite and PostgreSQL alike, whatever the length of the history.
    pub async fn pass_view(&self) -> Result<Vec<Rotation>, Error> {
        let list = |keep: fn(Phase) -> bool| -> String {
            Phase::ALL.iter().filter(|p| keep(**p)).map(|p| format!("'{}'", p.as_str())).collect::<Vec<_>>().join(", ")
        };
        let unfinished = list(|p| !p.is_terminal());
        // Qualified for the joins; a default standing in for a column an older journal lacks
        // (read-only) is a constant and stays as it is.
        let columns = self
            .columns
            .split(',')
            .map(str::trim)
            .map(|c| match c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                true => format!("r.{c}"),
                false => c.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        // UNION drops the row that is both a policy's latest and its latest promoted one.
        let sql = format!(
            "SELECT {columns} FROM rotations r
             JOIN (SELECT policy, MAX(started_at) AS at FROM rotations GROUP BY policy) l
               ON r.policy = l.policy AND r.started_at = l.at
             UNION
             SELECT {columns} FROM rotations r
             JOIN (SELECT policy, MAX(promoted_at) AS at FROM rotations WHERE promoted_at IS NOT NULL GROUP BY policy) l
               ON r.policy = l.policy AND r.promoted_at = l.at
             UNION
             SELECT {} FROM rotations WHERE phase IN ({unfinished})",
            self.columns
        );
        // Built only from this module's constants and phase names, never from input.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read the latest rotations", source })?;
        let mut out = rows.iter().map(rotation_from_row).collect::<Result<Vec<_>, _>>()?;
        // Newest first, as `history` orders them.
        out.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        Ok(out)
    }

    /// Most recent rotations first; all policies when `policy` is `None`.
    /// Policies other than `except` that still serve `credential` as far as the journal knows:
    /// their latest rotation set out to replace it and has not promoted (in flight, or failed
    /// and rolled back, so their destinations still hold it), or made it current.
    // TODO-correctness: a policy that holds the credential but has never rotated is unknown to
    // the journal; only its destinations know.
    /// Returns the latest rotation of each such policy (its destinations say where).
    pub async fn holders(&self, credential: &str, except: &str) -> Result<Vec<Rotation>, Error> {
        // A text match finds the candidates (LIKE's wildcards only widen it); the latest rotation
        // of each decides exactly.
        let pattern = format!("%{}%", serde_json::to_string(credential).unwrap_or_default());
        let rows = sqlx::query(
            "SELECT DISTINCT policy FROM rotations WHERE policy <> $1 AND (old_credentials LIKE $2 OR new_credential_id = $3)",
        )
        .bind(except)
        .bind(pattern)
        .bind(credential)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "find holders", source })?;
        let mut holders = Vec::new();
        for row in rows {
            let policy: String = row.try_get(0).map_err(|source| Error::Query { what: "find holders", source })?;
            // The newest rotation that touched the policy's destinations decides: one that
            // promoted replaced what they served; one that set out to replace credentials and
            // did not promote (in flight, rolled back) leaves them served. A rotation that failed
            // before recording what it replaces says nothing.
            let history = self.history(Some(&policy), 1_000).await?;
            let Some(decisive) = history.into_iter().find(|r| r.phase.is_promoted() || !r.old_credentials.is_empty())
            else {
                continue;
            };
            let replacing = decisive.old_credentials.iter().any(|c| c == credential) && !decisive.phase.is_promoted();
            let made_current =
                decisive.new_credential_id.as_deref() == Some(credential) && decisive.phase.is_promoted();
            if replacing || made_current {
                holders.push(decisive);
            }
        }
        Ok(holders)
    }

    pub async fn history(&self, policy: Option<&str>, limit: i64) -> Result<Vec<Rotation>, Error> {
        let sql = format!(
            "SELECT {} FROM rotations WHERE ($1 = '' OR policy = $1) ORDER BY started_at DESC, id DESC LIMIT {}",
            self.columns,
            limit.max(1)
        );
        self.fetch(sql, policy.unwrap_or(""), "read history").await
    }

    async fn fetch(&self, sql: String, policy: &str, what: &'static str) -> Result<Vec<Rotation>, Error> {
        // Built only from this module's constants and phase names, never from input.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(policy)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| Error::Query { what, source })?;
        rows.iter().map(rotation_from_row).collect()
    }

    pub async fn steps(&self, rotation_id: &str) -> Result<Vec<Step>, Error> {
        let rows = sqlx::query(
            "SELECT rotation_id, seq, at, step, status, detail FROM steps WHERE rotation_id = $1 ORDER BY seq",
        )
        .bind(rotation_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "read steps", source })?;
        rows.iter()
            .map(|row| {
                let get =
                    |i: usize| row.try_get::<String, _>(i).map_err(|source| Error::Query { what: "read step", source });
                let at = get(2)?;
                Ok(Step {
                    rotation_id: get(0)?,
                    seq: row.try_get::<i64, _>(1).map_err(|source| Error::Query { what: "read step", source })?,
                    at: parse_ts(rotation_id, Some(at))?.unwrap_or_default(),
                    step: get(3)?,
                    status: {
                        let text = get(4)?;
                        StepStatus::parse(&text).ok_or_else(|| Error::Corrupt {
                            id: rotation_id.to_string(),
                            detail: format!("unknown step status `{text}`"),
                        })?
                    },
                    detail: get(5)?,
                })
            })
            .collect()
    }

    /// SQL for the database's clock in Unix milliseconds. Lease expiry is set and judged by it
    /// alone, never by a replica's clock, so replicas whose clocks disagree still agree on
    /// whether a lease has expired.
    fn db_now(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    /// Takes the policy's lease for `ttl` if it is free, expired, or already ours. Returns the
    /// current holder when someone else has it.
    pub async fn acquire(&self, policy: &str, holder: &str, ttl: Duration) -> Result<Result<Lease, Holder>, Error> {
        let now = self.db_now();
        let taken = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO leases (policy, holder, expires_at, fence) VALUES ($1, $2, {now} + $3, 1)
             ON CONFLICT (policy) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
                fence = leases.fence + 1
             WHERE leases.expires_at < {now} OR leases.holder = excluded.holder"
        )))
        .bind(policy)
        .bind(holder)
        .bind(millis(ttl))
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "acquire lease", source })?
        .rows_affected();
        let row = sqlx::query("SELECT holder, expires_at, fence FROM leases WHERE policy = $1")
            .bind(policy)
            .fetch_one(&self.pool)
            .await
            .map_err(|source| Error::Query { what: "read lease", source })?;
        let current: String = row.try_get(0).map_err(|source| Error::Query { what: "read lease", source })?;
        let expires_at: i64 = row.try_get(1).map_err(|source| Error::Query { what: "read lease", source })?;
        let fence: i64 = row.try_get(2).map_err(|source| Error::Query { what: "read lease", source })?;
        if taken == 1 && current == holder {
            Ok(Ok(Lease { policy: policy.to_string(), holder: holder.to_string(), fence }))
        } else {
            Ok(Err(Holder {
                holder: current,
                expires_at: DateTime::from_timestamp_millis(expires_at).unwrap_or_default(),
            }))
        }
    }

    /// Takes the lease from `dead`, a holder known to be gone (a process of this host that no
    /// longer exists), without waiting for it to expire.
    pub async fn take_over(
        &self,
        policy: &str,
        dead: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leases SET holder = $1, expires_at = {} + $2, fence = fence + 1 WHERE policy = $3 AND holder = $4",
            self.db_now()
        )))
        .bind(holder)
        .bind(millis(ttl))
        .bind(policy)
        .bind(dead)
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "take over lease", source })?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        let fence: i64 = sqlx::query("SELECT fence FROM leases WHERE policy = $1 AND holder = $2")
            .bind(policy)
            .bind(holder)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|source| Error::Query { what: "read lease", source })?;
        Ok(Some(Lease { policy: policy.to_string(), holder: holder.to_string(), fence }))
    }

    /// Extends a held lease; `false` if it was lost (expired and taken by someone else).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, Error> {
        let n = sqlx::query(AssertSqlSafe(format!(
            "UPDATE leases SET expires_at = {} + $1 WHERE policy = $2 AND holder = $3 AND fence = $4",
            self.db_now()
        )))
        .bind(millis(ttl))
        .bind(&lease.policy)
        .bind(&lease.holder)
        .bind(lease.fence)
        .execute(&self.pool)
        .await
        .map_err(|source| Error::Query { what: "renew lease", source })?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives the lease up by expiring it; the row stays, so the fence keeps growing.
    pub async fn release(&self, lease: &Lease) -> Result<(), Error> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE policy = $1 AND holder = $2 AND fence = $3")
            .bind(&lease.policy)
            .bind(&lease.holder)
            .bind(lease.fence)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "release lease", source })
    }

    /// Records an accepted on-demand request. Refused by the database (an error) when the policy
    /// has an open request already or the key was used for it; the caller reads which.
    pub async fn add_request(&self, r: &Request) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO requests (id, policy, reason, compromised, idempotency_key, created_at, state, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $6)",
        )
        .bind(&r.id)
        .bind(&r.policy)
        .bind(r.reason.clone())
        .bind(r.compromised as i64)
        .bind(r.idempotency_key.clone())
        .bind(ts(r.created_at))
        .bind(r.state.as_str())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|source| Error::Query { what: "record request", source })
    }

    /// Requests not yet recorded as rotations, compromise requests first, then oldest first.
    pub async fn open_requests(&self) -> Result<Vec<Request>, Error> {
        self.requests("WHERE state <> 'done' ORDER BY compromised DESC, created_at, id", &[], "read requests").await
    }

    /// The request with this ID, whatever its state.
    pub async fn request(&self, id: &str) -> Result<Option<Request>, Error> {
        Ok(self.requests("WHERE id = $1", &[id], "read request").await?.pop())
    }

    /// The request made for `policy` with this `Idempotency-Key`, whatever its state.
    pub async fn request_by_key(&self, policy: &str, key: &str) -> Result<Option<Request>, Error> {
        Ok(self.requests("WHERE policy = $1 AND idempotency_key = $2", &[policy, key], "read request").await?.pop())
    }

    async fn requests(&self, filter: &'static str, binds: &[&str], what: &'static str) -> Result<Vec<Request>, Error> {
        // `filter` is one of this module's constants, never input.
        let sql = format!(
            "SELECT id, policy, reason, compromised, idempotency_key, created_at, state FROM requests {filter}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(|source| Error::Query { what, source })?;
        rows.iter().map(request_from_row).collect()
    }

    /// Notes that a process took the request up (it stays open until its rotation is recorded).
    pub async fn start_request(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE requests SET state = 'started', updated_at = $2 WHERE id = $1 AND state = 'queued'")
            .bind(id)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| Error::Query { what: "start request", source })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How the `waiting` of a rotation superseded by rotation `id` begins.
pub fn superseded_by(id: &str) -> String {
    format!("superseded by rotation {id}")
}

/// Marks the request whose rotation is being recorded as `done` (a no-op for rotations nobody
/// requested through the API).
fn request_done_query(id: &str) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query("UPDATE requests SET state = 'done', updated_at = $2 WHERE id = $1 AND state <> 'done'")
        .bind(id)
        .bind(ts(Utc::now()))
}

fn request_from_row(row: &AnyRow) -> Result<Request, Error> {
    let q = |source| Error::Query { what: "read request", source };
    let id: String = row.try_get(0).map_err(q)?;
    let state: String = row.try_get(6).map_err(q)?;
    let corrupt = |detail: String| Error::Corrupt { id: id.clone(), detail };
    Ok(Request {
        policy: row.try_get(1).map_err(q)?,
        reason: row.try_get(2).map_err(q)?,
        compromised: row.try_get::<i64, _>(3).map_err(q)? != 0,
        idempotency_key: row.try_get(4).map_err(q)?,
        created_at: parse_ts(&id, Some(row.try_get(5).map_err(q)?))?.unwrap_or_default(),
        state: RequestState::parse(&state).ok_or_else(|| corrupt(format!("request state `{state}`")))?,
        id,
    })
}

/// The fenced `INSERT` of a new rotation: it writes nothing unless `lease` is the policy's lease.
fn insert_query<'q>(r: &'q Rotation, lease: &'q Lease) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO rotations (id, policy, kind, phase, reason, compromised, credential_name, new_credential_id,
            new_fingerprint, old_credentials, destinations, promoted_at, revoke_after, revoked_at, error,
            started_at, updated_at, finished_at, revoke_first, waiting, revoked_credentials)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $23
         WHERE EXISTS (SELECT 1 FROM leases WHERE policy = $2 AND holder = $21 AND fence = $22)",
    )
    .bind(&r.id)
    .bind(&r.policy)
    .bind(r.kind.as_str())
    .bind(r.phase.as_str())
    .bind(r.reason.clone())
    .bind(r.compromised as i64)
    .bind(&r.credential_name)
    .bind(r.new_credential_id.clone())
    .bind(r.new_fingerprint.clone())
    .bind(serde_json::to_string(&r.old_credentials).unwrap_or_default())
    .bind(serde_json::to_string(&r.destinations).unwrap_or_default())
    .bind(r.promoted_at.map(ts))
    .bind(r.revoke_after.map(ts))
    .bind(r.revoked_at.map(ts))
    .bind(r.error.clone())
    .bind(ts(r.started_at))
    .bind(ts(r.updated_at))
    .bind(r.finished_at.map(ts))
    .bind(r.revoke_first as i64)
    .bind(r.waiting.clone())
    .bind(&lease.holder)
    .bind(lease.fence)
    .bind(serde_json::to_string(&r.revoked_credentials).unwrap_or_default())
}

/// The fenced `UPDATE` of a rotation's mutable fields.
/// Appends a step record, only while `lease` is the policy's lease (which also keeps `seq` free
/// of races). The lease check sits outside the aggregate: an aggregate without GROUP BY yields
/// a row even when its WHERE matches nothing.
fn step_query<'q>(
    rotation_id: &'q str,
    step: &'q str,
    status: &'q str,
    detail: &'q str,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO steps (rotation_id, seq, at, step, status, detail)
         SELECT $1, last.seq + 1, $2, $3, $4, $5
         FROM (SELECT COALESCE(MAX(seq), 0) AS seq FROM steps WHERE rotation_id = $1) last
         WHERE EXISTS (SELECT 1 FROM leases WHERE policy = $6 AND holder = $7 AND fence = $8)",
    )
    .bind(rotation_id)
    .bind(ts(Utc::now()))
    .bind(step)
    .bind(status)
    .bind(detail)
    .bind(&lease.policy)
    .bind(&lease.holder)
    .bind(lease.fence)
}

fn update_query<'q>(r: &'q Rotation, lease: &'q Lease) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "UPDATE rotations SET phase = $2, new_credential_id = $3, new_fingerprint = $4, old_credentials = $5,
            promoted_at = $6, revoke_after = $7, revoked_at = $8, error = $9, updated_at = $10, finished_at = $11,
            compromised = $12, waiting = $13, revoked_credentials = $17
         WHERE id = $1 AND EXISTS (SELECT 1 FROM leases WHERE policy = $14 AND holder = $15 AND fence = $16)",
    )
    .bind(&r.id)
    .bind(r.phase.as_str())
    .bind(r.new_credential_id.clone())
    .bind(r.new_fingerprint.clone())
    .bind(serde_json::to_string(&r.old_credentials).unwrap_or_default())
    .bind(r.promoted_at.map(ts))
    .bind(r.revoke_after.map(ts))
    .bind(r.revoked_at.map(ts))
    .bind(r.error.clone())
    .bind(ts(r.updated_at))
    .bind(r.finished_at.map(ts))
    .bind(r.compromised as i64)
    .bind(r.waiting.clone())
    .bind(&r.policy)
    .bind(&lease.holder)
    .bind(lease.fence)
    .bind(serde_json::to_string(&r.revoked_credentials).unwrap_or_default())
}

const COLUMNS: &str =
    "id, policy, kind, phase, reason, compromised, credential_name, new_credential_id, new_fingerprint,
    old_credentials, destinations, promoted_at, revoke_after, revoked_at, error, started_at, updated_at, finished_at,
    revoke_first, waiting, revoked_credentials";

fn rotation_from_row(row: &AnyRow) -> Result<Rotation, Error> {
    let q = |source| Error::Query { what: "read rotation", source };
    let text = |i: usize| row.try_get::<String, _>(i).map_err(q);
    let opt = |i: usize| row.try_get::<Option<String>, _>(i).map_err(q);
    let id = text(0)?;
    let corrupt = |detail: String| Error::Corrupt { id: id.clone(), detail };
    let kind = text(2)?;
    let phase = text(3)?;
    let list = |i: usize| -> Result<Vec<String>, Error> {
        serde_json::from_str(&text(i)?).map_err(|e| corrupt(format!("column {i}: {e}")))
    };
    Ok(Rotation {
        policy: text(1)?,
        kind: CredentialKind::parse(&kind).ok_or_else(|| corrupt(format!("kind `{kind}`")))?,
        phase: Phase::from_str(&phase).map_err(|_| corrupt(format!("phase `{phase}`")))?,
        reason: opt(4)?,
        compromised: row.try_get::<i64, _>(5).map_err(q)? != 0,
        credential_name: text(6)?,
        new_credential_id: opt(7)?,
        new_fingerprint: opt(8)?,
        old_credentials: list(9)?,
        destinations: list(10)?,
        promoted_at: parse_ts(&id, opt(11)?)?,
        revoke_after: parse_ts(&id, opt(12)?)?,
        revoked_at: parse_ts(&id, opt(13)?)?,
        error: opt(14)?,
        started_at: parse_ts(&id, Some(text(15)?))?.unwrap_or_default(),
        updated_at: parse_ts(&id, Some(text(16)?))?.unwrap_or_default(),
        finished_at: parse_ts(&id, opt(17)?)?,
        revoke_first: row.try_get::<i64, _>(18).map_err(q)? != 0,
        waiting: opt(19)?,
        revoked_credentials: list(20)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass reads, per policy, the latest rotation and the latest promoted one, and every
    /// unfinished one, never the rest of the history.
    #[tokio::test]
    async fn a_pass_reads_only_the_latest_and_the_unfinished_rotations() {
        let dir = std::env::temp_dir().join(format!("rotator-pass-view-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = Journal::open(dir.join("j.db").to_str().unwrap()).await.unwrap();
        let rows = [
            // p: two old completed ones, the latest completed, then a failed one.
            ("p", "a", Phase::Completed, "2026-01-01T00:00:00Z"),
            ("p", "b", Phase::Completed, "2026-02-01T00:00:00Z"),
            ("p", "c", Phase::Completed, "2026-03-01T00:00:00Z"),
            ("p", "d", Phase::Failed, "2026-04-01T00:00:00Z"),
            // q: a promoted one awaiting revocation under a newer one in flight.
            ("q", "e", Phase::Completed, "2026-01-01T00:00:00Z"),
            ("q", "f", Phase::Promoted, "2026-02-01T00:00:00Z"),
            ("q", "g", Phase::Staged, "2026-03-01T00:00:00Z"),
            // r: never promoted.
            ("r", "h", Phase::Failed, "2026-01-01T00:00:00Z"),
            ("r", "i", Phase::Failed, "2026-02-01T00:00:00Z"),
        ];
        for (policy, id, phase, started) in rows {
            let lease = journal.acquire(policy, "test", Duration::from_secs(30)).await.unwrap().unwrap();
            let mut r = Rotation::example(id, phase, started);
            r.policy = policy.into();
            journal.insert(&r, &lease).await.unwrap();
            journal.release(&lease).await.unwrap();
        }
        let ids: Vec<String> = journal.pass_view().await.unwrap().into_iter().map(|r| r.id).collect();
        // Newest first, as `history` orders them.
        assert_eq!(ids, ["d", "g", "c", "i", "f"]);
        journal.close().await;
        std::fs::remove_dir_all(&dir).ok();
    }
}
