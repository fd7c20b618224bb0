"""The redactor on its own: secret names on word boundaries, key blocks whole or cut, credentials
in text, redaction before the tail is cut, safe transcript names, a test report redacted."""

from __future__ import annotations

import pytest
from pvepatch.audit.auditlog import transcript_name
from pvepatch.audit.html import write_transcript
from pvepatch.audit.redact import MASK, Redactor, is_secret_name, redact_report
from pvepatch.audit.summary import TAIL_LINES, command_facts
from pvepatch.transport.command import CommandResult, tail

KEY_LINES = [f"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAB{i:04d}" for i in range(30)]
OPENSSH_KEY = "\n".join(
    ["-----BEGIN OPENSSH PRIVATE KEY-----", *KEY_LINES, "-----END OPENSSH PRIVATE KEY-----"]
)
PGP_LINES = [
    f"lQVYBGXpgpPrIvAtEkEyBoDyLiNe{i:04d}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" for i in range(25)
]
PGP_KEY = "\n".join(
    ["-----BEGIN PGP PRIVATE KEY BLOCK-----", "Comment: lab key", "", *PGP_LINES, "=Ab3d",
     "-----END PGP PRIVATE KEY BLOCK-----"]
)  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["PASSWORD", "DB_PASSWORD", "API_TOKEN", "MY_SECRET_KEY", "apiKey", "dbPassword",
     "ansible_become_password", "ansible_ssh_pass", "vault_db_admin", "PGPASSWORD", "MYSQL_PWD",
     "client-secret", "PVEPATCH_TEST_API_TOKEN", "Authorization"],
)  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["PASSENGER_PATH", "COMPASS_HOME", "BYPASS_DIR", "BYPASS", "PASSENGER", "PWD", "OLDPWD",
     "ansible_ssh_private_key_file", "vault_password_file", "SSH_AUTH_SOCK", "passed", "vault",
     "PATH", "HOME", "KEYRING"],
)  # fmt: skip
def test_names_that_only_contain_a_secret_word_are_not_secrets(name):
    assert not is_secret_name(name)


def test_environment_secrets_are_masked_and_ordinary_paths_are_not():
    r = Redactor.for_run(
        {"PVEPATCH_TEST_API_TOKEN": "tok-9f8e7d", "COMPASS_HOME": "/opt/compass",
         "PASSENGER_PATH": "/usr/local/passenger", "BYPASS_DIR": "/srv/bypass", "PWD": "/root"},
        None,
    )  # fmt: skip
    text = r("tok-9f8e7d /opt/compass/bin /usr/local/passenger /srv/bypass /root")
    assert text == f"{MASK} /opt/compass/bin /usr/local/passenger /srv/bypass /root"


@pytest.mark.parametrize("key, lines", [(OPENSSH_KEY, KEY_LINES), (PGP_KEY, PGP_LINES)])
def test_key_blocks_are_masked_whole_and_the_text_around_them_kept(key, lines):
    text = Redactor()(f"before\n{key}\nafter")
    assert text == f"before\n{MASK}\nafter"


@pytest.mark.parametrize("key, lines", [(OPENSSH_KEY, KEY_LINES), (PGP_KEY, PGP_LINES)])
def test_a_key_cut_by_a_tail_is_masked(key, lines):
    r = Redactor()
    end_only = tail(f"{key}\nafter", 6)  # no BEGIN line
    begin_only = "\n".join(f"before\n{key}".splitlines()[:6])  # no END line
    prefixed = "\n".join(f"E       {line}" for line in end_only.splitlines())  # pytest's longrepr
    for cut in (end_only, begin_only, prefixed):
        clean = r(cut)
        assert not any(line in clean for line in lines), clean
    assert r(end_only).endswith("after")


def test_key_lines_seen_once_are_masked_in_a_tail_without_begin_or_end():
    r = Redactor()
    r.learn(f"ok\n{OPENSSH_KEY}\n")
    middle = "\n".join(KEY_LINES[10:20])
    assert Redactor()(middle) == middle  # nothing in the text itself marks it as a key
    assert r(middle) == "\n".join([MASK] * 10)


def test_credentials_in_urls_assignments_and_flags():
    r = Redactor()
    text = r(
        "git clone https://user:tok3n@host/path; password=hunter2 db-password: 'two words' "
        '{"api_key": "k-123456"} --password s3cret --limit pbs Authorization: Bearer abc.def '
        "PGPASSWORD=pg1234 passed: 3 bypass=/srv/x compass=north"
    )
    for secret in ("tok3n", "hunter2", "two words", "k-123456", "s3cret", "abc.def", "pg1234"):
        assert secret not in text
    for kept in ("https://user:", "@host/path", "--limit pbs", "passed: 3", "bypass=/srv/x",
                 "compass=north"):  # fmt: skip
        assert kept in text


def test_obj_masks_secret_keys_and_redacts_every_string():
    r = Redactor(["hunter22"])
    assert r.obj({"ansible_password": "x" * 8, "ok": [{"note": "pw hunter22"}], "n": 3}) == {
        "ansible_password": MASK,
        "ok": [{"note": f"pw {MASK}"}],
        "n": 3,
    }


def test_inventory_secrets_including_vault_variables_and_vault_tags(tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "all:\n  vars:\n    ansible_become_password: inv-pw-123\n    vault_api: v-456789\n"
        "    ansible_ssh_private_key_file: /home/ops/.ssh/id_ed25519\n"
        "    db_password: !vault |\n      $ANSIBLE_VAULT;1.1;AES256\n      6162\n"
        "  hosts:\n    pbs: {ansible_host: 192.0.2.1}\n"
    )
    r = Redactor.for_run({}, inventory)
    assert {"inv-pw-123", "v-456789"} <= r.secrets
    assert r("/home/ops/.ssh/id_ed25519") == "/home/ops/.ssh/id_ed25519"


def test_command_output_is_redacted_before_its_tail_is_cut():
    result = CommandResult("pbs", "cat key", 1, f"{OPENSSH_KEY}\ndone\n", "", 0.1)
    facts = command_facts(result, Redactor())
    assert len(OPENSSH_KEY.splitlines()) > TAIL_LINES
    assert not any(line in facts["stdout_tail"] for line in KEY_LINES)
    assert facts["stdout_tail"] == f"{MASK}\ndone"


@pytest.mark.parametrize("vm", ["../../evil", "..", "/etc/cron.d/x", "a\\b"])
def test_transcript_names_stay_in_their_directory(tmp_path, vm):
    files = tmp_path / "reports" / "run.files"
    name = transcript_name(vm, 3, "apt-get -y dist-upgrade")
    path = write_transcript(files, name, "text", Redactor())
    assert path.resolve().parent == files.resolve()
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["run.files"]


def test_transcript_names_of_two_vms_never_collide():
    assert transcript_name("a/b", 0, "ls") != transcript_name("a-b", 0, "ls")
    assert transcript_name("pbs", 0, "apt-get update").startswith("pbs-000-")


def test_write_transcript_refuses_a_name_that_leaves_the_directory(tmp_path):
    with pytest.raises(ValueError, match="leaves"):
        write_transcript(tmp_path / "files", "../escaped.txt", "text", Redactor())
    assert not (tmp_path / "escaped.txt").exists()


def test_a_report_is_redacted_in_place():
    report = pytest.TestReport(
        "t.py::test_x", ("t.py", 1, "test_x"), {}, "failed",
        "E   AssertionError: password=hunter2", "call",
        sections=[("Captured stdout call", "https://u:tok3n@h/")],
        user_properties=[("api_token", "abc12345"), ("note", "password=hunter2"), ("n", 3)],
    )  # fmt: skip
    redact_report(report, Redactor())
    assert report.longrepr == f"E   AssertionError: password={MASK}"
    assert report.sections == [("Captured stdout call", f"https://u:{MASK}@h/")]
    assert report.user_properties == [("api_token", MASK), ("note", f"password={MASK}"), ("n", 3)]
    skipped = pytest.TestReport(
        "t.py::test_y", ("t.py", 2, "test_y"), {}, "skipped",
        ("t.py", 2, "Skipped: earlier stage failed: password=hunter2"), "setup",
    )  # fmt: skip
    redact_report(skipped, Redactor())
    assert skipped.longrepr == ("t.py", 2, f"Skipped: earlier stage failed: password={MASK}")


def test_a_detached_apt_command_is_named_by_its_verb():
    command = (
        "env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold "
        "dist-upgrade  # detached: systemd unit pvepatch-apt-get-20261127-120108-e33993"
    )
    assert transcript_name("pbs", 25, command) == "pbs-025-apt-get-dist-upgrade.txt"
