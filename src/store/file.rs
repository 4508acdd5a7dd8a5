//! The `file` destination: a JSON file (mode 0600) for local use and the demo. The current value
//! lives at `path`, the staged one at `path.pending`, the replaced one at `path.previous`.
//! Promotion is an atomic rename, so a reader sees either the old or the new file, never a torn
//! one. None of the three may be a symbolic link: rotator writes secrets there and must not be
//! led into writing (or reading) a file elsewhere. Temporary files have random names and are
//! created exclusively, so a link planted in the directory cannot redirect a write either.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, ErrorKind, Record, Store};
use crate::credential::CredentialKind;
use crate::policy::FileDestination;

/// `O_NOFOLLOW`, which std does not name. The `libc` crate is not a dependency and the value
/// differs by architecture (x86_64 `0o400000`, aarch64 `0o100000`), so it is spelled out for
/// the targets rotator ships on. Elsewhere it is 0: the `symlink_metadata` check still refuses
/// links, and `create_new` (`O_EXCL`) never follows one, but a link swapped in between the check
/// and the open of a read would be followed.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const O_NOFOLLOW: i32 = 0o400000;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
const O_NOFOLLOW: i32 = 0o100000;
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
const O_NOFOLLOW: i32 = 0;

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
        Error::new(super::Kind::File, self.label(), kind, detail)
    }

    /// Refuses a symbolic link at `path` (a missing file is fine).
    fn refuse_link(&self, path: &Path) -> Result<(), Error> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(self.error(
                ErrorKind::Permanent,
                format!("{} is a symbolic link; rotator does not follow links at a destination", path.display()),
            )),
            // Only a regular file (or nothing yet) can hold a credential: a directory, FIFO or
            // device there is refused before anything is minted.
            Ok(meta) if !meta.file_type().is_file() => Err(self.error(
                ErrorKind::Permanent,
                format!(
                    "{} is {}, not a file",
                    path.display(),
                    if meta.is_dir() { "a directory" } else { "a special file (FIFO, socket or device)" }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a symbolic link at the file or its `.pending` or `.previous` sibling, so that a
    /// rotation is refused before anything is minted rather than at promotion.
    fn refuse_links(&self) -> Result<(), Error> {
        for path in [self.path.clone(), self.sibling(".pending"), self.sibling(".previous")] {
            self.refuse_link(&path)?;
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> Result<Option<Record>, Error> {
        self.refuse_link(path)?;
        let mut text = String::new();
        // O_NOFOLLOW: a link put in place after the check above fails the open.
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NOFOLLOW)
            .open(path)
            .and_then(|mut file| file.read_to_string(&mut text))
        {
            Ok(_) => Record::parse_text(self.kind, &text)
                .map_err(|e| self.error(ErrorKind::Unexpected, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(ErrorKind::Permanent, format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes `record` to `path` atomically: a new 0600 temporary file, fsync, rename, fsync of
    /// the directory, so that a crash leaves either the old or the new content.
    fn write(&self, path: &Path, record: &Record) -> Result<(), Error> {
        let io = |e: std::io::Error| self.error(ErrorKind::Permanent, format!("cannot write {}: {e}", path.display()));
        // The rename would replace a link rather than follow it, but a link here means someone
        // expects the secret elsewhere: say so instead of silently breaking the link.
        self.refuse_link(path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        // A random name, created exclusively (`O_CREAT|O_EXCL`, which never follows a link) with
        // mode 0600 from the start: a predictable name let a planted link redirect the write
        // and the chmod to the link's target.
        let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let tmp = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        let written = (|| {
            file.write_all(record.to_json_secret().expose().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            // Do not leave a copy of the secret behind; the original error is the one to report.
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
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
        self.refuse_links()?;
        self.read(&self.path).map(|_| ())
    }

    async fn preflight(&self) -> Result<String, Error> {
        self.refuse_links()?;
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

    async fn previous(&self) -> Result<Option<Record>, Error> {
        self.read(&self.sibling(".previous"))
    }

    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error> {
        // Refuse to overwrite a current value rotator cannot read (checked before writing).
        self.read(&self.path)?;
        if let Some(staged) = self.read(&self.sibling(".pending"))?
            && staged.rotation_id.as_deref() == Some(rotation_id)
        {
            return staged.restaged(record, super::Kind::File, self.label(), rotation_id);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written constant is the kernel's: opening a link with it fails (`ELOOP`).
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    #[test]
    fn o_nofollow_refuses_a_link() {
        let dir = std::env::temp_dir().join(format!("rotator-nofollow-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("target"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        let open = |path: &Path| std::fs::OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(path);
        assert!(open(&dir.join("target")).is_ok());
        let error = open(&dir.join("link")).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(40), "ELOOP: {error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
