"""Sending one notification: a signed JSON POST, or a plain-text mail through SMTP.

The webhook body is signed like GitHub's: ``X-Buildfarm-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes under the target's secret, so a receiver checks it with
``hmac.compare_digest`` before trusting anything in it.  Errors come back as
:class:`~buildfarm.model.errors.TemporaryError` (try again later) or
:class:`~buildfarm.model.errors.PermanentError` (a 4xx answer: retrying cannot help).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
from email.message import EmailMessage
from typing import Any

import httpx

from buildfarm.model.errors import PermanentError, TemporaryError
from buildfarm.model.settings import NotifyConfig, Settings, read_secret

SIGNATURE_HEADER = "X-Buildfarm-Signature-256"
EVENT_HEADER = "X-Buildfarm-Event"
DELIVERY_HEADER = "X-Buildfarm-Delivery"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _secret(settings: Settings, target: NotifyConfig) -> bytes | None:
    if target.secret_file is None:
        return None
    return read_secret(None, target.secret_file, f"notifications[{target.name}].secret").encode()


def send_webhook(settings: Settings, target: NotifyConfig, delivery: int, payload: dict[str, Any]) -> None:
    assert target.webhook is not None
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "buildfarm-notify",
        EVENT_HEADER: str(payload["event"]),
        DELIVERY_HEADER: str(delivery),
    }
    secret = _secret(settings, target)
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        response = httpx.post(
            target.webhook, content=body, headers=headers, timeout=settings.notify.timeout_seconds
        )
    except httpx.HTTPError as exc:
        raise TemporaryError(f"webhook {target.name}: {exc}") from exc
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise PermanentError(f"webhook {target.name}: HTTP {response.status_code}")
    if response.status_code >= 300:
        raise TemporaryError(f"webhook {target.name}: HTTP {response.status_code}")


def send_email(settings: Settings, target: NotifyConfig, payload: dict[str, Any]) -> None:
    if not settings.notify.smtp_host:
        raise PermanentError(f"notification {target.name}: e-mail asked but notify_smtp_host is not set")
    build = payload["build"]
    message = EmailMessage()
    message["From"] = settings.notify.sender
    message["To"] = ", ".join(target.email)
    message["Subject"] = (
        f"[buildfarm] {build['project']}/{build['branch']} build {build['id']} {payload['event']}"
    )
    lines = [
        f"Build {build['id']} of {build['project']}/{build['branch']} ({build['kind']}, by {build['user']}) "
        f"ended: {build['state']}.",
        f"Event: {payload['event']}",
    ]
    if payload.get("failed_steps"):
        lines.append("Failed steps: " + ", ".join(payload["failed_steps"]))
    if build.get("error"):
        lines.append(f"Error: {build['error']}")
    lines.append(f"Details: {build['url']}")
    message.set_content("\n".join(lines) + "\n")
    try:
        with smtplib.SMTP(
            settings.notify.smtp_host, settings.notify.smtp_port, timeout=settings.notify.timeout_seconds
        ) as smtp:
            if settings.notify.smtp_starttls:
                smtp.starttls()
            if settings.notify.smtp_username:
                password = read_secret(None, settings.notify.smtp_password_file, "notify_smtp_password")
                smtp.login(settings.notify.smtp_username, password)
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        if 500 <= exc.smtp_code < 600:
            raise PermanentError(f"mail {target.name}: SMTP {exc.smtp_code} {exc.smtp_error!r}") from exc
        raise TemporaryError(f"mail {target.name}: SMTP {exc.smtp_code}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TemporaryError(f"mail {target.name}: {exc}") from exc
