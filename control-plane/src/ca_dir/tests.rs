use std::time::Duration;

use weft_certs::{CertificateAuthority, TrustDomain};

use super::*;

fn ca_in(parent: &Path, name: &str, td: &str) -> PathBuf {
    let dir = parent.join(name);
    let td = TrustDomain::parse(td).unwrap();
    CertificateAuthority::generate_root(&td, Duration::from_secs(3600))
        .unwrap()
        .write_to(&dir)
        .unwrap();
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_switch_finish_serve_what_the_table_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ca_in(tmp.path(), "ca", "td.example");
    let new = ca_in(tmp.path(), "new", "td.example");
    let before = load(&dir, None).unwrap();
    assert_eq!(before.step, None);
    assert_eq!(before.trust.roots().len(), 1);
    let old_id = before.signing.key_id().to_vec();

    let state = prepare(&dir, &new, None).unwrap();
    assert_eq!(state.step, Step::Prepared);
    let prepared = load(&dir, None).unwrap();
    assert_eq!(prepared.step, Some(Step::Prepared));
    assert_eq!(
        prepared.signing.key_id(),
        old_id.as_slice(),
        "old still signs"
    );
    assert_eq!(prepared.trust.roots().len(), 2, "both roots trusted");
    let new_id = prepared.other.as_ref().unwrap().key_id().to_vec();
    assert_eq!(prepared.role_of(Some(&new_id)), "next");
    assert_eq!(prepared.role_of(Some(&old_id)), "current");
    assert_eq!(prepared.renew_within, None);
    assert_ne!(prepared.digest, before.digest);
    // ca.crt itself holds both roots now (what new workloads should be given).
    assert_eq!(load_plain(&dir, None).unwrap().bundle().roots().len(), 2);

    switch(&dir, Duration::from_secs(7)).unwrap();
    let switched = load(&dir, None).unwrap();
    assert_eq!(switched.signing.key_id(), new_id.as_slice(), "new signs");
    assert_eq!(switched.trust.roots().len(), 2);
    assert_eq!(switched.role_of(Some(&old_id)), "previous");
    assert_eq!(switched.role_of(Some(b"x")), "unknown");
    assert_eq!(switched.renew_within, Some(Duration::from_secs(7)));

    finish(&dir).unwrap();
    let done = load(&dir, None).unwrap();
    assert_eq!(done.step, None);
    assert_eq!(done.signing.key_id(), new_id.as_slice());
    assert_eq!(done.trust.roots().len(), 1, "the old root left");
    assert_eq!(names(&dir), ["ca.crt", "tls.crt", "tls.key"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn steps_out_of_order_are_refused_by_name_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ca_in(tmp.path(), "ca", "td.example");
    let new = ca_in(tmp.path(), "new", "td.example");
    let other = ca_in(tmp.path(), "other", "td.example");
    let foreign = ca_in(tmp.path(), "foreign", "elsewhere.example");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let d0 = digest(&dir).unwrap();

    let e = switch(&dir, DEFAULT_RENEW_WITHIN).unwrap_err().to_string();
    assert!(e.contains("no rotation is prepared"), "{e}");
    let e = finish(&dir).unwrap_err().to_string();
    assert!(e.contains("nothing to finish"), "{e}");
    let e = prepare(&dir, &foreign, None).unwrap_err().to_string();
    assert!(
        e.contains("elsewhere.example") && e.contains("td.example"),
        "{e}"
    );
    let e = prepare(&dir, &empty, None).unwrap_err().to_string();
    assert!(
        e.contains("not a usable CA") && e.contains("tls.crt"),
        "{e}"
    );
    let e = prepare(&dir, &dir, None).unwrap_err().to_string();
    assert!(e.contains("already signs with"), "{e}");
    assert_eq!(digest(&dir).unwrap(), d0, "refusals write nothing");

    prepare(&dir, &new, None).unwrap();
    let d1 = digest(&dir).unwrap();
    // The same new CA again: nothing to do; another one: refused.
    prepare(&dir, &new, None).unwrap();
    assert_eq!(digest(&dir).unwrap(), d1);
    let e = prepare(&dir, &other, None).unwrap_err().to_string();
    assert!(e.contains("already prepared"), "{e}");
    let e = finish(&dir).unwrap_err().to_string();
    assert!(e.contains("only prepared"), "{e}");
    let e = switch(&dir, Duration::ZERO).unwrap_err().to_string();
    assert!(e.contains("above zero"), "{e}");
    assert_eq!(digest(&dir).unwrap(), d1);

    switch(&dir, DEFAULT_RENEW_WITHIN).unwrap();
    let e = switch(&dir, DEFAULT_RENEW_WITHIN).unwrap_err().to_string();
    assert!(e.contains("already switched"), "{e}");
    let e = prepare(&dir, &other, None).unwrap_err().to_string();
    assert!(e.contains("already switched"), "{e}");
}

#[test]
fn an_interrupted_finish_is_served_as_finished_and_completes_when_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ca_in(tmp.path(), "ca", "td.example");
    let new = ca_in(tmp.path(), "new", "td.example");
    prepare(&dir, &new, None).unwrap();
    switch(&dir, DEFAULT_RENEW_WITHIN).unwrap();
    let new_id = load(&dir, None).unwrap().signing.key_id().to_vec();
    // Committed, then stopped before any clean-up, with tls.key already replaced (tls.crt
    // not): the control plane reads new.* only.
    let mut state = read_state(&dir).unwrap().unwrap();
    state.step = Step::Finished;
    write_state(&dir, &state).unwrap();
    let key = std::fs::read(dir.join(NEW_KEY_FILE)).unwrap();
    replace_file(&dir, KEY_FILE, &key, 0o600).unwrap();
    let mid = load(&dir, None).unwrap();
    assert_eq!(mid.signing.key_id(), new_id.as_slice());
    assert_eq!(mid.trust.roots().len(), 1);
    finish(&dir).unwrap();
    assert_eq!(names(&dir), ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(
        load(&dir, None).unwrap().signing.key_id(),
        new_id.as_slice()
    );
}

#[test]
fn files_changed_behind_the_rotation_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ca_in(tmp.path(), "ca", "td.example");
    let new = ca_in(tmp.path(), "new", "td.example");
    let other = ca_in(tmp.path(), "other", "td.example");
    prepare(&dir, &new, None).unwrap();
    for f in [CERT_FILE, KEY_FILE, BUNDLE_FILE] {
        std::fs::copy(other.join(f), dir.join(format!("new.{f}"))).unwrap();
    }
    let e = load(&dir, None).unwrap_err().to_string();
    assert!(e.contains("new.tls.crt is not the new CA"), "{e}");
    std::fs::write(dir.join(STATE_FILE), "{\"step\":\"sideways\"}").unwrap();
    let e = load(&dir, None).unwrap_err().to_string();
    assert!(e.contains("rotation.json"), "{e}");
}
