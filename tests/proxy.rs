#![allow(clippy::unwrap_used)]
mod common;
use common::*;

#[tokio::test]
async fn proxies_and_echoes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&proxy_config(&up.url())).await;
    let r = get(gw.addr, "/api/x?a=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/api/x");
    assert_eq!(j["query"], "a=1");
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");
    assert!(r.header("x-upstream-hop").is_none());
    assert!(r.header("keep-alive").is_none());
}
