//! The connections of a policy set: the Toktra client and the destination clients, built by
//! [`Connections::for_policies`] and nowhere else, and the engine over them
//! ([`Connections::engine`]), the one place an [`Engine`] is made from the configuration. The
//! commands that call Toktra or a destination and the service all connect here.

use std::sync::Arc;

use crate::config::{self, Config};
use crate::engine::{self, Engine};
use crate::journal::Journal;
use crate::policy::{Destination, Policy};

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
/// Toktra or a destination talks to.
pub struct Connections {
    pub toktra: crate::toktra::Client,
    pub stores: crate::store::Clients,
}

impl Connections {
    /// Connects to what `policies` need, as `reach` says (AWS and Vault are only configured when
    /// reached, so a file-only setup never touches the AWS credential chain). A configuration
    /// that cannot give them is invalid.
    pub async fn for_policies(
        config: &Config,
        policies: &[&Policy],
        reach: Reach,
    ) -> Result<Connections, config::Error> {
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
