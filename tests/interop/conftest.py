"""Fixtures for the interop tests: the real gateway binary in front of the
real Django example (examples/django) under gunicorn on a unix socket.

Everything runs in temp dirs on 127.0.0.1; every wait is bounded; every
process started here is killed when its fixture ends (also on failure).

GATEWAY_BIN names the gateway binary (tests/interop.rs passes
env!("CARGO_BIN_EXE_gateway")). Run by hand with:

    GATEWAY_BIN=target/debug/gateway target/interop-venv/bin/python -m pytest -q tests/interop
"""
import base64
import datetime
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DJANGO_DIR = REPO / "examples" / "django"
PYTHON = sys.executable
START_TIMEOUT = 30.0  # seconds for gunicorn or the gateway to answer
HTTP_TIMEOUT = 20.0  # seconds for one HTTP exchange

# The example's users (examples/django/api/management/commands/seed_users.py).
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
NO_ACTIVE_ACCOUNT = {"detail": "No active account found with the given credentials"}


def gateway_bin():
    path = os.environ.get("GATEWAY_BIN")
    if not path:
        pytest.exit("GATEWAY_BIN is not set: point it at the gateway binary (cargo build)", returncode=2)
    if not os.access(path, os.X_OK):
        pytest.exit(f"GATEWAY_BIN={path} is not an executable", returncode=2)
    return path


def free_port():
    """A port free right now on 127.0.0.1 (the gateway binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what, timeout=START_TIMEOUT, proc=None):
    """Polls check() until it returns a truthy value; bounded by timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{proc.output()}")
        try:
            value = check()
            if value:
                return value
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.1)
    detail = proc.output() if proc is not None else ""
    raise AssertionError(f"{what}: not ready after {timeout}s (last error: {last!r})\n{detail}")


class Proc:
    """A child process whose stdout/stderr go to a file, killed at close()."""

    def __init__(self, name, args, cwd, env, logdir):
        self.name = name
        self.log_path = Path(logdir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def poll(self):
        return self.popen.poll()

    @property
    def returncode(self):
        return self.popen.returncode

    def output(self, limit=6000):
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name} output (last {limit} chars) ---\n{text[-limit:]}"

    def close(self):
        if self.popen.poll() is None:
            # The whole process group: gunicorn's workers too.
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        self._log.close()


# --- HTTP -----------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=HTTP_TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not JSON ({self.status}): {self.body[:500]!r}")

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def request(conn, method, path, headers=(), body=None, json_body=None):
    """One exchange; headers is a list of (name, value) sent exactly as given
    (duplicates and odd spellings included)."""
    headers = list(headers)
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.append(("Content-Type", "application/json"))
    try:
        has_host = any(k.lower() == "host" for k, _ in headers)
        conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


class Client:
    """HTTP(S) to one base address."""

    def __init__(self, host, port, tls_ca=None):
        self.host, self.port, self.tls_ca = host, port, tls_ca

    @property
    def base(self):
        return f"{'https' if self.tls_ca else 'http'}://{self.host}:{self.port}"

    def conn(self):
        if self.tls_ca:
            ctx = ssl.create_default_context(cafile=str(self.tls_ca))
            return http.client.HTTPSConnection(self.host, self.port, timeout=HTTP_TIMEOUT, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)

    def get(self, path, headers=()):
        return request(self.conn(), "GET", path, headers)

    def post(self, path, json_body=None, headers=()):
        return request(self.conn(), "POST", path, headers, json_body=json_body)

    def login(self, username, password=None):
        r = self.post("/api/token/", {"username": username, "password": password or PASSWORDS[username]})
        assert r.status == 200, r
        return r.json()


def bearer(token):
    return [("Authorization", f"Bearer {token}")]


def jwt_parts(token):
    """(header, claims) of a compact JWT, unverified."""

    def seg(s):
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    h, p, _ = token.split(".")
    return seg(h), seg(p)


# --- Django ---------------------------------------------------------------------


def django_env(base_env, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "JWT_"))}
    env.update(base_env)
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def manage(env, *args, timeout=120):
    r = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=DJANGO_DIR, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"manage.py {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="session")
def django_site(tmp_path_factory):
    """One migrated database with the seeded users, collectstatic output,
    and a dumpdata export of auth.user, shared by every gunicorn here."""
    d = tmp_path_factory.mktemp("django")
    base = {
        "DJANGO_SECRET_KEY": "interop-secret-key-" + os.urandom(12).hex(),
        "DJANGO_DB_PATH": str(d / "db.sqlite3"),
        "DJANGO_STATIC_ROOT": str(d / "staticfiles"),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    env = django_env(base)
    manage(env, "migrate", "--noinput", "-v0")
    ids = json.loads(manage(env, "seed_users").strip().splitlines()[-1])
    manage(env, "collectstatic", "--noinput", "-v0")
    dump = d / "users.json"
    dump.write_text(manage(env, "dumpdata", "auth.user"))
    return {"dir": d, "env": base, "ids": ids, "static_root": Path(base["DJANGO_STATIC_ROOT"]), "dump": dump}


class Gunicorn:
    """gunicorn serving the example on a unix socket (plus a loopback TCP bind,
    used only to show what an untrusted peer gets), access log to a file."""

    def __init__(self, tmp, env):
        tmp.mkdir(parents=True, exist_ok=True)
        self.sock = str(tmp / "gunicorn.sock")
        self.tcp_port = free_port()
        self.access_log = tmp / "access.log"
        args = [
            PYTHON, "-m", "gunicorn", "gwexample.wsgi",
            "--bind", f"unix:{self.sock}",
            "--bind", f"127.0.0.1:{self.tcp_port}",
            "--workers", "2",
            "--timeout", "60",
            "--access-logfile", str(self.access_log),
            # Let x_user_id through as HTTP_X_USER_ID (gunicorn drops it by
            # default): then only the gateway stands between a forged
            # underscore header and Django, and the spoofing tests can fail.
            "--header-map", "dangerous",
        ]
        self.proc = Proc("gunicorn", args, DJANGO_DIR, env, tmp)
        try:
            wait_until(self._ready, "gunicorn", proc=self.proc)
        except BaseException:
            self.proc.close()
            raise

    def _ready(self):
        if not os.path.exists(self.sock):
            return False
        r = request(UnixHTTPConnection(self.sock, timeout=5), "GET", "/api/me/", [("Host", "localhost")])
        return r.status == 401

    def unix(self, method, path, headers=(), json_body=None):
        return request(UnixHTTPConnection(self.sock), method, path, [("Host", "localhost"), *headers], json_body=json_body)

    @property
    def tcp(self):
        return Client("127.0.0.1", self.tcp_port)

    def access_lines(self):
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def close(self):
        self.proc.close()


class Gateway:
    """The gateway binary with a config written from a template."""

    def __init__(self, tmp, config_text, tls_ca=None, env=None):
        tmp.mkdir(parents=True, exist_ok=True)
        self.dir = tmp
        self.port = free_port()
        self.config = tmp / "gateway.toml"
        self.config.write_text(config_text.replace("@PORT@", str(self.port)))
        self.client = Client("127.0.0.1", self.port, tls_ca)
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.pop("RUST_LOG", None)
        check = subprocess.run(
            [gateway_bin(), "check", "--config", str(self.config)], capture_output=True, text=True, timeout=60,
            env=full_env, stdin=subprocess.DEVNULL,
        )
        assert check.returncode == 0, f"gateway check failed:\n{check.stdout}\n{check.stderr}\n{config_text}"
        self.proc = Proc("gateway", [gateway_bin(), "serve", "--config", str(self.config)], tmp, full_env, tmp)
        try:
            wait_until(lambda: self.client.get("/healthz").status == 200, "gateway", proc=self.proc)
        except BaseException:
            self.proc.close()
            raise

    def close(self):
        self.proc.close()


def run_gateway_cli(*args, cwd=None, env=None):
    r = subprocess.run(
        [gateway_bin(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL,
        env=dict(os.environ, **(env or {})),
    )
    assert r.returncode == 0, f"gateway {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def self_signed_cert(dirpath):
    """A certificate for 127.0.0.1 made with cryptography: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(dirpath) / "cert.pem", Path(dirpath) / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def closing():
    """Collects processes to kill at the end of the test, in reverse order."""
    procs = []
    yield procs
    errors = []
    for p in reversed(procs):
        try:
            p.close()
        except Exception as e:  # keep killing the others
            errors.append(e)
    if errors:
        raise errors[0]
