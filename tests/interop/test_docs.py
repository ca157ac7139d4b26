"""Every complete gateway.toml in docs/migrating-from-nginx.md passes
`gateway check`, with the paths it names (certificates, static dir, keys,
store) made real in a temp dir."""
import os
import re
import subprocess

import pytest

from conftest import REPO, gateway_bin, run_gateway_cli, self_signed_cert

DOC = REPO / "docs" / "migrating-from-nginx.md"


def configs():
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    full = [b for b in blocks if b.startswith("# gateway.toml")]
    assert len(full) >= 4, "the guide lost its configs"
    return full


@pytest.mark.parametrize("text", configs(), ids=lambda t: t.splitlines()[0][2:])
def test_guide_config_passes_gateway_check(text, tmp_path):
    le = tmp_path / "letsencrypt"
    le.mkdir()
    cert, key = self_signed_cert(le)
    cert.rename(le / "fullchain.pem")
    key.rename(le / "privkey.pem")
    (tmp_path / "staticfiles").mkdir()
    (tmp_path / "var").mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "empty").mkdir()
    alg = re.search(r'^algorithm = "(\w+)"', text, re.M)
    if alg and alg.group(1) != "HS256":
        run_gateway_cli("keygen", "--alg", alg.group(1), "--out", str(etc / "keys"))
    text = (
        text.replace("/etc/letsencrypt/live/example.com/", f"{le}/")
        .replace("/srv/app/staticfiles", str(tmp_path / "staticfiles"))
        .replace("/var/lib/gateway/", f"{tmp_path / 'var'}/")
    )
    config = etc / "gateway.toml"
    config.write_text(text)
    # The guide creates the users file (gateway user import-django) first.
    (etc / "users.toml").write_text("")
    r = subprocess.run(
        [gateway_bin(), "check", "--config", str(config)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, JWT_SIGNING_KEY="a-secret-of-reasonable-length-for-hs256"), stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{text}"
    assert "OK" in r.stdout
