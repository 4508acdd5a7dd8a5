//! `rotator serve`: checks the API token and the policy set, builds the service
//! (`service::Service::build`), binds the listen address and runs the service until a stop
//! signal (`Service::run`).

use super::open::load_policies;
use super::{Ctx, Failure, ServeArgs};
use crate::service::{Access, Service};

pub(super) async fn serve(ctx: &Ctx, args: ServeArgs) -> Result<(), Failure> {
    let config = ctx.config()?;
    let listen = args.listen.unwrap_or(config.listen);
    let access = match (config.api_token()?, args.insecure_no_auth) {
        (Some(token), _) => Access::Token(token),
        (None, true) if listen.ip().is_loopback() => {
            tracing::warn!(%listen, "serving the API WITHOUT authentication (--insecure-no-auth, loopback only)");
            Access::Open
        }
        (None, true) => {
            return Err(Failure::Invalid(format!(
                "--insecure-no-auth is only allowed on a loopback address, not {listen}"
            )));
        }
        (None, false) => {
            return Err(Failure::Invalid(
                "no API token: set ROTATOR_API_TOKEN or `api_token_file` in the configuration (or --insecure-no-auth on loopback)".into(),
            ));
        }
    };
    let policies = load_policies(&ctx.policies)?;
    let service = Service::build(&config, ctx.policies.clone(), policies, access).await?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| Failure::Invalid(format!("listen {listen}: {e}")))?;
    Ok(service.run(listener, crate::telemetry::shutdown_signal()).await?)
}
