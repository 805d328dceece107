//! Process set-up the Weft binaries share (not wire types: here because both the proxy and
//! the control plane depend on this crate and on nothing else in common).

/// `WEFT_EXIT_WITH_PARENT=<pid>` (set by `weftctl demo` on its children): SIGTERM this process
/// when its parent dies, even by SIGKILL, so nothing is left running. The signal follows the
/// parent's spawning thread; the demo spawns from its main thread. If the parent is already
/// gone (reparented before the request took effect), exit now.
pub fn exit_with_parent() {
    let Some(expected) = std::env::var("WEFT_EXIT_WITH_PARENT")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    if set_parent_process_death_signal(Some(Signal::TERM)).is_ok()
        && getppid().map(|p| p.as_raw_pid()) != Some(expected)
    {
        std::process::exit(0);
    }
}

/// Raises the open-files soft limit to the hard limit (a busy proxy holds a socket per
/// connection; 1,024, a common default, caps it). `Ok(Some((from, to)))` when it was raised,
/// `Ok(None)` when it already was at the hard limit.
pub fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            setrlimit(Resource::Nofile, raised)?;
            Ok(Some((soft, hard)))
        }
        _ => Ok(None),
    }
}

/// [`raise_open_files_limit`], said in the log (what both binaries do at start).
pub fn raise_open_files_limit_and_log() {
    match raise_open_files_limit() {
        Ok(Some((from, to))) => {
            tracing::info!(from, to, "open files soft limit raised to the hard limit");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "open files soft limit not raised"),
    }
}
