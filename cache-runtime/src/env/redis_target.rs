//! Where [`Config::from_env`](crate::Config::from_env)'s Redis is: one server's URL or a
//! cluster's seed nodes, and the TLS files, checked together at start-up. A variable of a
//! feature this build lacks is an error, not ignored: a deployment that sets it expects it to
//! act.

use std::ffi::OsString;

use super::{
    bad, Vars, REDIS_CA_FILE, REDIS_CLIENT_CERT_FILE, REDIS_CLIENT_KEY_FILE, REDIS_CLUSTER_NODES,
    REDIS_URL,
};
use crate::backend::RedisBackendBuilder;
use crate::error::ConfigError;
use crate::RedisBackend;

/// The Redis the variables configure.
pub(super) struct RedisTarget {
    endpoint: Endpoint,
    tls: TlsFiles,
}

enum Endpoint {
    Server(String),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
}

/// The contents of the TLS files (feature `tls`; always empty without it).
#[derive(Default)]
struct TlsFiles {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    ca: Option<Vec<u8>>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

impl RedisTarget {
    /// The variable that gave the endpoint, for errors about it.
    pub(super) fn variable(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Server(_) => REDIS_URL,
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(_) => REDIS_CLUSTER_NODES,
        }
    }

    /// A builder with the endpoint and the TLS material set.
    pub(super) fn builder(self) -> RedisBackendBuilder {
        let builder = match self.endpoint {
            Endpoint::Server(url) => RedisBackend::builder().url(url),
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(seeds) => RedisBackend::builder().cluster(seeds),
        };
        #[cfg(feature = "tls")]
        let builder = {
            let mut builder = builder;
            if let Some(ca) = self.tls.ca {
                builder = builder.tls_ca_pem(ca);
            }
            if let Some((chain, key)) = self.tls.client {
                builder = builder.tls_client_cert_pem(chain, key);
            }
            builder
        };
        builder
    }
}

impl<F: Fn(&str) -> Option<OsString>> Vars<F> {
    /// The Redis of `CACHETTE_REDIS_URL` or `CACHETTE_REDIS_CLUSTER_NODES` with its TLS files,
    /// if any is set; every combination that cannot work as meant is an error naming a variable.
    pub(super) fn redis_target(&self) -> Result<Option<RedisTarget>, ConfigError> {
        self.needs_feature(REDIS_CLUSTER_NODES, "cluster", cfg!(feature = "cluster"))?;
        for variable in [REDIS_CA_FILE, REDIS_CLIENT_CERT_FILE, REDIS_CLIENT_KEY_FILE] {
            self.needs_feature(variable, "tls", cfg!(feature = "tls"))?;
        }
        let url = self.text(REDIS_URL)?;
        let seeds = self.seeds()?;
        let tls = self.tls_files()?;
        let endpoint = match (url, seeds) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    REDIS_CLUSTER_NODES,
                    format!("set together with `{REDIS_URL}`: set one (the cluster's seeds, or the one server)"),
                ))
            }
            (Some(url), None) => Endpoint::Server(url),
            #[cfg(feature = "cluster")]
            (None, Some(seeds)) => Endpoint::Cluster(seeds),
            #[cfg(not(feature = "cluster"))]
            (None, Some(_)) => unreachable!("refused above without the `cluster` feature"),
            (None, None) => {
                if let Some(variable) = self.first_tls_variable() {
                    return Err(bad(
                        variable,
                        format!(
                            "set, but no Redis is: set `{REDIS_URL}` or `{REDIS_CLUSTER_NODES}` \
                             (with `rediss://` URLs)"
                        ),
                    ));
                }
                return Ok(None);
            }
        };
        let target = RedisTarget { endpoint, tls };
        if target.tls.is_set() && !target.is_tls() {
            let variable = self.first_tls_variable().expect("a TLS file is set");
            return Err(bad(
                variable,
                format!(
                    "set, but `{}` is not a `rediss://` URL, and TLS files are used only over \
                     TLS: write `rediss://`",
                    target.variable()
                ),
            ));
        }
        Ok(Some(target))
    }

    fn needs_feature(
        &self,
        variable: &'static str,
        feature: &str,
        enabled: bool,
    ) -> Result<(), ConfigError> {
        if enabled || (self.lookup)(variable).is_none() {
            return Ok(());
        }
        Err(bad(
            variable,
            format!(
                "needs cachette's `{feature}` feature, which this build lacks: enable it \
                 (`cachette = {{ version = \"...\", features = [\"{feature}\"] }}`) or unset the \
                 variable"
            ),
        ))
    }

    /// The seed URLs, comma-separated; each non-empty and of one scheme.
    fn seeds(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = self.text(REDIS_CLUSTER_NODES)? else {
            return Ok(None);
        };
        let seeds: Vec<String> = list.split(',').map(|seed| seed.trim().to_owned()).collect();
        if let Some(empty) = seeds.iter().position(String::is_empty) {
            return Err(bad(
                REDIS_CLUSTER_NODES,
                format!(
                    "seed {} of {} is empty: write comma-separated URLs such as \
                     `redis://node-1:6379,redis://node-2:6379`",
                    empty + 1,
                    seeds.len()
                ),
            ));
        }
        // Only the schemes are quoted: a seed carries the password.
        let schemes: Vec<&str> = seeds.iter().map(|seed| scheme(seed)).collect();
        if let Some(other) = schemes.iter().position(|s| *s != schemes[0]) {
            return Err(bad(
                REDIS_CLUSTER_NODES,
                format!(
                    "seed 1 is `{}://` but seed {} is `{}://`: give every seed the same scheme",
                    schemes[0],
                    other + 1,
                    schemes[other]
                ),
            ));
        }
        Ok(Some(seeds))
    }

    /// The TLS files' contents, read and checked now: a missing file or a PEM without what it
    /// should hold is named at start-up, not at the first handshake.
    fn tls_files(&self) -> Result<TlsFiles, ConfigError> {
        let ca = self.pem_file(REDIS_CA_FILE)?;
        let cert = self.pem_file(REDIS_CLIENT_CERT_FILE)?;
        let key = self.pem_file(REDIS_CLIENT_KEY_FILE)?;
        #[cfg(feature = "tls")]
        {
            use crate::backend::{check_certificates, check_private_key};
            let check = |variable,
                         pem: &Option<Vec<u8>>,
                         check: fn(&[u8]) -> Result<(), String>| match pem {
                Some(pem) => check(pem).map_err(|reason| bad(variable, reason)),
                None => Ok(()),
            };
            check(REDIS_CA_FILE, &ca, check_certificates)?;
            check(REDIS_CLIENT_CERT_FILE, &cert, check_certificates)?;
            check(REDIS_CLIENT_KEY_FILE, &key, check_private_key)?;
        }
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(missing_pair(REDIS_CLIENT_KEY_FILE, REDIS_CLIENT_CERT_FILE))
            }
            (None, Some(_)) => {
                return Err(missing_pair(REDIS_CLIENT_CERT_FILE, REDIS_CLIENT_KEY_FILE))
            }
        };
        Ok(TlsFiles { ca, client })
    }

    fn pem_file(&self, variable: &'static str) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = self.text(variable)? else {
            return Ok(None);
        };
        let path = path.trim();
        std::fs::read(path)
            .map(Some)
            .map_err(|error| bad(variable, format!("cannot read {path:?}: {error}")))
    }

    fn first_tls_variable(&self) -> Option<&'static str> {
        [REDIS_CA_FILE, REDIS_CLIENT_CERT_FILE, REDIS_CLIENT_KEY_FILE]
            .into_iter()
            .find(|variable| (self.lookup)(variable).is_some())
    }
}

impl RedisTarget {
    /// Whether the endpoint is `rediss://` (every seed shares the first's scheme).
    fn is_tls(&self) -> bool {
        let first = match &self.endpoint {
            Endpoint::Server(url) => url.as_str(),
            #[cfg(feature = "cluster")]
            Endpoint::Cluster(seeds) => seeds[0].as_str(),
        };
        scheme(first) == "rediss"
    }
}

/// The part of a URL before `://`, or the empty string.
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

fn missing_pair(missing: &'static str, given: &'static str) -> ConfigError {
    bad(
        missing,
        format!("not set, but `{given}` is: a client certificate needs its private key and the key its certificate"),
    )
}
