//! Operations: `GET /api/me` (what a page asks when its WebSocket will not
//! open), and the Grafana dashboard in `tuning/` against the real `/metrics`.

mod common;
use common::*;
use corechat::auth::{now_secs, Authenticator};
use serde_json::Value;
use std::collections::BTreeSet;

fn me(srv: &Server, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, body) = srv.http("GET", "/api/me", &headers, "");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status} {body:?}: {e}"));
    (status, json)
}

#[test]
fn api_me_says_who_a_valid_token_is() {
    let srv = Server::start(&["--shards", "1"]);
    let now = now_secs();
    let tok = authenticator()
        .mint("alice", Some("Alice A."), Some(600), None, false, now)
        .unwrap();
    let (status, body) = me(&srv, Some(&tok));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["name"], "Alice A.");
    assert_eq!(body["admin"], false);
    let exp = body["exp"].as_u64().expect("exp is a number");
    assert!((now + 600..=now + 602).contains(&exp), "{exp} vs {now}");

    let (status, body) = me(&srv, Some(&admin_token("root")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "root");
    assert_eq!(body["admin"], true);

    // no expiry: exp is null
    let forever = authenticator()
        .mint("bob", None, None, None, false, now)
        .unwrap();
    let (status, body) = me(&srv, Some(&forever));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exp"], Value::Null);
}

#[test]
fn api_me_refuses_bad_tokens_with_the_reason() {
    let srv = Server::start(&["--shards", "1"]);
    let failures_before = srv.metric("corechat_auth_failures_total", None);

    // expired an hour ago
    let expired = authenticator()
        .mint("alice", None, Some(60), None, false, now_secs() - 3600)
        .unwrap();
    let (status, body) = me(&srv, Some(&expired));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "token expired");

    // signed with another secret
    let other = Authenticator::new(Some(b"another-secret-0123456789"), None, 0).unwrap();
    let forged = other
        .mint("alice", None, Some(600), None, true, now_secs())
        .unwrap();
    let (status, body) = me(&srv, Some(&forged));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "bad signature");

    let (status, body) = me(&srv, Some("not-a-jwt"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "malformed token");

    let (status, body) = me(&srv, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "missing token");

    assert!(srv.metric("corechat_auth_failures_total", None) >= failures_before + 4.0);

    // the same token is refused on the upgrade: the page's check matches
    let err = Client::try_connect(&srv.ws_url(&expired)).expect_err("upgrade must fail");
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status().as_u16(), 401),
        e => panic!("expected HTTP 401, got {e}"),
    }

    let (status, _) = srv.http("POST", "/api/me", &[], "");
    assert_eq!(status, 405);
}

/// Every `corechat_*` name in the dashboard's PromQL (`expr` fields), with
/// the histogram series suffixes taken off when `/metrics` names the family.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    fn exprs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s),
                        _ => exprs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    assert!(
        all.len() >= 20,
        "the dashboard has only {} queries",
        all.len()
    );
    let mut names = BTreeSet::new();
    for expr in all {
        // corechat_[a-z_]+, not inside a longer identifier
        let bytes = expr.as_bytes();
        let mut from = 0;
        while let Some(i) = expr[from..].find("corechat_").map(|i| i + from) {
            let preceded = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            if !preceded {
                names.insert(expr[i..end].to_string());
            }
            from = end;
        }
    }
    names
}

/// Names of the series `/metrics` exposes (samples, without labels) and the
/// families its `# TYPE` lines declare.
fn exposed(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap_or_default().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            series.insert(name.to_string());
        }
    }
    (series, families)
}

#[test]
fn metric_names_are_taken_from_every_expr() {
    let d = serde_json::json!({"panels": [{"targets": [
        {"expr": "sum by (le) (rate(corechat_fanout_latency_seconds_bucket{shard=~\"$shard\"}[5m]))"},
        {"expr": "corechat_open_fds / x_corechat_not_ours"},
    ]}, {"panels": [{"targets": [{"expr": "rate(corechat_nope_total[1m])", "legendFormat": "corechat_legend"}]}]}],
    "filler": (0..20).map(|_| serde_json::json!({"expr": "corechat_up"})).collect::<Vec<_>>()});
    let names: Vec<String> = dashboard_metrics(&d).into_iter().collect();
    assert_eq!(
        names,
        [
            "corechat_fanout_latency_seconds_bucket",
            "corechat_nope_total",
            "corechat_open_fds",
            "corechat_up"
        ]
    );
}

#[test]
fn dashboard_queries_only_metrics_the_server_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let used = dashboard_metrics(&dashboard);

    let srv = Server::start(&["--shards", "2"]);
    // some traffic, so that nothing is exported only once it happened
    let mut c = srv.client("alice");
    c.join("lobby");
    c.send_json(serde_json::json!({"type": "publish", "room": "lobby", "body": "hi", "id": 1}));
    c.recv_type("ack");
    let (status, text) = srv.http("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    let (series, families) = exposed(&text);

    // histogram series (`_bucket`, `_sum`, `_count`) stand for their family
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let family_of = |name: &str| -> String {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| histograms.contains(f)))
            .unwrap_or(name)
            .to_string()
    };
    let mut missing = Vec::new();
    for name in &used {
        let family = family_of(name);
        // declared with # TYPE, and the very series the query names is there
        if !families.contains(&family) || !series.contains(name) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\nexported: {series:?}"
    );
    // and it covers what operators need
    for family in [
        "corechat_connections_open",
        "corechat_publishes_total",
        "corechat_frames_in_total",
        "corechat_frames_out_total",
        "corechat_deliveries_total",
        "corechat_fanout_latency_seconds_bucket",
        "corechat_disconnects_total",
        "corechat_rate_limited_total",
        "corechat_auth_failures_total",
        "corechat_open_fds",
    ] {
        assert!(
            used.contains(family),
            "the dashboard has no panel on {family}"
        );
    }
}
