"""Asymmetric keys: the gateway signs with a key made by `gateway keygen`,
and Django's simplejwt, configured with JWK_URL pointing at the gateway's
/.well-known/jwks.json, verifies the gateway's tokens itself.

PyJWKClient (simplejwt's JWK_URL) picks the key by the token's `kid`; the
gateway sets one (the key's RFC 7638 thumbprint unless configured). ES256
is fetched over https (the gateway's own TLS listener, its certificate made
here and trusted by Django through SSL_CERT_FILE), the others over http.
"""
import json
import time

import jwt as pyjwt
import pytest

from conftest import (
    Gateway,
    Gunicorn,
    bearer,
    django_env,
    jwt_parts,
    run_gateway_cli,
    self_signed_cert,
)

def new_private_key(alg):
    """A fresh private key for alg, made by cryptography (PKCS#8 PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[alg]()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


CASES = [("RS256", "http"), ("ES256", "https"), ("EdDSA", "http")]


@pytest.fixture(params=CASES, ids=[alg for alg, _ in CASES])
def stack(request, django_site, tmp_path_factory, closing):
    alg, scheme = request.param
    tmp = tmp_path_factory.mktemp(f"jwks-{alg}")
    run_gateway_cli("keygen", "--alg", alg, "--out", str(tmp / "keys"))
    run_gateway_cli("user", "import-django", str(django_site["dump"]), "--users-file", str(tmp / "users.toml"))
    tls, ca = "", None
    if scheme == "https":
        ca, key = self_signed_cert(tmp)
        tls = f'[tls]\ncert = "{ca}"\nkey = "{key}"\n'
    sock = tmp / "app" / "gunicorn.sock"
    text = f"""
[server]
listen = "127.0.0.1:@PORT@"

{tls}
[upstreams.app]
url = "unix:{sock}"

[[routes]]
path = "/api/"
upstream = "app"
auth = "required"

[jwt]
algorithm = "{alg}"
private_key = "keys/private.pem"

[tokens]

[tokens.credentials]
users_file = "users.toml"

[store]
path = "gateway.db"
"""
    gw = Gateway(tmp, text, tls_ca=ca)
    closing.append(gw)
    extra = {"JWT_ALGORITHM": alg, "JWT_JWK_URL": f"{gw.client.base}/.well-known/jwks.json"}
    if ca:
        extra["SSL_CERT_FILE"] = str(ca)
    app = Gunicorn(tmp / "app", django_env(django_site["env"], **extra))
    assert app.sock == str(sock)
    closing.append(app)
    return {"alg": alg, "gw": gw, "app": app, "keys": tmp / "keys", "tmp": tmp}


def test_django_verifies_gateway_tokens_with_the_gateway_jwks(stack, django_site):
    alg, gw, app = stack["alg"], stack["gw"], stack["app"]
    ids = django_site["ids"]
    published = gw.client.get("/.well-known/jwks.json")
    assert published.status == 200, published
    jwks = published.json()
    written = json.loads((stack["keys"] / "jwks.json").read_text())
    kid = written["keys"][0]["kid"]
    assert [k["kid"] for k in jwks["keys"]] == [kid]

    tokens = gw.client.login("alice")
    header, claims = jwt_parts(tokens["access"])
    assert header == {"alg": alg, "kid": kid, "typ": "JWT"}
    assert claims["user_id"] == str(ids["alice"])

    # Through the gateway: verified at the edge, then by simplejwt via JWK_URL.
    r = gw.client.get("/api/whoami/", bearer(tokens["access"]))
    assert r.status == 200, r
    assert r.json()["user_id"] == ids["alice"]
    assert r.json()["headers"]["X-User-Id"] == str(ids["alice"])
    # Straight on gunicorn's socket: simplejwt alone, with the gateway's JWKS.
    r = app.unix("GET", "/api/whoami/", bearer(tokens["access"]))
    assert r.status == 200, r
    assert r.json()["user_id"] == ids["alice"]


def test_a_token_from_another_key_with_the_same_kid_is_refused_by_both(stack):
    """The same kid and alg, another private key: simplejwt really checks
    the signature against the gateway's published key (and so does the edge)."""
    alg, gw, app = stack["alg"], stack["gw"], stack["app"]
    kid = json.loads((stack["keys"] / "jwks.json").read_text())["keys"][0]["kid"]
    _, good = jwt_parts(gw.client.login("alice")["access"])
    forged = pyjwt.encode(dict(good, exp=int(time.time()) + 300), new_private_key(alg), algorithm=alg, headers={"kid": kid})
    r = app.unix("GET", "/api/whoami/", bearer(forged))
    assert r.status == 401 and r.json()["code"] == "token_not_valid", r
    r = gw.client.get("/api/whoami/", bearer(forged))
    assert r.status == 401 and r.json()["code"] == "token_not_valid", r


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_keygen_private_keys_load_in_pyjwt(alg, tmp_path):
    """Stage 3 with a shared private key: Django's SIGNING_KEY can be the
    gateway's private.pem, so PyJWT must read it; tokens it signs verify
    with the gateway's public.pem."""
    run_gateway_cli("keygen", "--alg", alg, "--out", str(tmp_path))
    token = pyjwt.encode({"user_id": "1"}, (tmp_path / "private.pem").read_text(), algorithm=alg)
    assert pyjwt.decode(token, (tmp_path / "public.pem").read_text(), algorithms=[alg]) == {"user_id": "1"}
