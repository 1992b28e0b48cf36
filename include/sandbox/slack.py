"""Slack incoming-webhook emulator: POST /slack/services/T…/B…/<secret> with {"text": ...}.

Answers as Slack does: 200 "ok"; 400 "invalid_payload" / "no_text"; 404 "no_service" for an
unknown webhook; 429 with Retry-After past one message a second. Messages are appended to
<root>/slack/messages.jsonl so tests can read what was posted.
"""

from __future__ import annotations

import hashlib
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from sandbox.state import SandboxState

PATH = "/slack/services"


def webhook_path(state: SandboxState) -> str:
    """The sandbox's one valid webhook path (its secret derives from the sandbox's own keys)."""
    key = hashlib.sha256(state.credentials["hubspot"]["access_token"].encode()).hexdigest()
    return f"{PATH}/T0SANDBOX/B0PQL/{key[:24]}"


def messages(state: SandboxState) -> list[dict]:
    path = state.root / "slack" / "messages.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def router(state: SandboxState) -> APIRouter:
    api = APIRouter()

    @api.post(PATH + "/{team}/{bot}/{secret}")
    async def post(team: str, bot: str, secret: str, request: Request):
        if request.url.path != webhook_path(state):
            return PlainTextResponse("no_service", status_code=404)
        if state.take_fault("slack") is not None:
            return PlainTextResponse("rate_limited", status_code=429, headers={"Retry-After": "1"})
        if not state.limiter("slack_webhook", 1, 1.0).hit(time.monotonic()):
            return PlainTextResponse("rate_limited", status_code=429, headers={"Retry-After": "1"})
        try:
            body = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict) or not str(body.get("text") or "").strip():
            return PlainTextResponse("no_text", status_code=400)
        out = state.root / "slack" / "messages.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps({"text": body["text"]}) + "\n")
        state.count("slack message")
        return PlainTextResponse("ok")

    return api
