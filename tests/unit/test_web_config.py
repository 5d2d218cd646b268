"""The config's web: section (appliance/config/web.py): defaults, values, errors with file:line:col."""

from __future__ import annotations

import pytest

from appliance.config.defaults import DEFAULT_CONFIG
from appliance.config.load import ConfigErrors, load_config
from appliance.web.auth import hash_password


def test_absent_means_off_and_default_config_serves_localhost() -> None:
    assert not load_config("x.yaml", "dns: {}\n").web.enabled
    w = load_config(DEFAULT_CONFIG).web
    assert w.enabled and w.listen == ("127.0.0.1", 8080) and w.admin_password_hash is None


def test_values() -> None:
    h = hash_password("pw-for-tests", n=2 ** 12)
    w = load_config("x.yaml", f"""web:
  listen: "[::1]:8443"
  blockpage_listen: ["0.0.0.0:80", "[::]:80"]
  admin_password_hash: "{h}"
  tls_proxy: true
""").web
    assert w.enabled and w.listen == ("::1", 8443) and w.blockpage_listen == (("0.0.0.0", 80), ("::", 80))
    assert w.admin_password_hash == h and w.tls_proxy


@pytest.mark.parametrize("body,line,col,what", [
    ("  listen: localhost:80\n", 2, 11, "web.listen"),
    ("  blockpage_listen: [\"1.2.3.4:99999\"]\n", 2, 22, "web.blockpage_listen"),
    ("  admin_password_hash: plaintext\n", 2, 24, "web.admin_password_hash"),
    ("  enabled: yes please\n", 2, 12, "web.enabled"),
    ("  colour: blue\n", 2, 3, "unknown key web.colour"),
    ("  listen: \"127.0.0.1:80\"\n  blockpage_listen: \"127.0.0.1:80\"\n", 3, 21, "must differ"),
])
def test_errors_name_the_place(body: str, line: int, col: int, what: str) -> None:
    with pytest.raises(ConfigErrors) as exc:
        load_config("site.yaml", "web:\n" + body)
    e = exc.value.errors[0]
    assert what in e.message
    assert (e.where.file, e.where.line, e.where.col) == ("site.yaml", line, col), str(e)


def test_hash_password_cli(capsys) -> None:
    import io

    from appliance.cli import main
    from appliance.web.auth import verify_password

    out, err = io.StringIO(), io.StringIO()
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO("a long enough password\n")
    try:
        assert main(["web", "hash-password", "--stdin", "--n", "4096"], out, err) == 0
        h = out.getvalue().strip()
        assert verify_password("a long enough password", h)
        sys.stdin = io.StringIO("short\n")
        assert main(["web", "hash-password", "--stdin"], out, err) == 2
        assert "at least 10" in err.getvalue()
    finally:
        sys.stdin = old
