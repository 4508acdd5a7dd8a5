//! Unit tests of the engine's pure decisions: who holds a lease that may be taken over, how
//! long an interrupted mint may still land, and what a failed promotion leads to.

use super::{AfterPromotion, after_failed_promotion, create_settle_wait, dead_local_holder, this_process};
use super::{Duration, Secret, Utc, journal};

/// Only a holder of this host, boot and PID namespace is judged by its PID here.
#[test]
fn a_holder_is_judged_dead_locally_only_in_the_same_host_boot_and_namespace() {
    let this = this_process();
    let parts: Vec<&str> = this.split(':').collect();
    assert_eq!(parts.len(), 4, "{this}");
    let (host, boot, namespace) = (parts[0], parts[2], parts[3]);
    // A PID that cannot exist (above the kernel's pid_max).
    let gone = 999_999_999u32;
    assert!(dead_local_holder(&format!("{host}:{gone}:{boot}:{namespace}:abcd"), &this));
    assert!(!dead_local_holder(&format!("{host}:{}:{boot}:{namespace}:abcd", std::process::id()), &this), "alive");
    assert!(!dead_local_holder(&format!("{host}:{gone}:{boot}:1:abcd"), &this), "another PID namespace");
    assert!(!dead_local_holder(&format!("{host}:{gone}:otherboot:{namespace}:abcd"), &this), "another boot");
    assert!(!dead_local_holder(&format!("elsewhere:{gone}:{boot}:{namespace}:abcd"), &this), "another host");
    assert!(!dead_local_holder(&format!("{host}:{gone}:abcd"), &this), "the older format waits for expiry");
}

/// An interrupted mint is looked up once no create of the interrupted run can still land:
/// at most one timeout from now, less when its last mint step is older than every attempt it
/// could have made, and not at all when it never tried to mint.
#[test]
fn an_interrupted_mint_is_looked_up_once_its_create_cannot_land() {
    let mut toktra = crate::toktra::Settings::new(
        "http://127.0.0.1:1".to_string(),
        crate::toktra::ManagementAuth::ApiKey(Secret::new("k")),
    );
    toktra.timeout = Duration::from_secs(30);
    toktra.retry.attempts = 2;
    toktra.retry.max_delay = Duration::from_secs(10);
    let now = Utc::now();
    let step = |name: &str, ago: i64| journal::Step {
        rotation_id: "r".into(),
        seq: 0,
        at: now - chrono::Duration::seconds(ago),
        step: name.into(),
        status: journal::StepStatus::Intent,
        detail: String::new(),
    };
    let wait = |steps: &[journal::Step]| create_settle_wait(steps, &toktra, now);
    assert_eq!(wait(&[]), Duration::ZERO);
    assert_eq!(wait(&[step("revoke-first", 0)]), Duration::ZERO, "never tried to mint");
    assert_eq!(wait(&[step("mint", 0)]), Duration::from_secs(30), "just sent: one timeout");
    assert_eq!(wait(&[step("mint", 70)]), Duration::from_secs(10), "2 × (30 s + 10 s) after the intent");
    assert_eq!(wait(&[step("mint", 100), step("mint", 75)]), Duration::from_secs(5), "the last mint step counts");
    assert_eq!(wait(&[step("mint", 600)]), Duration::ZERO, "long over");
}

/// The destinations' answers after a failed promotion, for AWS (`AWSCURRENT` moved but
/// `AWSPENDING` not cleared), Vault (data written, metadata refused) and files (renamed, the
/// directory fsync failed) alike: a destination serving the new credential forbids a rollback.
#[test]
fn a_destination_serving_the_new_credential_forbids_a_rollback() {
    use AfterPromotion::*;
    let table: &[(&[Option<bool>], bool, AfterPromotion)] = &[
        (&[Some(false)], false, RollBack),
        (&[Some(false), Some(false)], false, RollBack),
        (&[Some(false)], true, Forward),
        (&[Some(true)], false, Forward),
        (&[Some(false), Some(true)], false, Forward),
        (&[Some(true), Some(false)], false, Forward),
        (&[None], false, Forward),
        (&[Some(false), None], false, Forward),
    ];
    for (serving, transient, expected) in table {
        assert_eq!(after_failed_promotion(serving, *transient), *expected, "{serving:?} transient={transient}");
    }
}
