//! Where destinations write, in canonical form (absolute file paths resolved through existing
//! directories, Vault paths without stray slashes, AWS secrets by region and name or ARN), and
//! the checks across the policy set: unique names and credential names, no place written twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CredentialKind, Destination, Invalid, Policy, Problem, VaultDestination};

impl Destination {
    /// A short, secret-free label such as `vault:secret/toktra/ci`. The engine stores it in the
    /// journal and compares it with the policy's on resume, so it is built from the canonical
    /// form the reader gives destinations (absolute file paths, Vault paths without stray
    /// slashes): the same policy loaded through `policies`, `./policies/` or an absolute path
    /// has the same labels.
    pub fn label(&self) -> String {
        match self {
            Destination::AwsSecretsManager(d) => match &d.region {
                Some(region) => format!("aws:{region}:{}", d.secret_id),
                None => format!("aws:{}", d.secret_id),
            },
            Destination::Vault(d) => format!("vault:{}/{}", vault_path(&d.mount), vault_path(&d.path)),
            Destination::File(d) => format!("file:{}", d.path.display()),
        }
    }

    /// Every place the destination writes, to reject two destinations writing one place.
    /// A destination without `region` is placed in `default_region` (`None`: the default, which
    /// only the AWS configuration knows, so it equals only itself).
    fn places(&self, default_region: Option<&str>) -> Vec<Place> {
        match self {
            Destination::AwsSecretsManager(d) => {
                let (region, account, name) = match secret_arn(&d.secret_id) {
                    Some(Ok(arn)) => (
                        Some(arn.region.to_string()),
                        Some(format!("{}:{}", arn.partition, arn.account)),
                        arn.resource.to_string(),
                    ),
                    _ => (d.region.clone().or(default_region.map(str::to_string)), None, d.secret_id.clone()),
                };
                vec![Place::Aws { region, account, name }]
            }
            Destination::Vault(d) => {
                let mount = vault_path(&d.mount);
                vec![
                    Place::Exact(format!("vault:{mount}/{}", vault_path(&d.path))),
                    Place::Exact(format!("vault:{mount}/{}", d.staging_path())),
                ]
            }
            // The staged and the replaced value wait beside the file.
            Destination::File(d) => ["", ".pending", ".previous"]
                .iter()
                .map(|suffix| {
                    let mut path = d.path.clone().into_os_string();
                    path.push(suffix);
                    Place::Exact(format!("file:{}", PathBuf::from(path).display()))
                })
                .collect(),
        }
    }
}

/// A place a destination writes, canonical (see [`Destination::places`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A file or Vault path: the same text is the same place.
    Exact(String),
    /// An AWS secret. AWS accepts a name or an ARN, and they cannot be matched exactly offline:
    /// a name has no account, and an ARN's name is followed by `-` and 6 random characters
    /// (or not, in a partial ARN) while a name may itself end like that.
    Aws {
        /// From the ARN, else `region`, else the default region when known.
        region: Option<String>,
        /// `partition:account` of an ARN; `None` for a name (the caller's account).
        account: Option<String>,
        /// The name, or the ARN's resource (`name-XXXXXX`, or `name` in a partial ARN).
        name: String,
    },
}

/// How two places overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overlap {
    /// Certainly one place.
    Same,
    /// Possibly one AWS secret: a name and an ARN, or a partial and a full ARN, naming it.
    Maybe,
}

impl Place {
    /// Keys under which overlapping places meet: equal text, or a region and a secret name.
    fn keys(&self) -> Vec<String> {
        match self {
            Place::Exact(text) => vec![text.clone()],
            Place::Aws { region, account, name } => {
                let region = region.as_deref().unwrap_or("(default)");
                let mut keys = vec![format!("aws:{region}:{name}")];
                if let Some(bare) = account.as_ref().and(without_random_suffix(name)) {
                    keys.push(format!("aws:{region}:{bare}"));
                }
                keys
            }
        }
    }

    fn overlap(&self, other: &Place) -> Option<Overlap> {
        match (self, other) {
            (Place::Exact(a), Place::Exact(b)) => (a == b).then_some(Overlap::Same),
            (Place::Aws { region: ra, account: aa, name: na }, Place::Aws { region: rb, account: ab, name: nb })
                if ra == rb =>
            {
                let suffixed = |full: &str, bare: &str| without_random_suffix(full) == Some(bare);
                match (aa, ab) {
                    (None, None) => (na == nb).then_some(Overlap::Same),
                    (Some(aa), Some(ab)) if aa != ab => None,
                    (Some(_), Some(_)) if na == nb => Some(Overlap::Same),
                    (Some(_), Some(_)) => (suffixed(na, nb) || suffixed(nb, na)).then_some(Overlap::Maybe),
                    // A name is in the caller's account, which only AWS knows: possibly the ARN's.
                    (Some(_), None) => (na == nb || suffixed(na, nb)).then_some(Overlap::Maybe),
                    (None, Some(_)) => (na == nb || suffixed(nb, na)).then_some(Overlap::Maybe),
                }
            }
            _ => None,
        }
    }
}

/// The parts of a Secrets Manager secret ARN, `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:RESOURCE`.
pub(super) struct SecretArn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

/// `None` when `secret_id` is a name; an error when it starts like an ARN (a secret name cannot
/// contain `:`) but is not a secret's.
pub(super) fn secret_arn(secret_id: &str) -> Option<Result<SecretArn<'_>, String>> {
    let rest = secret_id.strip_prefix("arn:")?;
    let parts: Vec<&str> = rest.splitn(6, ':').collect();
    Some(match parts[..] {
        [partition, "secretsmanager", region, account, "secret", resource]
            if [partition, region, account, resource].iter().all(|p| !p.is_empty()) =>
        {
            Ok(SecretArn { partition, region, account, resource })
        }
        _ => Err(format!(
            "`{secret_id}` is not a Secrets Manager secret ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX`)"
        )),
    })
}

/// The name an ARN's resource has without the `-` and 6 alphanumerics AWS appends, if it ends
/// like that. Only a candidate: a partial ARN has no suffix and a name may end the same way.
pub(super) fn without_random_suffix(resource: &str) -> Option<&str> {
    let (name, suffix) = resource.rsplit_once('-')?;
    (!name.is_empty() && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(name)
}

/// A Vault mount or path without empty segments: `/toktra//ci/` is `toktra/ci`, as Vault routes
/// it.
/// The canonical form of a destination label as an earlier version may have recorded it in the
/// journal (file paths as spelled, Vault paths with stray slashes), so rotations in flight across
/// an upgrade still compare equal to their policy's [`Destination::label`].
pub fn canonical_label(label: &str) -> String {
    if let Some(path) = label.strip_prefix("file:") {
        format!("file:{}", canonical_file(Path::new(""), Path::new(path)).display())
    } else if let Some(path) = label.strip_prefix("vault:") {
        format!("vault:{}", vault_path(path))
    } else {
        label.to_string()
    }
}

pub(super) fn vault_path(text: &str) -> String {
    text.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
}

/// The file a `path` given in a policy file under `base` names, as the file destination writes
/// it: absolute, and independent of how the policy directory was spelled (`policies`,
/// `./policies/`, absolute, through a symlink). The longest existing ancestor of its directory
/// is resolved by the filesystem (`..` after a symlink goes where the kernel goes); the rest,
/// which does not exist yet, lexically (as `create_dir_all` would create it). The file itself
/// is not resolved: promotion renames over it, replacing a symlink rather than its target.
pub(super) fn canonical_file(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    let absolute = match joined.is_absolute() {
        true => joined,
        false => std::env::current_dir().map(|cwd| cwd.join(&joined)).unwrap_or(joined),
    };
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else { return absolute };
    let components: Vec<std::path::Component<'_>> = dir.components().collect();
    let mut resolved = PathBuf::new();
    let mut rest = &components[..];
    for end in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..end].iter().collect();
        if prefix.symlink_metadata().is_ok()
            && let Ok(real) = std::fs::canonicalize(&prefix)
        {
            resolved = real;
            rest = &components[end..];
            break;
        }
    }
    if resolved.as_os_str().is_empty() {
        resolved = components.iter().take_while(|c| matches!(c, std::path::Component::RootDir)).collect();
    }
    for component in rest {
        match component {
            std::path::Component::Normal(part) => resolved.push(part),
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            _ => {}
        }
    }
    resolved.join(name)
}

impl VaultDestination {
    /// Where the pending value waits: `staging_path`, else `_rotator/staging/<path>`.
    pub fn staging_path(&self) -> String {
        match &self.staging_path {
            Some(p) => vault_path(p),
            None => format!("_rotator/staging/{}", vault_path(&self.path)),
        }
    }
}

/// Checks that span policies: unique names, no destination written by two policies.
pub(super) fn check_set(policies: &[Policy], problems: &mut Vec<Problem>) {
    let mut names: HashMap<&str, &Policy> = HashMap::new();
    let mut credentials: HashMap<(CredentialKind, &str), &Policy> = HashMap::new();
    let mut unique = Vec::new();
    for policy in policies {
        if let Some(first) = names.insert(&policy.name, policy) {
            problems.push(Problem {
                location: policy.source.clone(),
                field: "name".into(),
                message: format!("duplicate policy name `{}`, first defined at {}", policy.name, first.source),
            });
            continue;
        }
        // Mints are recognised by their name: two policies minting under one base name would
        // take each other's credentials for orphans.
        if let Some(first) = credentials.insert((policy.credential.kind, &policy.credential.name), policy) {
            problems.push(Problem {
                location: policy.source.clone(),
                field: "credential.name".into(),
                message: format!(
                    "{} `{}` is also the credential name of policy `{}` ({})",
                    policy.credential.kind, policy.credential.name, first.name, first.source
                ),
            });
        }
        unique.push(policy);
    }
    // Within one policy, `validate` reported it at the destination's own line.
    problems.extend(
        overlapping(&unique, None)
            .iter()
            .filter(|o| !std::ptr::eq(o.policy, o.other))
            .map(|o| overlap_problem(o, None)),
    );
}

/// The check `validate` cannot make offline: a destination without `region` is in the default
/// region, which only the AWS configuration knows. With those placed in `default_region`, no two
/// destinations of the set (of two policies, or of one) may write one secret. `plan` and
/// `rotate` call it before anything is opened, minted or written.
pub fn check_default_region(policies: &[Policy], default_region: Option<&str>) -> Result<(), Invalid> {
    let all: Vec<&Policy> = policies.iter().collect();
    let problems: Vec<Problem> =
        overlapping(&all, default_region).iter().map(|o| overlap_problem(o, default_region)).collect();
    if problems.is_empty() { Ok(()) } else { Err(Invalid(problems)) }
}

/// Whether [`check_default_region`] has anything to decide for this (valid) set: some default
/// region named in it would make two destinations one secret. Without such a pair the AWS
/// configuration need not be read (a file-only or Vault-only run never touches it).
pub fn depends_on_default_region(policies: &[Policy]) -> bool {
    let all: Vec<&Policy> = policies.iter().collect();
    let regions: std::collections::BTreeSet<String> = all
        .iter()
        .flat_map(|p| &p.destinations)
        .flat_map(|d| d.places(None))
        .filter_map(|place| match place {
            Place::Aws { region, .. } => region,
            Place::Exact(_) => None,
        })
        .collect();
    regions.iter().any(|region| !overlapping(&all, Some(region)).is_empty())
}

/// Why a name and an ARN (or a partial and a full ARN) are refused as possibly one secret.
pub(super) const MAYBE_SAME: &str = "a secret name is in the caller's account, an ARN names the secret by its name followed by \
    `-` and 6 random characters (none in a partial ARN), and a name may itself end like that; if they are different \
    secrets, give both as full ARNs";

/// A destination writing a place an earlier destination (of an earlier policy, or earlier in
/// the same one) writes.
struct Overlapping<'a> {
    policy: &'a Policy,
    index: usize,
    other: &'a Policy,
    other_index: usize,
    overlap: Overlap,
}

/// Every destination of `policies` that writes a place an earlier one writes, with AWS
/// destinations without `region` placed in `default_region`. Places meet by their keys, so a
/// set of 10,000 policies is not compared pairwise.
fn overlapping<'a>(policies: &[&'a Policy], default_region: Option<&str>) -> Vec<Overlapping<'a>> {
    let mut seen: HashMap<String, Vec<(&'a Policy, usize, Place)>> = HashMap::new();
    let mut found = Vec::new();
    for &policy in policies {
        for (index, destination) in policy.destinations.iter().enumerate() {
            let places = destination.places(default_region);
            let mut best: Option<Overlapping<'a>> = None;
            for place in &places {
                for key in place.keys() {
                    for (other, other_index, theirs) in seen.get(&key).into_iter().flatten() {
                        if let Some(overlap) = place.overlap(theirs)
                            && best.as_ref().is_none_or(|b| b.overlap == Overlap::Maybe && overlap == Overlap::Same)
                        {
                            best = Some(Overlapping { policy, index, other, other_index: *other_index, overlap });
                        }
                    }
                }
            }
            found.extend(best);
            for place in places {
                for key in place.keys() {
                    seen.entry(key).or_default().push((policy, index, place.clone()));
                }
            }
        }
    }
    found
}

/// The destinations of one policy read so far, by the keys of their places, so that each new
/// one is compared only with those that share a key (a policy with 20,000 destinations is not
/// compared pairwise).
#[derive(Default)]
pub(super) struct Earlier {
    by_key: HashMap<String, Vec<(usize, Place)>>,
}

impl Earlier {
    /// The earliest destination writing a place `destination` (the `index`-th) writes (a
    /// certain overlap before a possible one); then `destination` counts as read.
    pub fn overlap(&mut self, index: usize, destination: &Destination) -> Option<(usize, Overlap)> {
        let places = destination.places(None);
        let mut same: Option<usize> = None;
        let mut maybe: Option<usize> = None;
        for ours in &places {
            for key in ours.keys() {
                for (j, theirs) in self.by_key.get(&key).into_iter().flatten() {
                    let slot = match ours.overlap(theirs) {
                        Some(Overlap::Same) => &mut same,
                        Some(Overlap::Maybe) => &mut maybe,
                        None => continue,
                    };
                    *slot = Some(slot.map_or(*j, |k| k.min(*j)));
                }
            }
        }
        for place in places {
            for key in place.keys() {
                self.by_key.entry(key).or_default().push((index, place.clone()));
            }
        }
        same.map(|j| (j, Overlap::Same)).or(maybe.map(|j| (j, Overlap::Maybe)))
    }
}

fn overlap_problem(o: &Overlapping<'_>, default_region: Option<&str>) -> Problem {
    let ours = o.policy.destinations[o.index].label();
    let theirs = o.other.destinations[o.other_index].label();
    let same_policy = std::ptr::eq(o.policy, o.other);
    let of = match same_policy {
        true => format!("destinations[{}]", o.other_index),
        false => format!("policy `{}` ({})", o.other.name, o.other.source),
    };
    let mut message = match default_region {
        Some(region) => format!("with the default region `{region}` (from the AWS configuration), "),
        None => String::new(),
    };
    message.push_str(&match (o.overlap, same_policy) {
        (Overlap::Same, true) => format!("destination `{ours}` is listed twice (as `{theirs}`, {of})"),
        (Overlap::Same, false) if ours == theirs => format!("destination `{ours}` is also written by {of}"),
        (Overlap::Same, false) => format!("destination `{ours}` is also written by {of} as `{theirs}`"),
        (Overlap::Maybe, _) => {
            format!("destination `{ours}` may be the same secret as `{theirs}` of {of}: {MAYBE_SAME}")
        }
    });
    Problem {
        location: o.policy.source.clone(),
        field: if same_policy { format!("destinations[{}]", o.index) } else { "destinations".into() },
        message,
    }
}
