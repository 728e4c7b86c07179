//! The committed completions/ and man/ are exactly what the clap definition
//! generates, so they can never describe flags the binary does not have.
//!
//! To refresh them after changing the command line:
//!
//!     KVS_REGENERATE=1 cargo test --test shipped_files

mod common;

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn committed_completions_and_man_pages_match_the_binary() {
    let repo = Path::new(REPO);
    if std::env::var_os("KVS_REGENERATE").is_some() {
        kvs::commands::completions::write_all(repo).unwrap();
    }
    let generated = tempfile::tempdir().unwrap();
    kvs::commands::completions::write_all(generated.path()).unwrap();

    let mut compared = 0;
    for folder in ["completions", "man"] {
        for entry in std::fs::read_dir(generated.path().join(folder)).unwrap() {
            let entry = entry.unwrap();
            let name = Path::new(folder).join(entry.file_name());
            let committed = std::fs::read(repo.join(&name)).unwrap_or_default();
            let fresh = std::fs::read(entry.path()).unwrap();
            assert!(
                committed == fresh,
                "{} is missing or out of date; run: KVS_REGENERATE=1 cargo test --test shipped_files",
                name.display()
            );
            compared += 1;
        }
        // Nothing stale left behind either.
        for entry in std::fs::read_dir(repo.join(folder)).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                generated.path().join(folder).join(&name).exists(),
                "{folder}/{} is not generated any more; remove it",
                name.to_string_lossy()
            );
        }
    }
    assert_eq!(compared, 5 + 6, "five shells, six man pages");
}

#[test]
fn the_binary_prints_the_committed_completion_scripts() {
    for (shell, file) in [
        ("bash", "kvs.bash"),
        ("zsh", "_kvs"),
        ("fish", "kvs.fish"),
        ("elvish", "kvs.elv"),
        ("powershell", "_kvs.ps1"),
    ] {
        let output = Command::new(common::KVS)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success());
        let committed = std::fs::read(Path::new(REPO).join("completions").join(file)).unwrap();
        assert!(
            output.stdout == committed,
            "kvs completions {shell} differs from completions/{file}"
        );
    }
}
