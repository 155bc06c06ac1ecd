//! Telling systemd how the service is doing (sd_notify), when NOTIFY_SOCKET is set: READY once
//! every socket is bound, RELOADING around a key reload, STOPPING at shutdown, and a STATUS line.

use sd_notify::NotifyState;

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

pub(crate) fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// Raises the soft limit on open files to the hard limit (a common default soft limit, 1024, is
/// below what the default bounds can use), and warns when the bounds can still exceed it.
pub(crate) fn raise_open_files_limit(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum)
        && current < max
    {
        limit.current = Some(max);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(from = current, to = max, "raised the open files limit"),
            Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(current) = now
        && needed > current
    {
        tracing::warn!(
            limit = current,
            needed,
            "the open files limit is below what the configured bounds can use: lower --max-handshakes or --max-connections, or raise the limit (LimitNOFILE= under systemd)"
        );
    }
}
