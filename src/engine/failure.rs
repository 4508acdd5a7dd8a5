//! Why a step failed, typed: the failure of the part that failed is kept whole, and whether to
//! roll back, to retry, and where it came from are its methods.

use super::*;

/// Why a step failed. The failure of the part that failed is kept whole, so whether to retry,
/// whether to roll back and where the failure came from are read from its type, never from
/// its text.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error(transparent)]
    Toktra(#[from] toktra::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// A check of the rotation itself failed: Toktra refuses the new credential, a read-back
    /// does not match, an old credential still works after its revocation, a destination
    /// changed by hand.
    #[error("{0}")]
    Check(String),
    /// A promotion failed after it may have changed what consumers read; every destination was
    /// read back and [`after_failed_promotion`] decided.
    #[error("{error}{}", if *partly_current { "; the new credential is current in part, so the rotation only goes forward" } else { "" })]
    Promotion { error: Box<StepError>, roll_back: bool, partly_current: bool },
    /// A `--revoke-first` rotation ran out of time minting again: it never rolls back.
    #[error("{0}")]
    Outage(String),
    /// Several old credentials could not be revoked.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<StepError>),
}

impl StepError {
    /// Whether the failed step rolls the rotation back: before promotion it does, unless the
    /// failure says otherwise (a promotion read back, an outage that only goes forward).
    pub(super) fn rolls_back(&self, phase: Phase) -> bool {
        match self {
            StepError::Promotion { roll_back, .. } => *roll_back,
            StepError::Outage(_) => false,
            _ => matches!(phase, Phase::Started | Phase::Minted | Phase::Staged),
        }
    }

    /// Whether the failure may pass by itself (a destination or Toktra briefly unreachable).
    pub(super) fn is_transient(&self) -> bool {
        match self {
            StepError::Toktra(e) => e.is_transient(),
            StepError::Store(e) => e.is_transient(),
            StepError::Promotion { error, .. } => error.is_transient(),
            StepError::Several(errors) => errors.iter().all(StepError::is_transient),
            StepError::Journal(_) | StepError::Check(_) | StepError::Outage(_) => false,
        }
    }

    /// The part the failure came from.
    pub(super) fn failed_in(&self) -> FailedIn {
        match self {
            StepError::Toktra(_) => FailedIn::Toktra,
            StepError::Store(e) => FailedIn::Destination(e.store),
            StepError::Journal(_) => FailedIn::Journal,
            StepError::Check(_) | StepError::Outage(_) => FailedIn::Check,
            StepError::Promotion { error, .. } => error.failed_in(),
            StepError::Several(errors) => errors.first().map_or(FailedIn::Check, StepError::failed_in),
        }
    }
}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError::Check(message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> StepError {
        StepError::Check(message.into())
    }
}
