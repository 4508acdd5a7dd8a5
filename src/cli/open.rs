//! What commands open before they act: the policy set (validated as a whole; exit 2 with every
//! problem), the check of the AWS default region against it, and the journal (read-only, and
//! never created, for commands that only read). Their connections come from `connect`.

use super::Failure;
use crate::config::Config;
use crate::journal::Journal;
use crate::policy::{self, Policy};

/// Loads the policy set or fails with every problem (exit 2).
pub fn load_policies(dir: &std::path::Path) -> Result<Vec<Policy>, Failure> {
    if !dir.is_dir() {
        return Err(Failure::Invalid(format!("{}: policy directory not found (set --policies)", dir.display())));
    }
    Ok(policy::load_dir(dir)?)
}

/// Refuses a policy set in which the default AWS region makes two destinations one secret (a
/// destination without `region` is in it, and only the AWS configuration knows it, so
/// `validate` cannot decide). Called by `plan`, `rotate` and `serve` before anything is opened,
/// minted or written; reads the AWS configuration only when some default region would matter.
pub(super) async fn check_default_region(config: &Config, policies: &[Policy]) -> Result<(), Failure> {
    if !policy::depends_on_default_region(policies) {
        return Ok(());
    }
    let clients = config.clients(true, false).await?;
    let region = clients.aws.as_ref().and_then(|sdk| sdk.region()).map(|r| r.to_string());
    Ok(policy::check_default_region(policies, region.as_deref())?)
}

/// The journal for commands that write it (created, for SQLite, and migrated when needed).
pub(super) async fn open_journal(config: &Config) -> Result<Journal, Failure> {
    Journal::open(&config.database_url).await.map_err(|e| Failure::Other(e.into()))
}

/// The journal for commands that only read it: opened read-only (nothing is created or
/// migrated), named on stderr, and an error when it does not exist.
pub(super) async fn read_journal(config: &Config) -> Result<Journal, Failure> {
    match Journal::open_read_only(&config.database_url).await {
        Ok(Some(journal)) => {
            eprintln!("journal: {}", journal.url());
            Ok(journal)
        }
        Ok(None) => Err(Failure::Invalid(format!(
            "no journal at {}: nothing has been recorded with this configuration yet \
             (the journal is ROTATOR_DATABASE_URL or `database_url` in the configuration)",
            crate::journal::display_url(&config.database_url)
        ))),
        Err(e) => Err(Failure::Other(e.into())),
    }
}

/// Picks the policies named, or carrying every label of `selector`, or all. Unknown names, and a
/// selector that matches nothing, are usage errors.
pub(super) fn select<'a>(
    policies: &'a [Policy],
    names: &[String],
    all: bool,
    selector: &[(String, String)],
) -> Result<Vec<&'a Policy>, Failure> {
    let mut selected: Vec<&Policy> = Vec::new();
    for name in names {
        match policies.iter().find(|p| &p.name == name) {
            Some(p) if !selected.iter().any(|s| s.name == p.name) => selected.push(p),
            Some(_) => {}
            None => {
                let known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                return Err(Failure::Invalid(format!("unknown policy `{name}`; known: {}", known.join(", "))));
            }
        }
    }
    if names.is_empty() && (all || !selector.is_empty()) {
        selected = policies.iter().collect();
    }
    selected.retain(|p| p.matches(selector));
    if selected.is_empty() && !selector.is_empty() {
        let wanted: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(Failure::Invalid(format!("no policy matches --selector {}", wanted.join(","))));
    }
    Ok(selected)
}
