//! The README's ACL rule for an application user names every command cachette's scripts run:
//! a script calling a command the rule leaves out is refused by a restricted user (NOPERM), and
//! every call through that script then runs uncached. `tests/cluster_tls_acl.rs` runs as that
//! user; this checks the list itself, without a server, whenever a script changes.

use std::path::Path;

#[test]
fn the_readme_acl_rule_allows_every_command_the_scripts_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let rule = readme
        .lines()
        .find(|line| line.trim_start().starts_with("user app on "))
        .expect("the README shows an ACL user rule");
    let allowed: Vec<String> = rule
        .split_whitespace()
        .filter_map(|word| word.strip_prefix('+'))
        .map(str::to_ascii_uppercase)
        .collect();
    let scripts = root.join("cache-runtime/src/backend/redis/scripts");
    let mut checked = 0;
    for entry in std::fs::read_dir(&scripts).expect("the scripts directory") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a script");
        for call in text.split("redis.call(").skip(1) {
            let command = call
                .trim_start_matches(['\'', '"'])
                .split(['\'', '"'])
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            assert!(
                allowed.contains(&command),
                "{} calls {command}, which the README's ACL rule does not allow: {rule}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} calls found");
}
