//! What is cached, for how long, under which key, and what invalidation reaches, with the sites
//! that name no backend on the default one, `memory` (the cases: `semantics/cases.rs`).

#[path = "semantics/cases.rs"]
mod cases;

/// Nothing but the cases' own backends: sites without `backend` use `memory`.
fn configuration() -> cachette::Config {
    cachette::configure()
}
