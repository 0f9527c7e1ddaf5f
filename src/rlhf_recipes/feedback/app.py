"""The ranking page: people rank a prompt's K answers, best first, and each ranking is saved the moment it is sent.

    from rlhf_recipes.feedback.app import serve
    serve("feedback.sqlite", round=1)  # http://127.0.0.1:7860/?labeller=NAME

A Gradio page mounted on a FastAPI app, plus a small JSON API for scripts: `POST /api/rank` with
`{"ticket", "ranks", "status"}` and `GET /api/progress?labeller=NAME`. The page shows the answers in the store's
shuffled order as A, B, C, D (no model names). A labeller ranks them with one click per answer, or from the keyboard:
the box under the answers has focus, and typing the ranks of A, B, C, D as digits (`2143`, ties `1122`) then Enter
saves: one prompt of 4 answers in 5 key presses. `s` skips, `f` flags the prompt unsafe, `b` goes back to the prompt
before to change its ranking (the resubmit replaces it).
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

from ..cli import UserError
from .store import HUMAN, Rejected, Store, Task

TITLE = "Rank the answers"
LETTERS = "ABCDEFGHI"  # one digit key per answer: at most 9 answers a prompt
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
KEYS_HELP = "Ranks of A, B, C… as digits, best = 1, ties share a digit (2143, 1122); s skip, f unsafe, b back; Enter"
FOCUS_KEYS = "() => { const box = document.querySelector('#keys textarea, #keys input'); if (box) box.focus(); }"
MAX_BODY = 256 * 1024  # bytes a request may send: a ranking is ~100, the page's largest event a few thousand


def parse_logins(pairs: list[str]) -> list[tuple[str, str]]:
    """`name:password` strings (one `--login` each) as (name, password) pairs; every one is honoured, and an empty
    name or password, or a name given twice, is one sentence."""
    logins = []
    for pair in pairs:
        name, colon, password = pair.partition(":")
        if not colon or not name.strip() or not password:
            raise UserError(
                f"login {pair!r} must be name:password with neither part empty (one --login per labeller, e.g. "
                "--login alice:secret --login bob:pw)."
            )
        if name in dict(logins):
            raise UserError(f"login: the name {name!r} is given twice; give each labeller one name:password.")
        logins.append((name, password))
    return logins


class RankBody(BaseModel):
    """The body of `POST /api/rank`: strict types, so `"2"` or `true` for a rank is a 422 and saves nothing."""

    model_config = ConfigDict(extra="forbid")
    ticket: StrictStr
    ranks: list[StrictInt] | None = None
    status: Literal["ranked", "skipped", "unsafe"] = "ranked"


def build_app(
    store: Store, round: int, per_prompt: int = 1, auth: list[tuple[str, str]] | None = None, title: str = TITLE
) -> fastapi.FastAPI:
    """The FastAPI app: the JSON API under /api/ and the ranking page at /, both behind `auth` when it is given."""
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

    page = RankingPage(store, round, per_prompt, login=bool(logins))
    return gr.mount_gradio_app(
        app, page.build(title), path="/", auth=list(logins.items()) or None, js=FOCUS_KEYS, footer_links=[],
        run_history=False,
    )  # fmt: skip


def serve(
    store: Store | str, round: int, host: str = "127.0.0.1", port: int = 7860, per_prompt: int = 1,
    auth: list[tuple[str, str]] | None = None, title: str = TITLE, until_done: bool = False,
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
    app = build_app(store, round, per_prompt, auth, title)
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


class RankingPage:
    """The Gradio page. Its state per browser session: the Task shown and the prompts answered so far (for Back)."""

    def __init__(self, store: Store, round: int, per_prompt: int, login: bool):
        self.store, self.round, self.per_prompt, self.login = store, round, per_prompt, login

    def build(self, title: str) -> gr.Blocks:
        with gr.Blocks(title=title, analytics_enabled=False) as demo:
            task, history = gr.State(None), gr.State([])
            gr.Markdown(f"## {title}")
            progress = gr.Markdown(elem_id="progress")
            prompt = gr.Markdown(elem_id="prompt")
            columns, texts, ranks = [], [], []
            for letter in LETTERS:
                with gr.Column(visible=False, elem_id=f"answer-{letter}", variant="panel") as column:
                    texts.append(gr.Markdown(elem_id=f"answer-text-{letter}"))
                    rank = gr.Radio([1, 2], label=f"Rank of {letter}", elem_id=f"rank-{letter}", interactive=True)
                    ranks.append(rank)
                columns.append(column)
            message = gr.Markdown(elem_id="message")
            keys = gr.Textbox(label="Keys", placeholder=KEYS_HELP, elem_id="keys", autofocus=True, max_lines=1)
            with gr.Row():
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
                skip = gr.Button("Skip", elem_id="skip")
                unsafe = gr.Button("Flag unsafe", variant="stop", elem_id="unsafe")
                back = gr.Button("Back", elem_id="back")
            # the ticket of the prompt on the screen when an event fired: an answer to a prompt the page has since
            # moved on from (a click queued behind an Enter) is refused instead of saved for the new prompt
            seen = gr.Textbox(visible=False, elem_id="ticket")
            self.outputs = [task, history, seen, progress, prompt, message, keys, *columns, *texts, *ranks]
            events = [
                (demo.load, self.first, []),
                (submit.click, self.clicked, [task, history, seen, *ranks]),
                (keys.submit, self.typed, [task, history, seen, keys]),
                (skip.click, self.skipped, [task, history, seen]),
                (unsafe.click, self.unsafe, [task, history, seen]),
                (back.click, self.back, [task, history, seen]),
            ]
            for listener, fn, inputs in events:
                # one queue for every event of every session: answers are saved one at a time, in order
                options = dict(api_visibility="private", show_progress="hidden", concurrency_id="store")
                event = listener(fn, inputs, self.outputs, **options)
                event.then(None, js=FOCUS_KEYS)  # the keys box has focus whenever a prompt appears
        return demo

    # ------------------------------------------------------------------------------ event handlers (request first)
    def first(self, request: gr.Request):
        return self.show(self.store.next_task(self.labeller(request), self.round, self.per_prompt), [], request)

    def clicked(self, request: gr.Request, task: Task | None, history: list, seen: str, *ranks):
        ranks = list(ranks[: len(task.answers)]) if task else []
        if None in ranks:
            missing = ", ".join(LETTERS[i] for i, r in enumerate(ranks) if r is None)
            return self.error(f"Give every answer a rank before submitting (missing: {missing}).")
        return self.answer(request, task, history, seen, "ranked", ranks)

    def typed(self, request: gr.Request, task: Task | None, history: list, seen: str, keys: str):
        text = "".join(keys.split()).replace(",", "").lower()
        actions = {"s": self.skipped, "f": self.unsafe, "b": self.back}
        if text in actions or task is None:
            return actions.get(text, self.skipped)(request, task, history, seen)
        count = len(task.answers)
        if not text.isdigit() or len(text) != count or not all(1 <= int(d) <= count for d in text):
            return self.error(
                f"Type {count} digits from 1 to {count}, the ranks of A–{LETTERS[min(count, 9) - 1]} in order"
                f" ({''.join(str(i + 1) for i in range(count))}; ties share a digit), or s to skip, f to flag"
                f" unsafe, b to go back; {keys.strip()!r} is not that."
            )
        return self.answer(request, task, history, seen, "ranked", [int(d) for d in text])

    def skipped(self, request: gr.Request, task: Task | None, history: list, seen: str):
        return self.answer(request, task, history, seen, "skipped", None)

    def unsafe(self, request: gr.Request, task: Task | None, history: list, seen: str):
        return self.answer(request, task, history, seen, "unsafe", None)

    def back(self, request: gr.Request, task: Task | None, history: list, seen: str):
        if not history:
            return self.error("There is no earlier prompt in this session to go back to.")
        labeller = self.labeller(request)
        reopened = self.store.reopen(labeller, history[-1], self.round)
        before = self.earlier_ranks(reopened, labeller)
        note = "it was skipped or flagged" if before is None else "its ranking is filled in"
        message = f"Back to your previous prompt ({note}); what you submit now replaces your earlier answer."
        return self.show(reopened, history[:-1], request, message, before)

    # ------------------------------------------------------------------------------------------------- helpers
    def answer(self, request, task: Task | None, history: list, seen: str, status: str, ranks: list | None):
        """Save the labeller's answer to the task shown, then show the next prompt; nothing is saved on an error."""
        if task is None:
            return self.error("There is no prompt to answer; reload the page to look for new ones.")
        if seen != task.ticket:
            return self.error("The page had moved on to another prompt before that answer came; answer this one.")
        try:
            self.store.submit(task.ticket, ranks, status)
        except Rejected as error:
            return self.error(error.message[:1].upper() + error.message[1:])
        saved = {"ranked": "Saved.", "skipped": "Skipped.", "unsafe": "Flagged as unsafe."}[status]
        history = [*[p for p in history if p != task.prompt_id], task.prompt_id]
        following = self.store.next_task(self.labeller(request), self.round, self.per_prompt)
        return self.show(following, history, request, saved)

    def show(self, task: Task | None, history: list, request, message: str = "", preset: list | None = None):
        """Every output for a newly shown task (or for "nothing left" when task is None)."""
        done, left = self.store.progress(self.labeller(request), self.round, self.per_prompt)
        count = len(task.answers) if task else 0
        if task is None:
            prompt = f"Nothing left to rank in round {self.round}: thank you. Reload the page later for new prompts."
        else:
            prompt = render_prompt(task.messages)
        if count > len(LETTERS):
            message = f"This prompt has {count} answers and the page shows at most {len(LETTERS)}; please skip it."
        columns = [gr.Column(visible=i < count) for i in range(len(LETTERS))]
        texts = [f"**{LETTERS[i]}**\n\n{task.answers[i]}" if i < count else "" for i in range(len(LETTERS))]
        ranks = [
            gr.Radio(choices=list(range(1, count + 1)) or [1], value=preset[i] if preset and i < count else None)
            for i in range(len(LETTERS))
        ]
        progress = f"done {done} · left {left}"
        return [task, history, task.ticket if task else "", progress, prompt, message, "", *columns, *texts, *ranks]

    def error(self, message: str):
        """One sentence on the page and the keys box emptied to type again; every other output stays as it is."""
        return [gr.skip()] * 5 + [message, ""] + [gr.skip()] * (len(self.outputs) - 7)

    def labeller(self, request: gr.Request | None) -> str:
        if self.login:
            return request.username
        params = dict(request.query_params) if request is not None else {}
        return (params.get("labeller") or "local").strip()[:200] or "local"

    def earlier_ranks(self, task: Task, labeller: str) -> list[int] | None:
        """The labeller's earlier ranking of the task's prompt as one rank per answer in the new shown order."""
        rows = [
            r for r in self.store.rankings([task.round], HUMAN)
            if r["prompt_id"] == task.prompt_id and r["labeller"] == labeller
        ]  # fmt: skip
        if not rows or rows[-1]["status"] != "ranked":
            return None
        rank = {c: level for level, tier in enumerate(rows[-1]["ranking"], 1) for c in tier}
        return [rank[c] for c in task.candidate_ids]


def render_prompt(messages: list[dict]) -> str:
    """The last user turn as the prompt, with any earlier turns above it."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    earlier = [f"**{m.get('role', '?')}:** {m.get('content', '')}" for m in messages[:last]]
    head = "**Earlier in the conversation**\n\n" + "\n\n".join(earlier) + "\n\n---\n\n" if earlier else ""
    return f"{head}**Prompt**\n\n{messages[last].get('content', '') if messages else ''}"


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
