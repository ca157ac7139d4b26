//! The route table: the longest matching path prefix wins.
//!
//! Prefixes are matched on whole path segments when they do not end in '/':
//! `/api` matches `/api` and `/api/x` but not `/apix`.

use crate::config::{Config, RouteConfig};

/// Routes in match order (longest prefix first), as validated by config.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        // config::load already sorted them longest first.
        Router {
            routes: config.routes.clone(),
        }
    }

    /// The index and route that serve `path`, if any.
    pub fn route(&self, path: &str) -> Option<(usize, &RouteConfig)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| prefix_matches(&r.path, path))
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }
}

/// Whether `prefix` matches `path` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        // "/static/" also serves "/static" itself (as a directory).
        path.starts_with(prefix) || path == &prefix[..prefix.len() - 1]
    } else {
        path == prefix
            || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/static/", "/static/a.css"));
        assert!(prefix_matches("/static/", "/static"));
        assert!(!prefix_matches("/static/", "/staticx"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
    }

    #[test]
    fn longest_prefix_wins() {
        let text = "[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n[[routes]]\npath = \"/api/admin\"\nupstream = \"app\"\n[[routes]]\npath = \"/api/\"\nupstream = \"app\"\n";
        let config = crate::config::load_str(std::path::Path::new("t.toml"), text).unwrap();
        let router = Router::new(&config);
        assert_eq!(router.route("/api/admin/x").unwrap().1.path, "/api/admin");
        assert_eq!(router.route("/api/adminx").unwrap().1.path, "/api/");
        assert_eq!(router.route("/other").unwrap().1.path, "/");
    }
}
