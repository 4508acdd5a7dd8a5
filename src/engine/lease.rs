//! The policy's lease: taken (or taken over from a process of this host that is gone), kept by a
//! heartbeat that stops the work a quarter of the lease before it could expire, and released.

use super::*;

impl Engine {
    pub(crate) async fn acquire(&self, policy: &str) -> Result<Leased, Error> {
        let holder = format!("{}:{}", self.options.holder, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ttl = self.options.lease_ttl;
        let lease = match self.journal.acquire(policy, &holder, ttl).await? {
            Ok(lease) => lease,
            Err(current) => {
                // A process of this host that is gone (killed, crashed) cannot be working on the
                // policy: take its lease now rather than after it expires.
                let dead = dead_local_holder(&current.holder, &self.options.holder);
                match dead {
                    true => match self.journal.take_over(policy, &current.holder, &holder, ttl).await? {
                        Some(lease) => {
                            tracing::warn!(policy, previous = %current.holder, "took over the lease of a process that no longer exists");
                            lease
                        }
                        None => {
                            return Err(Error::Busy {
                                policy: policy.into(),
                                holder: current.holder,
                                until: current.expires_at,
                            });
                        }
                    },
                    false => {
                        return Err(Error::Busy {
                            policy: policy.into(),
                            holder: current.holder,
                            until: current.expires_at,
                        });
                    }
                }
            }
        };
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let journal = self.journal.clone();
        let beat = lease.clone();
        let heartbeat = tokio::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(ttl / 4).await;
                match journal.renew(&beat, ttl).await {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => break,
                    // The journal may be briefly unreachable; the lease holds until it expires, and
                    // the work stops a quarter of it before then, so no step outlives the lease.
                    Err(e) if last_ok.elapsed() < ttl - ttl / 4 => {
                        tracing::warn!(error = %e, "could not renew the lease; retrying")
                    }
                    Err(_) => break,
                }
            }
            tracing::error!(policy = %beat.policy, "lost the policy's lease; stopping its rotation");
            let _ = lost_tx.send(true);
        });
        Ok(Leased { lease, lost, heartbeat })
    }

    pub(crate) async fn release(&self, held: &Leased) {
        held.heartbeat.abort();
        if let Err(e) = self.journal.release(&held.lease).await {
            tracing::warn!(policy = %held.lease.policy, error = %e, "could not release the lease; it expires by itself");
        }
    }
}
