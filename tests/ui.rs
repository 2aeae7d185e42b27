//! Compile-fail tests: every misuse of the attributes is a clear error at the offending token.
#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
