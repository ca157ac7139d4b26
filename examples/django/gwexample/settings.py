"""Settings of the gateway example project.

Everything that differs between deployments (and between the interop test
cases) comes from environment variables, so one code base runs as:

- HS256 with a secret shared with the gateway (JWT_SIGNING_KEY, default
  SECRET_KEY: the gateway's [jwt] secret is the same string);
- RS256/ES256/EdDSA verified against the gateway's JWKS (JWT_ALGORITHM plus
  JWT_JWK_URL = "http://GATEWAY/.well-known/jwks.json"), or against a
  public key (JWT_VERIFYING_KEY or JWT_VERIFYING_KEY_FILE).

| variable | default | meaning |
|---|---|---|
| DJANGO_SECRET_KEY | an insecure development key | SECRET_KEY |
| DJANGO_DEBUG | "0" | DEBUG when "1" |
| DJANGO_ALLOWED_HOSTS | "127.0.0.1,localhost" | ALLOWED_HOSTS, comma-separated |
| DJANGO_DB_PATH | BASE_DIR/db.sqlite3 | the SQLite database file |
| DJANGO_STATIC_ROOT | BASE_DIR/staticfiles | where collectstatic writes (the gateway's static dir) |
| JWT_ALGORITHM | "HS256" | SIMPLE_JWT["ALGORITHM"] |
| JWT_SIGNING_KEY / _FILE | SECRET_KEY | SIMPLE_JWT["SIGNING_KEY"]: HMAC secret, or private key PEM |
| JWT_VERIFYING_KEY / _FILE | "" | SIMPLE_JWT["VERIFYING_KEY"]: public key PEM (asymmetric algorithms) |
| JWT_JWK_URL | unset | SIMPLE_JWT["JWK_URL"]: the key is picked from this JWKS by the token's kid |
| JWT_ISSUER, JWT_AUDIENCE | unset | SIMPLE_JWT["ISSUER"], ["AUDIENCE"] |
| JWT_LEEWAY | "0" | SIMPLE_JWT["LEEWAY"], seconds |
| GATEWAY_TRUSTED_PEERS | "unix" | whose X-User-Id GatewayIdentityMiddleware believes (see api/middleware.py) |
"""
import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    """The variable NAME, else the contents of the file NAME_FILE, else default."""
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(name + "_FILE")
    if path:
        return Path(path).read_text()
    return default


SECRET_KEY = env("DJANGO_SECRET_KEY", "django-insecure-example-only-change-me")
DEBUG = env("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "rest_framework",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Reads X-User-Id only from the gateway's own connections.
    "api.middleware.GatewayIdentityMiddleware",
]

ROOT_URLCONF = "gwexample.urls"
WSGI_APPLICATION = "gwexample.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

# Django's default hasher (pbkdf2_sha256): `gateway user import-django`
# reads these hashes as they are.
AUTH_PASSWORD_VALIDATORS = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# collectstatic copies every app's static/ here; the gateway serves this
# folder under /static/ (nginx's `location /static/ { alias ...; }`).
STATIC_URL = "/static/"
STATIC_ROOT = env("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The gateway sets X-Forwarded-Proto itself and overwrites a client's.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # One proxy (the gateway) appends the client address to X-Forwarded-For.
    "NUM_PROXIES": 1,
}

_audience = env("JWT_AUDIENCE")
SIMPLE_JWT = {
    "ALGORITHM": env("JWT_ALGORITHM", "HS256"),
    "SIGNING_KEY": env("JWT_SIGNING_KEY", SECRET_KEY),
    "VERIFYING_KEY": env("JWT_VERIFYING_KEY", ""),
    "JWK_URL": env("JWT_JWK_URL") or None,
    "ISSUER": env("JWT_ISSUER") or None,
    "AUDIENCE": _audience or None,
    "LEEWAY": float(env("JWT_LEEWAY", "0")),
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

# Comma-separated REMOTE_ADDR values whose X-User-Id header is believed;
# "unix" stands for a connection on gunicorn's unix socket (REMOTE_ADDR "").
GATEWAY_TRUSTED_PEERS = [p.strip() for p in env("GATEWAY_TRUSTED_PEERS", "unix").split(",") if p.strip()]
