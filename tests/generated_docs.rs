//! man/ and completions/ are generated from the clap definition and committed. This test
//! regenerates them in memory and fails when the committed files are stale.
//!
//! To update them after changing the CLI: `KEEPSAKE_BLESS=1 cargo test --test generated_docs`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use keepsake::cli::Cli;

/// Every generated file: its path relative to the repository and its content.
fn generate() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .date("")
        .render(&mut page)
        .expect("render keepsake.8");
    files.push((PathBuf::from("man/keepsake.8"), page));
    add_pages(&cmd, "keepsake", "keepsake", &mut files);
    for (shell, file) in [
        (Shell::Bash, "keepsake.bash"),
        (Shell::Zsh, "_keepsake"),
        (Shell::Fish, "keepsake.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "keepsake", &mut out);
        files.push((PathBuf::from("completions").join(file), out));
    }
    files
}

/// One page per subcommand, nested ones included (keepsake-recovery-key-add.8).
fn add_pages(cmd: &clap::Command, prefix: &str, bin: &str, files: &mut Vec<(PathBuf, Vec<u8>)>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}-{}", sub.get_name());
        let bin_name = format!("{bin} {}", sub.get_name());
        // A top-level command's arguments and nested commands are added when it is built
        // (`Command::defer`): build it alone, as the page of a command always was, without
        // the globals its parent would give it. Its nested commands are then built as its
        // children, which names them after it: the page's own name is set again.
        let mut sub = sub.clone();
        sub.build();
        let page_cmd = sub
            .clone()
            .name(&*Box::leak(name.clone().into_boxed_str()))
            .display_name(name.clone())
            .bin_name(bin_name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(page_cmd)
            .section("8")
            .date("")
            .render(&mut page)
            .expect("render a subcommand page");
        files.push((PathBuf::from(format!("man/{name}.8")), page));
        add_pages(&sub, &name, &bin_name, files);
    }
}

#[test]
fn man_pages_and_completions_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("KEEPSAKE_BLESS").is_some();
    let mut stale = Vec::new();
    for (rel, content) in generate() {
        let path = root.join(&rel);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files: {}; run KEEPSAKE_BLESS=1 cargo test --test generated_docs",
        stale.join(", ")
    );
}

/// A page the definition no longer produces would be neither checked nor removed by the test
/// above: every committed page must be generated.
#[test]
fn every_committed_man_page_is_generated() {
    let generated: Vec<PathBuf> = generate().into_iter().map(|(rel, _)| rel).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut orphans: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| PathBuf::from("man").join(entry.unwrap().file_name()))
        .filter(|rel| !generated.contains(rel))
        .map(|rel| rel.display().to_string())
        .collect();
    orphans.sort();
    assert!(
        orphans.is_empty(),
        "committed but not generated: {}",
        orphans.join(", ")
    );
}

#[test]
fn man_page_documents_every_exit_code() {
    let (_, page) = generate().into_iter().next().unwrap();
    let page = String::from_utf8(page).unwrap();
    for code in 0..=9 {
        assert!(
            page.contains(&format!("  {code}  ")),
            "exit code {code} missing from keepsake.8"
        );
    }
}
