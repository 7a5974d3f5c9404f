"""farm.notifications reaches the scheduler as BUILDFARM_NOTIFICATIONS and BUILDFARM_NOTIFY_*, in
the settings' own shape, and the schema refuses a misspelt target key (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from buildfarm.model.settings import load_settings
from buildfarm.notify import check_notifications


def test_targets_and_smtp_reach_the_settings(
    render: Any, helpers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        "daily-server",
        "farm.notifications.targets[0].name=stx-team",
        "farm.notifications.targets[0].project=starlingx",
        "farm.notifications.targets[0].webhook=https://chat.example.org/hook",
        "farm.notifications.targets[0].secret_file=/etc/buildfarm/hook/key",
        "farm.notifications.targets[0].events={failed,fixed}",
        "farm.notifications.targets[1].name=mine",
        "farm.notifications.targets[1].user=alice",
        "farm.notifications.targets[1].email={alice@example.org}",
        "farm.notifications.smtpHost=mail.example.org",
        "farm.notifications.smtpPort=587",
        "farm.notifications.smtpStarttls=true",
        "farm.notifications.dashboardUrl=https://farm.example.org",
    )
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    for name in [n for n in config if n.startswith("BUILDFARM_NOTIF")]:
        monkeypatch.setenv(name, config[name])
    settings = load_settings(state_dir=tmp_path)
    check_notifications(settings)
    hook, mine = settings.notify.targets
    assert (hook.name, hook.project, hook.events, str(hook.secret_file)) == (
        "stx-team",
        "starlingx",
        ["failed", "fixed"],
        "/etc/buildfarm/hook/key",
    )
    assert (mine.user, mine.email, mine.webhook) == ("alice", ["alice@example.org"], None)
    smtp = (settings.notify.smtp_host, settings.notify.smtp_port, settings.notify.smtp_starttls)
    assert smtp == ("mail.example.org", 587, True)
    assert settings.notify.dashboard_url == "https://farm.example.org"
    default = helpers["find"](render("default"), "ConfigMap", "farm")["data"]
    assert default["BUILDFARM_NOTIFICATIONS"] == "[]" and "BUILDFARM_NOTIFY_SMTP_HOST" not in default


def test_a_misspelt_target_key_is_refused(helpers: dict[str, Any]) -> None:
    proc = helpers["helm_template"](
        "--set",
        "farm.notifications.targets[0].name=t",
        "--set",
        "farm.notifications.targets[0].secretFile=/k",
    )
    assert proc.returncode != 0 and "secretFile" in proc.stderr
