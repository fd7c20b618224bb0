"""Secrets never reach an artifact: HTML, ledger, JUnit XML, transcripts, index."""

from __future__ import annotations

import fakes
import reportkit
from pvepatch.audit.redact import MASK, Redactor

pytest_plugins = ["pytester"]

ENV_TOKEN = "s3cr3t-env-7f3a9c"
INV_PASSWORD = "s3cr3t-inv-91bc2e"
KH_PASSWORD = "s3cr3t-kh-55aa01"
PROXY_PASSWORD = "s3cr3t-proxy-d00d"
KEY_BODY = "MIIEowIBAAKCAQEAs3cr3tkeyb0dy"
PRIVATE_KEY = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----"
SECRETS = (ENV_TOKEN, INV_PASSWORD, KH_PASSWORD, PROXY_PASSWORD, KEY_BODY)


def test_redactor_masks_values_keys_assignments_and_url_credentials():
    r = Redactor([INV_PASSWORD])
    r.add_environment({"PVEPATCH_TEST_TOKEN": ENV_TOKEN, "HOME": "/root"})
    text = r(
        f"{INV_PASSWORD} {ENV_TOKEN} {PRIVATE_KEY} password={KH_PASSWORD} "
        f"http://apt:{PROXY_PASSWORD}@proxy:3128/ --api-token abcdef1234 /root"
    )
    for secret in (*SECRETS, "abcdef1234"):
        assert secret not in text
    assert "/root" in text and "http://apt:" in text and text.count(MASK) == 6
    assert r.obj({"ansible_password": "x" * 8, "ok": [f"token: {ENV_TOKEN}"]}) == {
        "ansible_password": MASK,
        "ok": [f"token: {MASK}"],
    }


class LeakyFleet(fakes.FakeFleet):
    """apt prints credentials and a key (a proxy URL, a token); pihole's upgrade fails with one."""

    def apt(self, vm, command):
        rc, out, err = super().apt(vm, command)
        leak = (
            f"Acquire::http::Proxy http://apt:{PROXY_PASSWORD}@proxy:3128/\n"
            f"token {ENV_TOKEN} pass {INV_PASSWORD}\n{PRIVATE_KEY}\n"
        )
        if vm.name == "pihole" and command.endswith("dist-upgrade"):
            return 100, out, leak + "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
        return rc, out + leak, err


def test_planted_secrets_reach_no_artifact(pytester, monkeypatch):
    monkeypatch.setenv("PVEPATCH_TEST_TOKEN", ENV_TOKEN)
    suite = reportkit.make_suite(pytester, 3, f"    ansible_become_password: {INV_PASSWORD}\n")
    fleet = reportkit.fleet_of(3, LeakyFleet)
    result, html = reportkit.run(
        suite, fleet, "-m", "patch", "--known-hosts", f"/etc/pvepatch/kh?password={KH_PASSWORD}"
    )
    result.stdout.fnmatch_lines(["*pihole*FAILED (patch: *"])
    artifacts = [p for p in html.parent.rglob("*") if p.is_file()]
    names = {p.suffix for p in artifacts}
    assert {".html", ".jsonl", ".xml", ".txt"} <= names
    for path in artifacts:
        text = path.read_text()
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {path.name}"
    page = html.read_text()
    assert MASK in page and MASK in html.with_suffix(".jsonl").read_text()
    assert "apt-get update" in page  # the transcripts are still there, only masked
