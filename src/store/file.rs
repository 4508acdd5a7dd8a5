//! The `file` destination: a JSON file (mode 0600) for local use and the demo. The current value
//! lives at `path`, the staged one at `path.pending`, the replaced one at `path.previous`.
//! Promotion is an atomic rename, so a reader sees either the old or the new file, never a torn
//! one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, ErrorKind, Record, Store};
use crate::policy::{CredentialKind, FileDestination};

pub struct File {
    path: PathBuf,
    kind: CredentialKind,
}

impl File {
    pub fn new(spec: &FileDestination, kind: CredentialKind) -> File {
        File { path: spec.path.clone(), kind }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(self.label(), kind, detail)
    }

    fn read(&self, path: &Path) -> Result<Option<Record>, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Record::parse_text(self.kind, &text)
                .map_err(|e| self.error(ErrorKind::Unexpected, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(ErrorKind::Permanent, format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes `record` to `path` atomically: a 0600 temporary file, fsync, rename, fsync of the
    /// directory, so that a crash leaves either the old or the new content.
    fn write(&self, path: &Path, record: &Record) -> Result<(), Error> {
        let io = |e: std::io::Error| self.error(ErrorKind::Permanent, format!("cannot write {}: {e}", path.display()));
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        // `mode` applies only when the file is created; a leftover temporary file gets it too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        file.write_all(record.to_json_secret().expose().as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_dir(dir).map_err(io)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Store for File {
    fn label(&self) -> String {
        format!("file:{}", self.path.display())
    }

    async fn check(&self) -> Result<(), Error> {
        self.read(&self.path).map(|_| ())
    }

    async fn preflight(&self) -> Result<String, Error> {
        let current = self.read(&self.path)?;
        // The nearest existing directory must be writable (checked by its mode, not by writing).
        let mut dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        while !dir.exists() {
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => dir = parent.to_path_buf(),
                _ => break,
            }
        }
        let meta =
            std::fs::metadata(&dir).map_err(|e| self.error(ErrorKind::Permanent, format!("{}: {e}", dir.display())))?;
        if meta.permissions().mode() & 0o200 == 0 {
            return Err(self.error(ErrorKind::Permanent, format!("{} is not writable", dir.display())));
        }
        Ok(match current {
            Some(r) => format!("readable; holds {}", r.id),
            None => "writable; will be created".into(),
        })
    }

    async fn current(&self) -> Result<Option<Record>, Error> {
        self.read(&self.path)
    }

    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error> {
        // Refuse to overwrite a current value rotator cannot read (checked before writing).
        self.read(&self.path)?;
        if let Some(staged) = self.read(&self.sibling(".pending"))?
            && staged.rotation_id.as_deref() == Some(rotation_id)
        {
            return staged.restaged(record, self.label(), rotation_id);
        }
        self.write(&self.sibling(".pending"), record)
    }

    async fn staged(&self, rotation_id: &str) -> Result<Option<Record>, Error> {
        for candidate in [self.sibling(".pending"), self.path.clone()] {
            if let Some(record) = self.read(&candidate)?
                && record.rotation_id.as_deref() == Some(rotation_id)
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn promote(&self, rotation_id: &str) -> Result<(), Error> {
        let current = self.read(&self.path)?;
        if current.as_ref().and_then(|r| r.rotation_id.as_deref()) == Some(rotation_id) {
            return self.discard(rotation_id).await;
        }
        let pending = self.sibling(".pending");
        match self.read(&pending)? {
            Some(staged) if staged.rotation_id.as_deref() == Some(rotation_id) => {}
            _ => return Err(self.error(ErrorKind::Unexpected, format!("no staged value for rotation {rotation_id}"))),
        }
        if let Some(current) = current {
            self.write(&self.sibling(".previous"), &current)?;
        }
        let io =
            |e: std::io::Error| self.error(ErrorKind::Permanent, format!("cannot promote {}: {e}", pending.display()));
        std::fs::rename(&pending, &self.path).map_err(io)?;
        sync_dir(self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))).map_err(io)
    }

    async fn discard(&self, rotation_id: &str) -> Result<(), Error> {
        let pending = self.sibling(".pending");
        match self.read(&pending) {
            Ok(Some(staged)) if staged.rotation_id.as_deref() == Some(rotation_id) => std::fs::remove_file(&pending)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(|e| self.error(ErrorKind::Permanent, format!("cannot remove {}: {e}", pending.display()))),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pending(&self) -> Result<Vec<String>, Error> {
        Ok(self.read(&self.sibling(".pending"))?.and_then(|r| r.rotation_id).into_iter().collect())
    }
}
