"""The ranking page in a real headless Chromium, its JSON API and its login, on a real SQLite store.

The browser test runs the server as a subprocess so that it can SIGKILL it mid-session and check that every ranking
submitted before is still in the store; the API tests run uvicorn in a thread. Set RLHF_RECIPES_SCREENSHOT=PATH to
keep a screenshot of the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rlhf_recipes.errors import UserError
from rlhf_recipes.feedback.store import Store

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LETTERS = "ABCD"


# ---------------------------------------------------------------------------------------------------- helpers
def make_store(path: Path) -> tuple[Store, dict[str, int]]:
    """2 prompts x 4 answers in round 1; returns the store and each answer's candidate id by its (unique) text."""
    store = Store(str(path))
    ids = {}
    for p, question in enumerate(["Name a prime number.", "What colour is the sky?"]):
        messages = [{"role": "user", "content": question}]
        if p == 1:  # a conversation: the earlier turns are shown above the prompt
            messages = [
                {"role": "user", "content": "Hi there."},
                {"role": "assistant", "content": "Hello!"},
                *messages,
            ]
        prompt_id = store.add_prompt(messages)
        texts = [f"Answer {p}.{i}: sentence number {i}." for i in range(4)]
        ids.update(zip(texts, store.add_candidates(prompt_id, 1, texts, model="tiny-model"), strict=True))
    return store, ids


def tiers(ranks: list[int], shown: list[int]) -> list[list[int]]:
    """The stored ranking (tiers of candidate ids, best first) of one rank per shown answer."""
    return [[c for c, r in zip(shown, ranks, strict=True) if r == level] for level in sorted(set(ranks))]


def prompt_of(store: Store, shown: list[int]) -> int:
    """The prompt whose answers these candidate ids are."""
    (prompt_id,) = {c["prompt_id"] for p in store.prompt_ids(1) for c in store.candidates(p, 1) if c["id"] in shown}
    return prompt_id


def saved(store: Store) -> dict[tuple[int, str], tuple[str, list]]:
    return {(r["prompt_id"], r["labeller"]): (r["status"], r["ranking"]) for r in store.rankings()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float = 30, what: str = "the server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := condition():
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def serving_in_thread(app):
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Chromium and chromedriver at {CHROMIUM} and {CHROMEDRIVER}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1500"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


class Page:
    """The ranking page in one browser tab, read and driven through the elem_ids app.py gives its components."""

    def __init__(self, driver, ids: dict[str, int]):
        from selenium.webdriver.common.by import By

        self.driver, self.ids, self.by = driver, ids, By

    def text(self, elem_id: str) -> str:
        return self.driver.find_element(self.by.ID, elem_id).text

    def shown(self) -> list[int]:
        """The candidate ids of the answers on the page, in the order shown (A, B, C, D)."""
        answers = [self.text(f"answer-text-{letter}").splitlines() for letter in LETTERS]
        assert [a[0] for a in answers] == list(LETTERS), answers
        return [self.ids[a[-1]] for a in answers]

    def wait_progress(self, done: int) -> None:
        wait_until(lambda: self.text("progress").startswith(f"done {done} "), 20, f"done {done}")

    def keys_box(self):
        return self.driver.find_element(self.by.CSS_SELECTOR, "#keys input")

    def wait_keys_focused(self):
        """The keys box has focus: the labeller can type without touching the mouse."""
        box = self.keys_box()
        wait_until(lambda: self.driver.switch_to.active_element == box, 10, "focus on the keys box")
        return box

    def click_ranks(self, ranks: list[int]) -> None:
        for letter, rank in zip(LETTERS, ranks, strict=True):
            self.driver.find_element(self.by.CSS_SELECTOR, f"#rank-{letter} input[value='{rank}']").click()

    def checked(self) -> list[int | None]:
        values = []
        for letter in LETTERS:
            boxes = self.driver.find_elements(self.by.CSS_SELECTOR, f"#rank-{letter} input:checked")
            values.append(int(boxes[0].get_attribute("value")) if boxes else None)
        return values

    def type_keys(self, keys: str) -> int:
        """Type into the focused keys box one key at a time, then Enter; returns the key presses used."""
        from selenium.webdriver.common.keys import Keys

        box, presses = self.wait_keys_focused(), 0
        for key in [*keys, Keys.ENTER]:
            box.send_keys(key)
            presses += 1
        return presses


def start_server(store_path: Path, port: int, per_prompt: int) -> subprocess.Popen:
    code = (
        "import sys; from rlhf_recipes.feedback.app import serve; "
        "serve(sys.argv[1], round=1, port=int(sys.argv[2]), per_prompt=int(sys.argv[3]))"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(store_path), str(port), str(per_prompt)])


# ------------------------------------------------------------------------------------------------------ tests
def test_rank_in_browser_by_clicks_and_keys_and_survive_sigkill(tmp_path, browser):
    store, ids = make_store(tmp_path / "feedback.sqlite")
    port = free_port()
    # 2 people per prompt: alice ranks both prompts, then bob and carol (at once) get one each
    server = start_server(tmp_path / "feedback.sqlite", port, per_prompt=2)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/api/progress").status_code == 200, 60)
        page, expected = Page(browser, ids), {}

        # alice: the first prompt with clicks; the page shows the prompt and 4 lettered answers, no model names
        browser.get(f"{base}/?labeller=alice")
        page.wait_progress(0)
        assert page.text("progress") == "done 0 · left 2"
        assert "Name a prime number." in page.text("prompt") and "tiny-model" not in browser.page_source
        first = page.shown()
        browser.save_screenshot(str(tmp_path / "label-page.png"))
        if os.environ.get("RLHF_RECIPES_SCREENSHOT"):
            Path(os.environ["RLHF_RECIPES_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "label-page.png", os.environ["RLHF_RECIPES_SCREENSHOT"])
        page.click_ranks([3, 1, 4, 2])
        browser.find_element(page.by.ID, "submit").click()
        page.wait_progress(1)
        expected[prompt_of(store, first), "alice"] = ("ranked", tiers([3, 1, 4, 2], first))
        assert saved(store) == expected

        # the second prompt with keys: the box has focus again after the click, 4 digits + Enter = 5 presses
        assert "Hi there." in page.text("prompt") and "What colour is the sky?" in page.text("prompt")
        second = page.shown()
        assert page.type_keys("21") == 3  # wrong number of digits: one sentence on the page, nothing saved
        wait_until(lambda: page.text("message").startswith("Type 4 digits"), 10, "the error")
        assert saved(store) == expected and page.shown() == second
        assert page.type_keys("2143") <= 5
        page.wait_progress(2)
        second_id = prompt_of(store, second)
        expected[second_id, "alice"] = ("ranked", tiers([2, 1, 4, 3], second))
        assert saved(store) == expected
        wait_until(lambda: "Nothing left to rank" in page.text("prompt"), 10, "the end of the round")

        # Back reopens the last prompt (in a new shuffle, the earlier ranking filled in); the resubmit replaces it
        browser.find_element(page.by.ID, "back").click()
        wait_until(lambda: "What colour is the sky?" in page.text("prompt"), 10, "the reopened prompt")
        reshown = page.shown()
        assert sorted(reshown) == sorted(second)
        rank_of = {c: r for c, r in zip(second, [2, 1, 4, 3], strict=True)}
        wait_until(lambda: page.checked() == [rank_of[c] for c in reshown], 10, "the earlier ranking filled in")
        assert page.type_keys("1122") <= 5  # a tie: A and B first, C and D second
        wait_until(lambda: "Nothing left to rank" in page.text("prompt"), 10, "the end of the round again")
        expected[second_id, "alice"] = ("ranked", tiers([1, 1, 2, 2], reshown))
        assert saved(store) == expected and page.text("progress") == "done 2 · left 2"

        # bob and carol at once, each in their own tab (own session): each gets a different prompt
        tabs = {}
        for name in ("bob", "carol"):
            browser.switch_to.new_window("tab")
            browser.get(f"{base}/?labeller={name}")
            page.wait_progress(0)
            tabs[name] = (browser.current_window_handle, page.shown())
        assert set(tabs["bob"][1]) != set(tabs["carol"][1])
        browser.switch_to.window(tabs["bob"][0])
        assert page.type_keys("4321") <= 5
        page.wait_progress(1)
        browser.switch_to.window(tabs["carol"][0])
        assert page.type_keys("f") == 2  # flag unsafe from the keyboard...
        wait_until(lambda: "Nothing left to rank" in page.text("prompt"), 10, "carol's end of the round")
        carol_prompt, bob_prompt = prompt_of(store, tabs["carol"][1]), prompt_of(store, tabs["bob"][1])
        assert saved(store)[carol_prompt, "carol"] == ("unsafe", [])
        assert page.type_keys("b") == 2  # ...then back to it and rank it instead (nothing filled in)
        wait_until(lambda: "Nothing left" not in page.text("prompt") and page.checked() == [None] * 4, 10, "back")
        carol_shown = page.shown()
        assert page.type_keys("1234") <= 5
        wait_until(lambda: saved(store)[carol_prompt, "carol"][0] == "ranked", 10, "carol's ranking")
        expected[bob_prompt, "bob"] = ("ranked", tiers([4, 3, 2, 1], tabs["bob"][1]))
        expected[carol_prompt, "carol"] = ("ranked", tiers([1, 2, 3, 4], carol_shown))
        assert saved(store) == expected
    finally:
        server.send_signal(signal.SIGKILL)  # killed mid-session: the browser still has the page open
        server.wait(10)
    store.close()
    assert saved(Store(str(tmp_path / "feedback.sqlite"))) == expected
    assert len(expected) == 4


def test_api_refuses_bad_and_replayed_requests_and_changes_nothing(tmp_path):
    from rlhf_recipes.feedback.app import build_app

    store, _ = make_store(tmp_path / "feedback.sqlite")
    task = store.next_task("api", 1)
    with serving_in_thread(build_app(store, 1)) as base:
        rank = f"{base}/api/rank"
        refused = [
            (httpx.post(rank, content=b"{not json", headers={"content-type": "application/json"}), 422),
            (httpx.post(rank, json={"ranks": [1, 2, 3, 4]}), 422),  # no ticket
            (httpx.post(rank, json={"ticket": 7, "ranks": [1, 2, 3, 4]}), 422),
            (httpx.post(rank, json={"ticket": task.ticket, "ranks": ["1", "2", "3", "4"]}), 422),
            (httpx.post(rank, json={"ticket": task.ticket, "ranks": [True, 2, 3, 4]}), 422),
            (httpx.post(rank, json={"ticket": task.ticket, "ranks": [1, 2, 3, 4], "status": "maybe"}), 422),
            (httpx.post(rank, json={"ticket": task.ticket, "ranks": [1, 2, 3]}), 422),  # one rank short
            (httpx.post(rank, json={"ticket": task.ticket, "ranks": [0, 1, 2, 3]}), 422),
            (httpx.post(rank, json={"ticket": "no-such-ticket", "ranks": [1, 2, 3, 4]}), 404),
        ]
        for response, status in refused:
            assert response.status_code == status, response.text
            assert isinstance(response.json()["detail"], str | list)
        assert "one rank for each of the 4 answers" in refused[-3][0].json()["detail"]
        assert store.rankings() == []

        # the ticket is still good after all that; used once, a replay is a 409 and changes nothing
        response = httpx.post(rank, json={"ticket": task.ticket, "ranks": [2, 1, 2, 3], "status": "ranked"})
        assert response.status_code == 200, response.text
        before = store.rankings()
        assert [r["id"] for r in before] == [response.json()["saved"]]
        assert before[0]["ranking"] == tiers([2, 1, 2, 3], task.candidate_ids)
        replay = httpx.post(rank, json={"ticket": task.ticket, "ranks": [1, 2, 3, 4]})
        assert replay.status_code == 409 and "already submitted" in replay.json()["detail"]
        assert store.rankings() == before

        # skipping needs no ranks; progress counts it as the labeller's, and the prompt stays left for someone else
        other = store.next_task("api", 1)
        assert httpx.post(rank, json={"ticket": other.ticket, "status": "skipped"}).status_code == 200
        assert [r["status"] for r in store.rankings()] == ["ranked", "skipped"]
        assert httpx.get(f"{base}/api/progress", params={"labeller": "api"}).json() == {"done": 2, "left": 1}
        assert httpx.get(f"{base}/api/progress", params={"labeller": "else"}).json() == {"done": 0, "left": 1}
        assert store.next_task("api", 1) is None and store.next_task("else", 1).prompt_id == other.prompt_id


def test_login_required_on_an_exposed_address_and_enforced(tmp_path, browser):
    from rlhf_recipes.feedback.app import build_app, serve

    store, ids = make_store(tmp_path / "feedback.sqlite")
    with pytest.raises(UserError, match="exposed address, so the ranking page needs a login"):
        serve(store, 1, host="0.0.0.0")

    task = store.reopen("dora", store.prompt_ids(1)[1], 1)  # dora works from a script; alice from the page
    with serving_in_thread(build_app(store, 1, auth=[("alice", "apple"), ("dora", "date")])) as base:
        body = {"ticket": task.ticket, "ranks": [1, 2, 3, 4]}
        assert httpx.post(f"{base}/api/rank", json=body).status_code == 401
        assert httpx.post(f"{base}/api/rank", json=body, auth=("dora", "wrong")).status_code == 401
        assert httpx.post(f"{base}/api/rank", content=b"{", auth=("dora", "wrong")).status_code == 401
        assert httpx.get(f"{base}/api/progress").status_code == 401
        assert httpx.get(f"{base}/config").status_code == 401  # the page's own routes are behind the login too
        assert store.rankings() == []
        assert httpx.post(f"{base}/api/rank", json=body, auth=("dora", "date")).status_code == 200
        assert httpx.get(f"{base}/api/progress", auth=("dora", "date")).json() == {"done": 1, "left": 1}

        # on the page the labeller is the login name, whatever ?labeller= says
        page = Page(browser, ids)
        browser.get(f"{base}/?labeller=mallory")
        name, password = wait_until(lambda: browser.find_elements(page.by.CSS_SELECTOR, "input"), 20, "the login")
        name.send_keys("alice")
        password.send_keys("apple")
        browser.find_element(page.by.XPATH, "//button[normalize-space()='Login']").click()
        page.wait_progress(0)
        shown = page.shown()
        assert page.type_keys("1243") <= 5
        wait_until(lambda: len(store.rankings()) == 2, 10, "alice's ranking")
        assert saved(store)[store.prompt_ids(1)[0], "alice"] == ("ranked", tiers([1, 2, 4, 3], shown))
        assert "mallory" not in {who for _, who in saved(store)}
