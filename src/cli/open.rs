//! What commands open before they act: the policy set (validated as a whole; exit 2 with every
//! problem), the check of the AWS default region against it, the journal (read-only, and never
//! created, for commands that only read), and the connections of a policy set: the Toktra client
//! and the destination clients, built by `Connections::for_policies` and nowhere else, and the
//! engine over them (`Connections::engine`).

use std::sync::Arc;

use super::Failure;
use crate::config::Config;
use crate::engine::{self, Engine};
use crate::journal::Journal;
use crate::policy::{self, Destination, Policy};

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

/// Which services a policy set's destination clients reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Those the policies' destinations are in.
    Policies,
    /// Those, and every one the configuration names, so a reload may add policies using them
    /// (`serve`).
    Configured,
}

/// The Toktra client and the destination clients for a policy set: what a command that calls
/// Toktra or a destination talks to. Built by [`Connections::for_policies`] and nowhere else;
/// [`Connections::engine`] is the one place an [`Engine`] is made from the configuration.
pub struct Connections {
    pub toktra: crate::toktra::Client,
    pub stores: crate::store::Clients,
}

impl Connections {
    /// Connects to what `policies` need, as `reach` says (AWS and Vault are only configured when
    /// reached, so a file-only setup never touches the AWS credential chain). A configuration
    /// that cannot give them is invalid input (exit 2).
    pub async fn for_policies(config: &Config, policies: &[&Policy], reach: Reach) -> Result<Connections, Failure> {
        let configured = reach == Reach::Configured;
        let destinations = || policies.iter().flat_map(|p| p.destinations.iter());
        let need_aws = (configured && (config.aws_region.is_some() || config.aws_endpoint.is_some()))
            || destinations().any(|d| matches!(d, Destination::AwsSecretsManager(_)));
        let need_vault =
            (configured && config.vault_addr.is_some()) || destinations().any(|d| matches!(d, Destination::Vault(_)));
        let toktra = config.toktra()?;
        let stores = config.clients(need_aws, need_vault).await?;
        Ok(Connections { toktra, stores })
    }

    /// The engine over these connections and `journal`, with the options the configuration sets.
    pub fn engine(self, config: &Config, journal: Journal) -> Engine {
        Engine {
            toktra: Arc::new(self.toktra),
            journal,
            clients: Arc::new(self.stores),
            options: engine::Options {
                rotation_budget: config.rotation_budget,
                lease_ttl: config.lease_ttl,
                ..Default::default()
            },
            stop: None,
        }
    }
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
