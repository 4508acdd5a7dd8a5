//! `rotator demo`: the whole flow on a fresh machine with no account and no servers. It starts
//! the Toktra simulator in-process, writes example policies with `file` destinations into a
//! scratch directory, seeds one destination with a pre-existing ("legacy") API key to show
//! adoption, then rotates every policy through the same engine `rotator rotate` uses and shows
//! what happened: the new credentials work, the replaced ones are rejected, the journal's steps.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::Utc;

use crate::engine::{self, Engine, Status};
use crate::journal::Journal;
use crate::policy::{self, CredentialKind};
use crate::report::{self, Format};
use crate::secret::Secret;
use crate::sim;
use crate::store::{self, Record, Store};
use crate::toktra::{self, Probe};

const POLICIES: &str = r#"# Demo policies: written by `rotator demo` into its scratch directory.
name: ci-pipeline
description: Toktra access for the CI pipeline (a brand-new OAuth client)
labels: { team: platform }
credential: { kind: oauth_client, name: ci-pipeline, scopes: [usage:read] }
schedule: { every: 90d }
destinations:
  - file: { path: out/ci-pipeline.json }
revoke: { grace: 0s }
---
name: billing-export
description: API key of the billing export job; adopts the key it already uses
labels: { team: payments }
credential: { kind: api_key, name: billing-export }
schedule: { every: 30d, jitter: 1h }
destinations:
  - file: { path: out/billing-export.json }
revoke: { grace: 0s }
---
name: partner-sync
description: OAuth client with a grace period, so the old client stays valid for a while
labels: { team: partners }
credential: { kind: oauth_client, name: partner-sync }
schedule: { cron: "0 3 * * SUN", timezone: Europe/Berlin }
destinations:
  - file: { path: out/partner-sync.json }
revoke: { grace: 1h }
"#;

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let keep = dir.is_some();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "rotator-demo-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        ))
    });
    std::fs::create_dir_all(dir.join("policies")).with_context(|| format!("creating {}", dir.display()))?;
    let result = demo(&dir).await;
    if keep {
        // Absolute, so the commands work from anywhere.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        println!("\nThe demo's files are in {}. To look around (no simulator needed):", dir.display());
        let env = format!("ROTATOR_DATABASE_URL={}", dir.join("journal.db").display());
        let policies = dir.join("policies");
        println!("  {env} rotator --policies {} status", policies.display());
        println!("  {env} rotator --policies {} history --steps", policies.display());
        println!("  rotator validate {}", policies.display());
        println!("  cat {}", dir.join("policies/out/billing-export.json.previous").display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        println!("\nThe demo's scratch files were removed; `rotator demo --dir DIR` keeps them to look around.");
    }
    result
}

async fn demo(dir: &std::path::Path) -> anyhow::Result<()> {
    let admin = Secret::new(format!("tk_admin_{}", uuid::Uuid::new_v4().simple()));
    let simulator =
        sim::Simulator::start(0, sim::Config { admin_api_key: Some(admin.expose().to_string()), ..Default::default() })
            .await
            .context("starting the Toktra simulator")?;
    println!("rotator demo");
    println!("  Toktra simulator   {}", simulator.base_url());
    println!("  policies           {}", dir.join("policies").display());
    println!("  journal            {}", dir.join("journal.db").display());
    println!();

    let policy_file = dir.join("policies/demo.yaml");
    std::fs::write(&policy_file, POLICIES)?;
    let policies = policy::load_dir(&dir.join("policies")).map_err(|e| anyhow::anyhow!("{e}"))?;

    let toktra = Arc::new(toktra::Client::new(toktra::Settings::new(
        simulator.base_url(),
        toktra::ManagementAuth::ApiKey(admin),
    ))?);

    // Existing deployments: the billing export and the partner sync already use hand-made
    // credentials, which rotator adopts (and revokes, after the policy's grace).
    let legacy =
        toktra.create(CredentialKind::ApiKey, "billing-export-legacy", &[], "created by hand long ago").await?;
    let partner =
        toktra.create(CredentialKind::OauthClient, "partner-sync-legacy", &[], "created by hand long ago").await?;
    for (name, kind, minted) in
        [("billing-export", CredentialKind::ApiKey, &legacy), ("partner-sync", CredentialKind::OauthClient, &partner)]
    {
        let policy = policies.iter().find(|p| p.name == name).context("demo policy missing")?;
        let record = Record {
            kind,
            id: minted.id.clone(),
            secret: minted.secret.clone(),
            token_url: None,
            rotated_at: None,
            rotation_id: None,
        };
        if let policy::Destination::File(f) = &policy.destinations[0] {
            std::fs::create_dir_all(f.path.parent().unwrap_or(dir))?;
            std::fs::write(&f.path, record.to_json_secret().expose())?;
        }
    }
    println!("Seeded out/billing-export.json with the hand-made API key {} and out/partner-sync.json", legacy.id);
    println!(
        "with the hand-made OAuth client {}; rotator adopts both and revokes them after their grace.\n",
        partner.id
    );

    let journal = Journal::open(&dir.join("journal.db").display().to_string()).await?;
    let engine = Engine {
        toktra: toktra.clone(),
        journal: journal.clone(),
        clients: Arc::new(store::Clients { aws: None, vault: None }),
        options: engine::Options::default(),
        stop: None,
    };
    let selected: Vec<&policy::Policy> = policies.iter().collect();
    let request = engine::Request { reason: Some("demo".into()), ..Default::default() };
    println!("Rotating {} policies: mint -> stage -> verify -> promote -> revoke old\n", selected.len());
    let work: Vec<_> = selected.iter().map(|p| (*p, request.clone())).collect();
    let outcomes = engine.rotate_many(&work, 4).await;
    report::print_outcomes(&outcomes, Format::Text);

    println!("\nChecking the result against the simulator:");
    for policy in &policies {
        let destination = store::Handle::new(&policy.destinations[0], policy.credential.kind, &engine.clients)?;
        let Some(current) = destination.current().await? else { bail!("{}: destination is empty", policy.name) };
        let verdict = toktra.probe(current.kind, &current.id, &current.secret).await?;
        println!(
            "  {:<16} current {:<26} {}",
            policy.name,
            current.id,
            if verdict == Probe::Accepted { "authenticates" } else { "REJECTED" }
        );
    }
    let legacy_now = toktra.probe(CredentialKind::ApiKey, &legacy.id, &legacy.secret).await?;
    println!(
        "  old key {} (billing-export, grace 0s) is now {}",
        legacy.id,
        if legacy_now == Probe::Rejected { "rejected (401)" } else { "STILL ACCEPTED" }
    );
    let partner_now = toktra.probe(CredentialKind::OauthClient, &partner.id, &partner.secret).await?;
    println!(
        "  old client {} (partner-sync, grace 1h) still {}",
        partner.id,
        if partner_now == Probe::Accepted { "authenticates, as its grace asks" } else { "IS REJECTED" }
    );

    println!("\nEvery credential the simulator has seen:");
    println!("  {:<26} {:<13} {:<9} NAME", "ID", "KIND", "STATE");
    for c in simulator.credentials().iter().filter(|c| !c.admin) {
        println!("  {:<26} {:<13} {:<9} {}", c.id, c.kind, c.state, c.name);
    }

    if let Some((_, Ok(list))) = outcomes.iter().find(|(p, _)| p == "billing-export")
        && let Some(outcome) = list.last()
    {
        println!("\nJournal steps of rotation {} (billing-export):", outcome.rotation_id);
        for step in journal.steps(&outcome.rotation_id).await? {
            println!("  {}  {:<8} {:<7} {}", step.at.format("%H:%M:%S%.3f"), step.step, step.status, step.detail);
        }
    }
    journal.close().await;
    simulator.shutdown().await;

    let failed = outcomes.iter().any(|(_, r)| !matches!(r, Ok(list) if list.last().is_some_and(|o| matches!(o.status, Status::Completed | Status::AwaitingRevocation))));
    if failed || legacy_now != Probe::Rejected || partner_now != Probe::Accepted {
        bail!("the demo's rotation did not complete");
    }
    println!(
        "\nDone at {}. partner-sync keeps its old client for its 1h grace: against a real Toktra, the next \
         `rotator rotate` (or `rotator serve`) after the grace revokes it.",
        Utc::now().format("%H:%M:%S UTC")
    );
    Ok(())
}
