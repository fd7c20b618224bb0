"""Secrets planted in a guest's output, the environment and the inventory reach no output: not
the HTML, the ledger, the JUnit XML, the transcripts, nor the terminal; ordinary values whose
names only contain a secret word stay readable."""

from __future__ import annotations

import fakes
import pytest
import reportkit
from pvepatch.audit.redact import MASK

pytest_plugins = ["pytester"]

KEY_LINES = [
    f"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ{i:04d}SeCrEtKeYbOdYlInE" for i in range(30)
]
OPENSSH_KEY = "\n".join(
    ["-----BEGIN OPENSSH PRIVATE KEY-----", *KEY_LINES, "-----END OPENSSH PRIVATE KEY-----"]
)
PGP_LINES = [
    f"lQVYBGXpgpPrIvAtEkEyBoDy{i:04d}PgPsEcReTlInEAAAAAAAAAAAAAAAAAAAAAAAA" for i in range(20)
]
PGP_KEY = "\n".join(
    ["-----BEGIN PGP PRIVATE KEY BLOCK-----", "", *PGP_LINES, "=Ab3d",
     "-----END PGP PRIVATE KEY BLOCK-----"]
)  # fmt: skip
URL_TOKEN = "tok3n-url-6c1d"
ASSIGNED = "hunter2-assigned"
ENV_TOKEN = "env-api-token-58e2b7"
BECOME_PASSWORD = "inv-become-pw-0a9f"
VAULT_VALUE = "inv-vault-value-77d3"
SECRETS = (URL_TOKEN, ASSIGNED, ENV_TOKEN, BECOME_PASSWORD, VAULT_VALUE, *KEY_LINES, *PGP_LINES)
# Names with PASS inside a longer word: their values are ordinary paths and stay visible.
ORDINARY = {"PASSENGER_PATH": "/usr/local/passenger", "COMPASS_HOME": "/opt/compass",
            "BYPASS_DIR": "/srv/bypass"}  # fmt: skip
INVENTORY_VARS = (
    f"    ansible_become_password: {BECOME_PASSWORD}\n    vault_backup: {VAULT_VALUE}\n"
)


def leak() -> tuple[str, str]:
    """What a guest command prints: every kind of secret, the OpenSSH key last (so the tail of
    the output starts inside it), then the ordinary values."""
    stdout = (
        f"Get:1 https://user:{URL_TOKEN}@mirror.example/debian bookworm InRelease\n"
        f"setting password={ASSIGNED}\nexported {ENV_TOKEN}\n"
        f"become {BECOME_PASSWORD} vault {VAULT_VALUE}\n{PGP_KEY}\n{OPENSSH_KEY}\n"
    )
    stderr = (
        f"{OPENSSH_KEY}\nretrying https://user:{URL_TOKEN}@mirror.example/ password={ASSIGNED}\n"
        + "".join(f"{name}={value}\n" for name, value in ORDINARY.items())
        + "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    )
    return stdout, stderr


class LeakyFleet(fakes.FakeFleet):
    """dist-upgrade prints the secrets; on pihole it fails, so they reach the failure text."""

    def apt(self, vm, command):
        rc, out, err = super().apt(vm, command)
        if not command.endswith("dist-upgrade"):
            return rc, out, err
        stdout, stderr = leak()
        return (100 if vm.name == "pihole" else rc), out + stdout, err + stderr


@pytest.fixture
def leaky_run(pytester, monkeypatch):
    monkeypatch.setenv("PVEPATCH_TEST_API_TOKEN", ENV_TOKEN)
    for name, value in ORDINARY.items():
        monkeypatch.setenv(name, value)
    suite = reportkit.make_suite(pytester, 3, INVENTORY_VARS)
    fleet = reportkit.fleet_of(3, LeakyFleet)
    result, html = reportkit.run(suite, fleet, "-m", "patch", "-v", "-rA", "--tb=long")
    return result, html


def outputs(result: pytest.RunResult, html) -> dict[str, str]:
    """Every output of the run, by name: the report, ledger, JUnit XML, each transcript, the
    terminal."""
    texts = {
        "html": html.read_text(),
        "ledger": html.with_suffix(".jsonl").read_text(),
        "junit": html.with_suffix(".xml").read_text(),
        "terminal": "\n".join(result.outlines + result.errlines),
    }
    transcripts = sorted(html.with_suffix(".files").iterdir())
    texts.update({f"transcript {p.name}": p.read_text() for p in transcripts})
    return texts


def test_planted_secrets_reach_no_output(leaky_run):
    result, html = leaky_run
    result.stdout.fnmatch_lines(
        ["*pihole*FAILED (patch: *", "ERROR *test_30_patch.py::*[[]pihole[]]*"]
    )
    texts = outputs(result, html)
    upgrades = [name for name in texts if "dist-upgrade" in name]
    assert len(upgrades) == 3, sorted(texts)  # one transcript per VM
    for name in ("html", "ledger", "junit", "terminal", *upgrades):  # the leak reached them
        assert MASK in texts[name], f"nothing masked in {name}"
    leaked = [(secret[:30], name) for secret in SECRETS for name, text in texts.items()
              if secret in text]  # fmt: skip
    assert leaked == []


def test_values_of_names_that_only_contain_pass_stay_visible(leaky_run):
    result, html = leaky_run
    texts = outputs(result, html)
    shown = [name for name in texts if "dist-upgrade" in name] + ["html", "junit", "terminal"]
    masked = [(f"{var}={value}", name) for name in shown for var, value in ORDINARY.items()
              if f"{var}={value}" not in texts[name]]  # fmt: skip
    assert masked == []
