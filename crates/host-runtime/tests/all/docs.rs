//! The documents a user reads agree with the option table the host reads
//! (`host_runtime::config::OPTIONS`): same keys, same defaults, same meanings.

use std::path::Path;

use host_runtime::config::{OPTIONS, option_keys};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The rows of the first table after `heading`.
fn table_after(text: &str, heading: &str) -> Vec<String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("no heading {heading:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // The header and its rule.
        .map(str::to_string)
        .collect()
}

#[test]
fn the_option_table_of_the_semantics_is_the_hosts() {
    let expected: Vec<String> =
        OPTIONS.iter().map(|o| format!("| `{}` | `{}` | {} |", o.key, o.default, o.meaning)).collect();
    let documented = table_after(&read("docs/semantics.md"), "## Options in `extensions`");
    assert_eq!(documented, expected, "docs/semantics.md's option table differs from config::OPTIONS");
}

#[test]
fn the_readme_names_every_option() {
    let readme = read("README.md");
    let start = readme.find("\nOptions: ").expect("the README lists the options after \"Options: \"");
    let sentence = &readme[start..start + readme[start..].find(';').expect("the list ends with ';'")];
    let named: Vec<&str> = sentence.split('`').skip(1).step_by(2).collect();
    assert_eq!(named, option_keys().collect::<Vec<_>>(), "README.md's option list differs from config::OPTIONS");
}
