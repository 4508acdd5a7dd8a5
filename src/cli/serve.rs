//! `rotator serve`: checks the API token and the policy set, binds the listen address, builds
//! the service (`service::Service::build`) and runs it on that listener until a stop signal
//! (`Service::run`).

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
    // Bound before building, so an address that cannot be served is refused before the journal
    // is created (the port is held, unanswered, while the service is built).
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| Failure::Invalid(format!("listen {listen}: {e}")))?;
    let service = Service::build(&config, ctx.policies.clone(), policies, access).await?;
    Ok(service.run(listener, crate::telemetry::shutdown_signal()).await?)
}
