//! `docs/tools.md` is generated from the tool registry by `exai-worker tools doc`: this suite
//! runs that command (the real binary) and fails, naming the command that fixes it, when the
//! page differs; and the pages that point readers to it (README, protocol.md) do.

use std::path::PathBuf;
use std::process::Stdio;

use exai_shared::tools;
use exai_tests::bin_path;

/// The page, from the root of the repository.
const PAGE: &str = "docs/tools.md";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_owned()
}

/// `Err` naming the first line where `committed` differs from `generated`, and the command that
/// regenerates the page.
fn check_fresh(committed: &str, generated: &str) -> Result<(), String> {
    if committed == generated {
        return Ok(());
    }
    let (line, want, have) = generated
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(committed.lines().map(Some).chain(std::iter::repeat(None)))
        .take_while(|pair| *pair != (None, None))
        .enumerate()
        .find(|(_, (g, c))| g != c)
        .map(|(i, (g, c))| (i + 1, g.unwrap_or("<end>"), c.unwrap_or("<end>")))
        .unwrap_or((0, "<a difference in line endings>", ""));
    Err(format!(
        "{PAGE} is stale (line {line}: the registry gives {want:?}, the page has {have:?}); \
         regenerate it with `cargo run -p exai-worker -- tools doc > {PAGE}`"
    ))
}

#[tokio::test]
async fn docs_tools_md_is_what_the_generator_prints() {
    let out = tokio::process::Command::new(bin_path("exai-worker"))
        .args(["tools", "doc"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run exai-worker tools doc");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "no log line: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(
        generated,
        tools::doc::markdown(tools::all()),
        "the command prints the library's page"
    );
    let committed = std::fs::read_to_string(repo_root().join(PAGE)).expect("docs/tools.md");
    if let Err(e) = check_fresh(&committed, &generated) {
        panic!("{e}");
    }
    for tool in tools::all() {
        assert!(committed.contains(&format!("## `{}`", tool.name)));
    }
}

#[test]
fn a_stale_page_fails_with_the_command_that_fixes_it() {
    let page = tools::doc::markdown(tools::all());
    assert_eq!(check_fresh(&page, &page), Ok(()));
    let edited = page.replacen("Absolute paths", "Paths", 1);
    let err = check_fresh(&edited, &page).unwrap_err();
    assert!(err.contains("tools doc > docs/tools.md"), "{err}");
    assert!(err.contains("Absolute paths"), "{err}");
    let shorter: String = page.lines().take(5).map(|l| format!("{l}\n")).collect();
    assert!(check_fresh(&shorter, &page).is_err());
    assert!(check_fresh(&format!("{page}\n"), &page).is_err());
}

#[test]
fn the_readme_and_the_protocol_link_the_page() {
    for (doc, link) in [
        ("README.md", "docs/tools.md"),
        ("docs/protocol.md", "(tools.md)"),
    ] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        assert!(text.contains(link), "{doc} does not link {link}");
    }
}
