"""The ranking page: people rank a prompt's K answers, best first, and each ranking is saved the moment it is sent.

    from rlhf_recipes.feedback.app import serve
    serve("feedback.sqlite", round=1)  # http://127.0.0.1:7860/?labeller=NAME

A Gradio page (page.py) mounted on a FastAPI app, plus a small JSON API for scripts: `POST /api/rank` with
`{"ticket", "ranks", "status"}` and `GET /api/progress?labeller=NAME`. The page shows the answers in the store's
shuffled order as A, B, C, D (no model names). A labeller ranks them with one click per answer, or from the keyboard:
the box under the answers has focus, and typing the ranks of A, B, C, D as digits (`2143`, ties `1122`) then Enter
saves: one prompt of 4 answers in 5 key presses. `s` skips, `f` flags the prompt unsafe, `b` goes back to the prompt
before to change its ranking (the resubmit replaces it).

Faults are answered, not crashed on: a request body over MAX_BODY is a 413 before it is read; a store that fails
while serving (a full disk) is a 503 with one sentence and nothing saved, so the same answer can be sent again.
"""

from __future__ import annotations

import base64
import secrets
from typing import Literal

import fastapi
import gradio as gr
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from ..errors import UserError
from .config import parse_logins
from .page import FOCUS_KEYS, RankingPage
from .store import Rejected, Store

TITLE = "Rank the answers"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

MAX_BODY = 256 * 1024  # bytes a request may send: a ranking is ~100, the page's largest event a few thousand


class RankBody(BaseModel):
    """The body of `POST /api/rank`: strict types, so `"2"` or `true` for a rank is a 422 and saves nothing."""

    model_config = ConfigDict(extra="forbid")
    ticket: StrictStr
    ranks: list[StrictInt] | None = None
    status: Literal["ranked", "skipped", "unsafe"] = "ranked"


def build_app(
    store: Store, round: int, per_prompt: int = 1, auth: list[tuple[str, str]] | None = None, title: str = TITLE,
    guidelines: str | None = None,
) -> fastapi.FastAPI:  # fmt: skip
    """The FastAPI app: the JSON API under /api/ and the ranking page at /, both behind `auth` when it is given;
    `guidelines` (Markdown) fold out at the top of the page."""
    logins = dict(parse_logins([f"{name}:{password}" for name, password in auth or []]))
    app = fastapi.FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY)  # larger bodies: 413, never read whole

    async def require_login(request: fastapi.Request, call_next):
        # a middleware, not a dependency: a request without a login is refused before its body is even read
        if request.url.path.startswith("/api/"):
            request.state.user = _basic_user(request.headers.get("authorization"), logins)
            if request.state.user is None:
                detail = "log in with your labeller name and password (HTTP basic auth)."
                return JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": 'Basic realm="ranking"'})
        return await call_next(request)

    if logins:
        app.middleware("http")(require_login)

    @app.post("/api/rank")
    def rank(body: RankBody):
        try:
            return {"saved": store.submit(body.ticket, body.ranks, body.status)}
        except Rejected as error:
            return JSONResponse({"detail": error.message}, error.status)

    @app.get("/api/progress")
    def progress(request: fastapi.Request, labeller: str | None = None):
        try:
            done, left = store.progress(labeller or getattr(request.state, "user", None) or "local", round, per_prompt)
        except Rejected as error:  # the store failed (503)
            return JSONResponse({"detail": error.message}, error.status)
        return {"done": done, "left": left}

    page = RankingPage(store, round, per_prompt, login=bool(logins), guidelines=guidelines)
    return gr.mount_gradio_app(
        app, page.build(title), path="/", auth=list(logins.items()) or None, js=FOCUS_KEYS, footer_links=[],
        run_history=False,
    )  # fmt: skip


def serve(
    store: Store | str, round: int, host: str = "127.0.0.1", port: int = 7860, per_prompt: int = 1,
    auth: list[tuple[str, str]] | None = None, title: str = TITLE, until_done: bool = False,
    guidelines: str | None = None,
) -> str:  # fmt: skip
    """Run the ranking page with uvicorn until stopped (or, `until_done`, until every prompt of the round has its
    rankings: the pipeline waits on this); prints its address and how many prompts are left; returns the address.

    The port is bound and the store read and written once before the page is announced: a port in use, a damaged,
    read-only or full store is one sentence here. A page that stops while prompts are left is one sentence too, so
    nothing after it (the export, the pipeline's next stage) runs on a round that was not ranked."""
    if host not in LOCAL_HOSTS and not auth:
        raise UserError(
            f"host {host} is an exposed address, so the ranking page needs a login: one name:password per labeller "
            "(recipes/label.py --login alice:secret; serve(auth=[...])), or bind 127.0.0.1."
        )
    import threading
    import time

    import uvicorn

    store = store if isinstance(store, Store) else Store(store, create=False)
    url = f"http://{'[::1]' if host == '::1' else host}:{port}/"
    left = store.progress("", round, per_prompt)[1]
    if until_done and not left:
        print(f"Round {round}: every prompt is ranked.", flush=True)
        return url
    store.check_usable()
    app = build_app(store, round, per_prompt, auth, title, guidelines)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listen(host, port)]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise UserError(f"the ranking page could not start on {url} (see the log above); nothing was ranked.")
    who = "log in with your labeller name" if auth else "give your name on the page"
    print(f"Ranking page for round {round}: {url} ({who}); {left} prompts left", flush=True)
    try:
        while thread.is_alive() and (left or not until_done):
            time.sleep(2 if until_done else 0.5)
            if not until_done:
                continue
            now = store.progress("", round, per_prompt)[1]
            if now != left:
                print(f"Round {round}: {now} prompts left ({url})", flush=True)
            left = now
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    if left and until_done:
        raise UserError(
            f"the ranking page stopped with {left} prompts of round {round} left (see the log above); nothing was "
            "exported: rerun it, or pass --wait false to export what is ranked now."
        )
    return url


def listen(host: str, port: int):
    """A socket bound to host:port for uvicorn (it listens on it), or one sentence saying why it cannot be."""
    import errno
    import socket

    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"port {port!r} is not a port number from 1 to 65535; pass --port 7860 or another free one.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT of the last run, not a live server
        sock.bind(address)
    except socket.gaierror as error:
        raise UserError(f"host {host} is not an address of this machine ({error.strerror}); use 127.0.0.1.") from None
    except OSError as error:
        sock.close()
        busy = f"another program (another label.py?) already listens there: stop it or pass --port {port % 65535 + 1}"
        hint = {
            errno.EADDRINUSE: busy,
            errno.EACCES: "ports below 1024 need administrator rights: pass --port 7860",
            errno.EADDRNOTAVAIL: "that address is not one of this machine's: use 127.0.0.1",
        }.get(error.errno, "choose another --host or --port")
        raise UserError(f"the ranking page cannot listen on {host}:{port} ({error.strerror}); {hint}.") from None
    return sock


def _basic_user(header: str | None, logins: dict[str, str]) -> str | None:
    """The username of a valid HTTP basic `Authorization` header, else None."""
    scheme, _, encoded = (header or "").partition(" ")
    try:
        name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # not base64, not ASCII, not UTF-8
        return None
    expected = logins.get(name)
    ok = scheme.lower() == "basic" and expected is not None
    return name if ok and secrets.compare_digest(password.encode(), expected.encode()) else None
