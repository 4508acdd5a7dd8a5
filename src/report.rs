//! How rotation outcomes are shown: the summary table `rotate` and `demo` print on stdout (work an
//! earlier run left apart from what this run was asked to do), the same as JSON, and the small
//! helpers every human-readable listing uses (times to the second, control characters escaped).

use clap::ValueEnum;

use crate::engine::{self, Outcome, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn print_outcomes(outcomes: &[(String, Result<Vec<Outcome>, engine::Error>)], format: Format) {
    match format {
        Format::Json => {
            let rows: Vec<_> = outcomes
                .iter()
                .map(|(policy, result)| match result {
                    Ok(list) => serde_json::json!({ "policy": policy, "rotations": list }),
                    Err(e) => serde_json::json!({ "policy": policy, "error": e.to_string() }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        }
        Format::Text => {
            // Work an earlier run left (crashes, revocations after a grace) is shown apart from
            // what this run was asked to do.
            let resumed: Vec<(&String, Result<Vec<&Outcome>, &engine::Error>)> = outcomes
                .iter()
                .filter_map(|(p, r)| match r {
                    Ok(list) => {
                        let l: Vec<&Outcome> = list.iter().filter(|o| o.resumed).collect();
                        (!l.is_empty()).then_some((p, Ok(l)))
                    }
                    Err(_) => None,
                })
                .collect();
            let asked: Vec<(&String, Result<Vec<&Outcome>, &engine::Error>)> = outcomes
                .iter()
                .filter_map(|(p, r)| match r {
                    Ok(list) => {
                        let l: Vec<&Outcome> = list.iter().filter(|o| !o.resumed).collect();
                        (!l.is_empty()).then_some((p, Ok(l)))
                    }
                    Err(e) => Some((p, Err(e))),
                })
                .collect();
            if !resumed.is_empty() {
                println!("Work left by earlier runs:");
                print_table(&resumed);
                println!();
            }
            if !asked.is_empty() || resumed.is_empty() {
                print_table(&asked);
            }
        }
    }
}

/// Text for a terminal: control characters (a newline or an escape sequence in a reason or a
/// vendor's message) shown escaped, so output cannot be forged or garbled.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// One time format for people: RFC 3339 to the second, UTC.
pub fn when(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn print_table(outcomes: &[(&String, Result<Vec<&Outcome>, &engine::Error>)]) {
    println!(
        "{:<24} {:<20} {:<26} {:<26} {:>7}  DESTINATIONS",
        "POLICY", "STATUS", "NEW CREDENTIAL", "REVOKED", "SECONDS"
    );
    for (policy, result) in outcomes {
        match result {
            Ok(list) => {
                for o in list {
                    let status = match (o.status, o.resumed) {
                        (Status::Completed, false) => "completed",
                        (Status::Completed, true) => "completed (resumed)",
                        (Status::AwaitingRevocation, _) => "awaiting revocation",
                        (Status::Failed, false) => "failed, rolled back",
                        (Status::Failed, true) => "rolled back (resumed)",
                        (Status::Incomplete, _) => "incomplete",
                    };
                    let revoked = if o.revoked.is_empty() { "-".to_string() } else { o.revoked.join(",") };
                    println!(
                        "{:<24} {:<20} {:<26} {:<26} {:>7.2}  {}",
                        o.policy,
                        status,
                        o.new_credential.as_deref().unwrap_or("-"),
                        revoked,
                        o.seconds,
                        o.destinations.join(", ")
                    );
                    println!("{:<24}   rotation {}", "", o.rotation_id);
                    if let Some(until) = o.revoke_after.filter(|_| o.status == Status::AwaitingRevocation) {
                        println!(
                            "{:<24}   old credential(s) {} will be revoked after {}",
                            "",
                            o.old_credentials.join(","),
                            when(until)
                        );
                    }
                    if let Some(waiting) = &o.waiting {
                        println!("{:<24}   waiting: {}", "", printable(waiting));
                    }
                    if let Some(error) = &o.error {
                        println!("{:<24}   error: {}", "", printable(error));
                    }
                    if let Some(c) = &o.compromise {
                        println!("{:<24}   compromise: exposed [{}]", "", c.exposed.join(", "));
                        for holder in &c.held_by {
                            println!("{:<24}     held by {holder}", "");
                        }
                        match (c.revoked_at, c.seconds_to_containment) {
                            (Some(at), Some(seconds)) => println!(
                                "{:<24}     revoked at {} ({seconds:.2}s after the rotation started){}",
                                "",
                                when(at),
                                if c.outage_accepted {
                                    "; consumers had no valid credential until promotion"
                                } else {
                                    ""
                                }
                            ),
                            _ => println!("{:<24}     NOT CONTAINED YET: the exposed credentials are still valid", ""),
                        }
                    }
                }
            }
            Err(e) => println!("{policy:<24} {:<20} {e}", "error"),
        }
    }
}
