//! The state a request is decided with: `AppState`, built whole from one
//! config and replaced on reload, and `Deps`, what outlives reloads (the
//! store, the revocation mirror, the request-buffer budget).

use http::header::HeaderValue;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::identity::Strip;
use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{Config, RouteTarget, StoreBackend};
use crate::proxy::exchange::Budget;
use crate::proxy::Upstream;
use crate::router::Router;
use crate::static_files::StaticFiles;
use crate::store::redis::RedisSettings;
use crate::store::{RedisStore, RevokedFamilies, SqliteStore, Store, StoreError};
use crate::tokens::{TokenService, TokenSetupError};

/// Everything a request needs, built from one config. Replaced whole on
/// reload; requests in flight keep the state they started with.
pub struct AppState {
    pub config: Arc<Config>,
    pub(super) router: Router,
    /// One per route, in the router's order.
    pub(super) targets: Vec<Target>,
    /// Each route's metrics (labelled by its config path), in the router's
    /// order.
    pub(super) route_metrics: Vec<&'static crate::metrics::RouteMetrics>,
    pub(crate) hsts: Option<HeaderValue>,
    /// None when the config has no [jwt]: every route is then "none".
    pub(super) auth: Option<Authenticator>,
    pub(super) strip: Strip,
    /// The token routes, when the config has [tokens].
    pub(super) tokens: Option<TokenService>,
    /// Memory for buffered request bodies, shared by every connection.
    pub(crate) budget: Arc<Budget>,
    /// Every configured upstream (health checks run for each).
    upstreams: Vec<Arc<Upstream>>,
    /// The upstreams requests need (routes, credential delegation): ready
    /// only while each has a healthy server.
    needed: Vec<Arc<Upstream>>,
    /// `[tls.acme] challenge = "http-01"`: its answers, before routing.
    pub(super) acme_http: Option<Arc<crate::acme::Acme>>,
}

/// State that outlives reloads: the store and the revocation mirror.
#[derive(Clone)]
pub struct Deps {
    pub store: Option<Arc<dyn Store>>,
    pub revoked: Arc<RevokedFamilies>,
    /// `server.request_buffer_budget`, kept across reloads so bodies
    /// buffered under the old config still count.
    pub budget: Arc<Budget>,
    /// `[tls.acme]`: its certificates and challenge answers.
    pub acme: Option<Arc<crate::acme::Acme>>,
}

impl Deps {
    /// Opens the store (when token issuing is configured) and loads the
    /// revoked families into the in-memory mirror.
    pub async fn open(config: &Config) -> Result<Deps, StoreError> {
        let revoked = Arc::new(RevokedFamilies::new());
        let budget = Budget::new(config.server.request_buffer_budget);
        let acme = config
            .tls
            .as_ref()
            .and_then(|t| t.acme.as_ref())
            .map(crate::acme::Acme::new);
        if config.tokens.is_none() {
            return Ok(Deps {
                store: None,
                revoked,
                budget,
                acme,
            });
        }
        let store = open_store(&config.store.backend).await?;
        let now = crate::tokens::unix_now();
        for (sid, until) in store.revoked_families(now).await? {
            revoked.insert(&sid, until);
        }
        Ok(Deps {
            acme,
            store: Some(store),
            revoked,
            budget,
        })
    }

    /// For `gateway check`: an in-memory store, so checking writes nothing.
    pub fn in_memory() -> Result<Deps, StoreError> {
        Ok(Deps {
            store: Some(Arc::new(SqliteStore::open(std::path::Path::new(
                ":memory:",
            ))?)),
            revoked: Arc::new(RevokedFamilies::new()),
            budget: Budget::new(0),
            acme: None,
        })
    }
}

/// The store `[store]` names (also for the operator commands).
pub async fn open_store(backend: &StoreBackend) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        StoreBackend::Sqlite { path } => Arc::new(SqliteStore::open(path)?),
        StoreBackend::Redis {
            url,
            password,
            key_prefix,
            timeout,
        } => Arc::new(
            RedisStore::connect(&RedisSettings {
                url: url.clone(),
                password: password.clone(),
                key_prefix: key_prefix.clone(),
                timeout: *timeout,
            })
            .await?,
        ),
    })
}

pub(super) enum Target {
    // Boxed: a file server is much larger than an upstream reference.
    Static(Box<StaticFiles>),
    Upstream {
        upstream: Arc<Upstream>,
        strip_prefix: bool,
    },
}

/// Failure to build the runtime state from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("static root {path} cannot be opened")]
    StaticRoot {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("route {0} names an unknown upstream")]
    UnknownUpstream(String),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Tokens(#[from] TokenSetupError),
    #[error("[tokens] needs the store, which is not open")]
    NoStore,
}

impl AppState {
    pub fn new(config: Config, deps: &Deps) -> Result<Self, StateError> {
        let upstreams: BTreeMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.as_str(), Arc::new(Upstream::new(u))))
            .collect();
        let router = Router::new(&config);
        let mut targets = Vec::new();
        for route in router.routes() {
            targets.push(match &route.target {
                RouteTarget::Static(s) => {
                    Target::Static(Box::new(StaticFiles::new(s).map_err(|source| {
                        StateError::StaticRoot {
                            path: s.root.display().to_string(),
                            source,
                        }
                    })?))
                }
                RouteTarget::Upstream(u) => Target::Upstream {
                    upstream: upstreams
                        .get(u.upstream.as_str())
                        .cloned()
                        .ok_or_else(|| StateError::UnknownUpstream(route.path.clone()))?,
                    strip_prefix: u.strip_prefix,
                },
            });
        }
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let auth = config
            .jwt
            .as_ref()
            .map(|j| Authenticator::new(j, deps.revoked.clone()))
            .transpose()?;
        let strip = Strip::new(&config.identity);
        let tokens = match (&config.tokens, &deps.store) {
            (None, _) => None,
            (Some(_), None) => return Err(StateError::NoStore),
            (Some(_), Some(store)) => {
                TokenService::new(&config, &upstreams, store.clone(), deps.revoked.clone())?
            }
        };
        let mut needed: Vec<Arc<Upstream>> = Vec::new();
        let delegated = match config.tokens.as_ref().map(|t| &t.credentials) {
            Some(crate::config::CredentialsConfig::Upstream { upstream, .. }) => {
                upstreams.get(upstream.as_str()).cloned()
            }
            _ => None,
        };
        for up in targets
            .iter()
            .filter_map(|t| match t {
                Target::Upstream { upstream, .. } => Some(upstream.clone()),
                Target::Static(_) => None,
            })
            .chain(delegated)
        {
            if !needed.iter().any(|n| Arc::ptr_eq(n, &up)) {
                needed.push(up);
            }
        }
        let upstreams: Vec<Arc<Upstream>> = upstreams.into_values().collect();
        let route_metrics = router
            .routes()
            .iter()
            .map(|r| crate::metrics::route(&r.path))
            .collect();
        Ok(AppState {
            config: Arc::new(config),
            router,
            targets,
            route_metrics,
            hsts,
            auth,
            strip,
            tokens,
            budget: deps.budget.clone(),
            upstreams,
            needed,
            acme_http: deps
                .acme
                .clone()
                .filter(|a| a.challenge() == crate::config::AcmeChallenge::Http01),
        })
    }

    /// Starts background work (fetching trusted issuers' keys).
    /// Starts background work (fetching trusted issuers' keys, probing
    /// upstream servers).
    pub fn start(&self) {
        if let Some(a) = &self.auth {
            a.start();
        }
        for up in &self.upstreams {
            for s in up.servers() {
                crate::metrics::upstream_health(&up.config.name, s.label, s.is_up());
            }
            crate::proxy::upstream::spawn_health_checks(up);
        }
    }

    /// Why requests cannot all be served now: upstreams that routes need
    /// with no healthy server (empty: ready).
    pub fn unready_upstreams(&self) -> Vec<String> {
        self.needed
            .iter()
            .filter(|u| !u.any_up())
            .map(|u| format!("upstream {}: no healthy server", u.config.name))
            .collect()
    }

    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.auth.as_ref()
    }
}
