"""The gateway in front of the real Django + DRF + simplejwt example, HS256:
the gateway and Django share one secret (Django's SIGNING_KEY).

One gunicorn serves the example for the whole module; three gateways front
it, one per migration stage of docs/migrating-from-nginx.md:

- `issuer`: the gateway issues tokens from a users file imported from
  Django (`gateway user import-django`), validates at the edge, serves
  /static/;
- `validator`: Django still issues (/api/token/ routed with auth = "none"),
  the gateway validates at the edge;
- `delegating`: the gateway issues, but the passwords are checked by
  Django's /internal/authenticate (credential delegation).
"""
import json
import time

import pytest

from conftest import (
    NO_ACTIVE_ACCOUNT,
    PASSWORDS,
    Gateway,
    Gunicorn,
    UnixHTTPConnection,
    bearer,
    django_env,
    jwt_parts,
    request,
    run_gateway_cli,
    wait_until,
)

# What the gateway adds to simplejwt's claim set: `sid`, the token family id
# it uses for reuse detection and revocation (issue 4). simplejwt ignores
# unknown claims, so it is harmless there; it is the only difference.
GATEWAY_ONLY_CLAIMS = {"sid"}

ROUTES = """
[upstreams.app]
url = "unix:{sock}"

[[routes]]
path = "/static/"
static = "{static_root}"
cache_control = "public, max-age=3600"

# The gateway's credential endpoint is for the gateway only: nothing under
# /internal/ is served to clients (an empty directory answers 404).
[[routes]]
path = "/internal/"
static = "{empty}"

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

# Identity from headers only (GatewayIdentityMiddleware): anonymous callers
# get through to Django's own 401, which shows what headers reached it.
[[routes]]
path = "/api/me/"
upstream = "app"
auth = "optional"

[[routes]]
path = "/"
upstream = "app"
auth = "optional"
"""

JWT_HS256 = """
[jwt]
algorithm = "HS256"
secret = "env:JWT_SIGNING_KEY"   # = Django's SIGNING_KEY (its SECRET_KEY here)
user_id_claim = "user_id"

[identity]
headers = {{ "X-User-Id" = "user_id" }}
forward_token = true                # simplejwt's JWTAuthentication re-verifies it
"""


def config(body, **kw):
    return ('[server]\nlisten = "127.0.0.1:@PORT@"\n' + body).format(**kw)


@pytest.fixture(scope="module")
def app(django_site, tmp_path_factory):
    g = Gunicorn(tmp_path_factory.mktemp("gunicorn-hs256"), django_env(django_site["env"]))
    yield g
    g.close()


def gateway_env(site):
    return {"JWT_SIGNING_KEY": site["env"]["DJANGO_SECRET_KEY"]}


def paths(app, site, tmp):
    (tmp / "empty").mkdir(exist_ok=True)
    return {"sock": app.sock, "static_root": site["static_root"], "empty": tmp / "empty"}


@pytest.fixture(scope="module")
def issuer(app, django_site, tmp_path_factory):
    """Stage 3: the gateway issues; users imported from Django's dumpdata."""
    tmp = tmp_path_factory.mktemp("gw-issuer")
    run_gateway_cli("user", "import-django", str(django_site["dump"]), "--users-file", str(tmp / "users.toml"))
    text = config(
        ROUTES + JWT_HS256 + """
[tokens]
access_ttl = "5m"
refresh_ttl = "1d"
rotate_refresh = true
blacklist_after_rotation = true

[tokens.credentials]
users_file = "users.toml"

[store]
path = "gateway.db"
""",
        **paths(app, django_site, tmp),
    )
    gw = Gateway(tmp, text, env=gateway_env(django_site))
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def validator(app, django_site, tmp_path_factory):
    """Stage 2: Django issues at /api/token/ (auth = "none" at the edge),
    the gateway validates every other /api/ request."""
    tmp = tmp_path_factory.mktemp("gw-validator")
    text = config(
        ROUTES + JWT_HS256 + """
[[routes]]
path = "/api/token/"
upstream = "app"
auth = "none"
""",
        **paths(app, django_site, tmp),
    )
    gw = Gateway(tmp, text, env=gateway_env(django_site))
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def delegating(app, django_site, tmp_path_factory):
    """The gateway issues; Django checks the passwords (/internal/authenticate)."""
    tmp = tmp_path_factory.mktemp("gw-delegating")
    text = config(
        ROUTES + JWT_HS256 + """
[tokens]

[tokens.credentials]
upstream = "app"
path = "/internal/authenticate"

[store]
path = "gateway.db"
""",
        **paths(app, django_site, tmp),
    )
    gw = Gateway(tmp, text, env=gateway_env(django_site))
    yield gw
    gw.close()


def django_login(app, username, password=None):
    """simplejwt's own TokenObtainPairView, straight on gunicorn's socket."""
    r = app.unix("POST", "/api/token/", json_body={"username": username, "password": password or PASSWORDS[username]})
    assert r.status == 200, r
    return r.json()


def whoami(client, token, headers=()):
    r = client.get("/api/whoami/", bearer(token) + list(headers))
    assert r.status == 200, r
    return r.json()


# --- the checks -------------------------------------------------------------------


def test_gateway_tokens_are_accepted_by_simplejwt(issuer, django_site):
    ids = django_site["ids"]
    tokens = issuer.client.login("alice")
    header, claims = jwt_parts(tokens["access"])
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims["user_id"] == str(ids["alice"]) and claims["token_type"] == "access"
    me = whoami(issuer.client, tokens["access"])
    # simplejwt's JWTAuthentication verified the gateway's token itself.
    assert me["user_id"] == ids["alice"] and me["username"] == "alice"
    assert me["headers"]["X-User-Id"] == str(ids["alice"])


def test_gateway_token_cli_tokens_are_accepted_by_simplejwt(issuer, django_site, app):
    ids = django_site["ids"]
    token = run_gateway_cli(
        "token", "--config", str(issuer.config), "--user-id", str(ids["carol"]), env=gateway_env(django_site),
    ).strip()
    # Straight to Django: simplejwt alone decides.
    direct = app.unix("GET", "/api/whoami/", bearer(token))
    assert direct.status == 200, direct
    assert direct.json()["user_id"] == ids["carol"]


def test_django_tokens_are_accepted_at_the_edge(validator, app, django_site):
    ids = django_site["ids"]
    # Django's own /api/token/, reached through the gateway (auth = "none").
    tokens = validator.client.login("carol")
    assert set(tokens) == {"refresh", "access"}
    _, claims = jwt_parts(tokens["access"])
    assert "sid" not in claims, "this token must come from simplejwt, not the gateway"
    # The headers-only view: no token check in Django, identity from the edge.
    r = validator.client.get("/api/me/", bearer(tokens["access"]))
    assert r.status == 200, r
    body = r.json()
    assert body["user_id"] == str(ids["carol"]) and body["username"] == "carol"
    assert body["trusted_peer"] is True
    assert body["headers"]["X-User-Id"] == str(ids["carol"])
    # And simplejwt behind the edge still verifies the forwarded token.
    me = whoami(validator.client, tokens["access"])
    assert me["user_id"] == ids["carol"] and me["headers"]["X-User-Id"] == str(ids["carol"])
    # Django's refresh view through the gateway.
    r = validator.client.post("/api/token/refresh/", {"refresh": tokens["refresh"]})
    assert r.status == 200, r
    assert whoami(validator.client, r.json()["access"])["user_id"] == ids["carol"]


def test_a_bad_token_stops_at_the_edge(validator, app):
    tokens = validator.client.login("alice")
    h, p, s = tokens["access"].split(".")
    forged = f"{h}.{p}.{s[:-4]}AAAA"
    before = len(app.access_lines())
    r = validator.client.get("/api/whoami/?edge-reject-marker", bearer(forged))
    assert r.status == 401, r
    assert r.json()["code"] == "token_not_valid"
    # Django would answer the same for it: the edge is not more lenient.
    direct = app.unix("GET", "/api/whoami/", bearer(forged))
    assert direct.status == 401 and direct.json()["code"] == "token_not_valid"
    wait_until(lambda: len(app.access_lines()) > before, "gunicorn access log")
    assert not any("edge-reject-marker" in line for line in app.access_lines())


def test_gateway_refresh_and_claim_key_sets_match_simplejwt(issuer, app, django_site):
    ids = django_site["ids"]
    gw = issuer.client.login("alice")
    dj = django_login(app, "alice")
    for kind in ("access", "refresh"):
        gh, gc = jwt_parts(gw[kind])
        dh, dc = jwt_parts(dj[kind])
        assert set(gh) == set(dh), (kind, gh, dh)
        assert set(gc) - GATEWAY_ONLY_CLAIMS == set(dc), (kind, sorted(gc), sorted(dc))
        assert set(gc) & GATEWAY_ONLY_CLAIMS == GATEWAY_ONLY_CLAIMS, gc
        # Same value types: user_id a string (simplejwt 5.5), jti 32 hex.
        assert gc["user_id"] == dc["user_id"] == str(ids["alice"])
        assert len(gc["jti"]) == len(dc["jti"]) == 32
        assert all(isinstance(gc[k], int) for k in ("exp", "iat"))
        assert gc["token_type"] == dc["token_type"] == kind
    # Refresh at the gateway's own route: rotation gives a new pair.
    r = issuer.client.post("/api/token/refresh/", {"refresh": gw["refresh"]})
    assert r.status == 200, r
    refreshed = r.json()
    assert list(refreshed) == ["access", "refresh"]
    assert whoami(issuer.client, refreshed["access"])["user_id"] == ids["alice"]
    # The rotated-out refresh token is spent (single use).
    again = issuer.client.post("/api/token/refresh/", {"refresh": gw["refresh"]})
    assert again.status == 401 and again.json()["code"] == "token_not_valid", again


def test_django_refresh_tokens_work_at_the_gateway_refresh_route(issuer, django_site, app):
    """Moving issuing from Django to the edge keeps sessions: a refresh
    token simplejwt issued (no sid) is accepted by the gateway."""
    dj = django_login(app, "carol")
    r = issuer.client.post("/api/token/refresh/", {"refresh": dj["refresh"]})
    assert r.status == 200, r
    assert whoami(issuer.client, r.json()["access"])["user_id"] == django_site["ids"]["carol"]


def test_gateway_refresh_tokens_work_at_django_refresh_view(issuer, django_site, app):
    """Rolling back from stage 3 keeps sessions too: simplejwt's
    TokenRefreshView takes a gateway refresh token (it ignores `sid`)."""
    gw = issuer.client.login("alice")
    r = app.unix("POST", "/api/token/refresh/", json_body={"refresh": gw["refresh"]})
    assert r.status == 200, r
    access = r.json()["access"]
    assert jwt_parts(access)[1]["user_id"] == str(django_site["ids"]["alice"])
    assert whoami(issuer.client, access)["user_id"] == django_site["ids"]["alice"]


def test_credential_delegation_logs_in_a_django_user(delegating, app, django_site):
    ids = django_site["ids"]
    tokens = delegating.client.login("alice")
    _, claims = jwt_parts(tokens["access"])
    assert claims["user_id"] == str(ids["alice"])
    # The claims /internal/authenticate returned travel in the access token.
    assert claims.get("username") == "alice"
    me = whoami(delegating.client, tokens["access"])
    assert me["user_id"] == ids["alice"] and me["headers"]["X-User-Id"] == str(ids["alice"])
    assert any("POST /internal/authenticate" in line for line in app.access_lines())
    # Wrong password: simplejwt's answer, byte for byte.
    r = delegating.client.post("/api/token/", {"username": "alice", "password": "wrong"})
    assert r.status == 401 and r.json() == NO_ACTIVE_ACCOUNT, r


def test_inactive_django_user_cannot_log_in(delegating, issuer, app):
    creds = {"username": "bob", "password": PASSWORDS["bob"]}
    django = app.unix("POST", "/api/token/", json_body=creds)
    assert django.status == 401 and django.json() == NO_ACTIVE_ACCOUNT, django
    for gw in (delegating, issuer):  # through delegation, and imported (is_active false)
        r = gw.client.post("/api/token/", creds)
        assert r.status == 401, r
        assert r.json() == NO_ACTIVE_ACCOUNT
        assert r.body == django.body, (r.body, django.body)
        assert r.header("WWW-Authenticate") == django.header("WWW-Authenticate") == 'Bearer realm="api"'


def test_internal_authenticate_is_not_reachable_by_clients(delegating, app):
    before = [line for line in app.access_lines() if "/internal/" in line]
    r = delegating.client.post("/internal/authenticate", {"username": "alice", "password": PASSWORDS["alice"]})
    assert r.status in (404, 405), r
    assert b"user_id" not in r.body
    # A request that reaches Django is logged; wait for one, then compare.
    marker = delegating.client.get("/healthz-marker-internal")
    assert marker.status == 404
    wait_until(lambda: any("healthz-marker-internal" in l for l in app.access_lines()), "gunicorn access log")
    assert [line for line in app.access_lines() if "/internal/" in line] == before
    # Second fence in Django: proxied requests (X-Forwarded-For) are refused.
    r = app.unix("POST", "/internal/authenticate", [("X-Forwarded-For", "203.0.113.9")],
                 json_body={"username": "alice", "password": PASSWORDS["alice"]})
    assert r.status == 404, r


def test_collectstatic_output_is_served_by_the_gateway_only(issuer, app, django_site):
    root = django_site["static_root"]
    for rel in ("api/site.css", "rest_framework/css/bootstrap.min.css"):
        want = (root / rel).read_bytes()
        r = issuer.client.get(f"/static/{rel}")
        assert r.status == 200, r
        assert r.body == want
        etag = r.header("ETag")
        assert etag, r.headers
        assert r.header("Cache-Control") == "public, max-age=3600"
        again = issuer.client.get(f"/static/{rel}", [("If-None-Match", etag)])
        assert again.status == 304, again
        assert again.body == b""
        assert again.header("ETag") == etag
    # A missing file is the gateway's 404, not Django's.
    assert issuer.client.get("/static/api/missing.css").status == 404
    # Prove the access log records proxied requests, then that none was static.
    assert issuer.client.get("/static-marker/").status == 404
    wait_until(lambda: any("/static-marker/" in l for l in app.access_lines()), "gunicorn access log")
    hits = [line for line in app.access_lines() if " /static/" in line]
    assert hits == [], hits


SPOOFS = [
    ("X-User-Id", "999"),
    ("X-User-Id", "998"),
    ("x-user-id", "997"),
    ("X-USER-ID", "996"),
    ("x_user_id", "995"),
    ("X_User_Id", "994"),
]


def test_client_identity_headers_never_reach_django(issuer, app, django_site):
    ids = django_site["ids"]
    # Proof that the test can fail: straight on gunicorn's socket (header_map
    # "dangerous"), x_user_id does become Django's X-User-Id; only the
    # gateway's stripping keeps it out.
    direct = app.unix("GET", "/api/me/", [("x_user_id", "995")])
    assert direct.status == 200 and direct.json()["user_id"] == "995", direct
    # GatewayIdentityMiddleware does not believe a TCP peer at all.
    tcp = app.tcp.get("/api/me/", [("X-User-Id", "995")])
    assert tcp.status == 401, tcp
    assert tcp.json()["trusted_peer"] is False and tcp.json()["ignored_x_user_id"] == "995"
    assert "X-User-Id" not in tcp.json()["headers"]

    tokens = issuer.client.login("alice")
    # Authenticated: Django sees only the gateway's value.
    me = whoami(issuer.client, tokens["access"], SPOOFS)
    assert me["headers"]["X-User-Id"] == str(ids["alice"]), me["headers"]
    assert me["gateway_user_id"] == str(ids["alice"])
    r = issuer.client.get("/api/me/", bearer(tokens["access"]) + SPOOFS)
    assert r.status == 200 and r.json()["user_id"] == str(ids["alice"]), r
    # Anonymous on an optional route: no X-User-Id at all reaches Django.
    anon = issuer.client.get("/api/me/", SPOOFS)
    assert anon.status == 401, anon
    assert "X-User-Id" not in anon.json()["headers"], anon.json()
    assert anon.json()["trusted_peer"] is True  # it came through the gateway
    # Every spelling on a public route as well.
    for name, value in SPOOFS:
        r = issuer.client.get("/api/me/", [(name, value)])
        assert "X-User-Id" not in r.json()["headers"], (name, r.json())


def test_django_users_imported_log_in_with_their_django_passwords(issuer, django_site):
    users = (issuer.dir / "users.toml").read_text()
    assert "pbkdf2_sha256$" in users
    ids = django_site["ids"]
    for name in ("alice", "carol"):
        t = issuer.client.login(name, PASSWORDS[name])
        assert jwt_parts(t["access"])[1]["user_id"] == str(ids[name])
        assert whoami(issuer.client, t["access"])["username"] == name
    r = issuer.client.post("/api/token/", {"username": "alice", "password": PASSWORDS["carol"]})
    assert r.status == 401 and r.json() == NO_ACTIVE_ACCOUNT, r


def contract_cases(dj, expired):
    """(name, method, path, headers, body) sent to both simplejwt and the gateway."""
    js = [("Content-Type", "application/json")]

    def body(obj):
        return json.dumps(obj).encode()

    return [
        ("obtain-empty", "POST", "/api/token/", js, b"{}"),
        ("obtain-blank", "POST", "/api/token/", js, b'{"username":"","password":""}'),
        ("obtain-null-and-number", "POST", "/api/token/", js, b'{"username":null,"password":1}'),
        ("obtain-text-plain", "POST", "/api/token/", [("Content-Type", "text/plain")], b"x"),
        ("obtain-json-list", "POST", "/api/token/", js, b"[1]"),
        ("obtain-get", "GET", "/api/token/", [], None),
        ("obtain-form-wrong-password", "POST", "/api/token/",
         [("Content-Type", "application/x-www-form-urlencoded")], b"username=alice&password=wrong"),
        ("obtain-unknown-user", "POST", "/api/token/", js, b'{"username":"nobody","password":"x"}'),
        ("refresh-with-access", "POST", "/api/token/refresh/", js, body({"refresh": dj["access"]})),
        ("refresh-garbage", "POST", "/api/token/refresh/", js, b'{"refresh":"garbage"}'),
        ("refresh-expired", "POST", "/api/token/refresh/", js, body({"refresh": expired})),
        ("refresh-missing", "POST", "/api/token/refresh/", js, b"{}"),
        ("verify-ok", "POST", "/api/token/verify/", js, body({"token": dj["access"]})),
        ("verify-expired", "POST", "/api/token/verify/", js, body({"token": expired})),
        ("verify-missing", "POST", "/api/token/verify/", js, b"{}"),
        ("protected-no-token", "GET", "/api/whoami/", [], None),
        ("protected-expired", "GET", "/api/whoami/", bearer(expired), None),
        ("protected-garbage", "GET", "/api/whoami/", bearer("garbage"), None),
        ("protected-scheme-only", "GET", "/api/whoami/", [("Authorization", "Bearer")], None),
        ("protected-three-parts", "GET", "/api/whoami/", [("Authorization", "Bearer a b")], None),
        ("protected-refresh-token", "GET", "/api/whoami/", bearer(dj["refresh"]), None),
    ]


def test_gateway_answers_exactly_as_simplejwt(issuer, app, django_site):
    """Status, body (byte for byte) and Allow of the gateway's token routes
    and edge checks against simplejwt's own answers to the same requests."""
    import jwt as pyjwt

    now = int(time.time())
    expired = pyjwt.encode(
        {"token_type": "access", "exp": now - 10, "iat": now - 400, "jti": "a" * 32, "user_id": "1"},
        django_site["env"]["DJANGO_SECRET_KEY"], algorithm="HS256",
    )
    dj = django_login(app, "alice")
    diffs = []
    for name, method, path, headers, body in contract_cases(dj, expired):
        d = request(UnixHTTPConnection(app.sock), method, path, [("Host", "localhost"), *headers], body=body)
        g = request(issuer.client.conn(), method, path, headers, body=body)
        # Allow: on token routes only (on an app view it lists that view's methods).
        allow = (lambda r: r.header("Allow")) if path.startswith("/api/token/") else (lambda r: None)
        if (d.status, d.body, allow(d)) != (g.status, g.body, allow(g)):
            diffs.append(f"{name}:\n  simplejwt {d.status} {d.body[:300]!r} Allow={d.header('Allow')}"
                         f"\n  gateway   {g.status} {g.body[:300]!r} Allow={g.header('Allow')}")
    assert not diffs, "\n".join(diffs)
    # Bad JSON: same status and prefix; the parser's own message differs
    # (Python's json module vs serde_json), which no client can rely on.
    d = request(UnixHTTPConnection(app.sock), "POST", "/api/token/", [("Host", "localhost"), ("Content-Type", "application/json")], body=b"nope")
    g = request(issuer.client.conn(), "POST", "/api/token/", [("Content-Type", "application/json")], body=b"nope")
    assert d.status == g.status == 400
    assert d.json()["detail"].startswith("JSON parse error - ") and g.json()["detail"].startswith("JSON parse error - ")
