"""The ranking page's server under faults and through the real command line: every `--login` honoured, a stopped page
never followed by an export, a full disk while serving a 503 with nothing lost, bodies over the limit refused; and
the page itself asking the labeller's name once, marking cut answers and folding out the guidelines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import CONFIGS, REPO
from test_label_page import Page, browser, free_port, make_store, saved, serving_in_thread, wait_until  # noqa: F401

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.feedback.store import Store


def test_every_login_given_on_the_command_line_gets_in_and_a_stopped_page_exports_nothing(tmp_path):
    """`label.py --login alice:secret --login bob:pw` as the README documents, through the real CLI parsing: both
    get in, a wrong password does not; Ctrl-C stops the page with one sentence and no pairs are exported."""
    make_store(tmp_path / "feedback.sqlite")
    port = free_port()
    argv = [sys.executable, "recipes/label.py", "--config", str(CONFIGS / "label.yaml"), "--store",
            str(tmp_path / "feedback.sqlite"), "--port", str(port), "--host", "127.0.0.1", "--heldout_pairs", "null",
            "--login", "alice:secret", "--login", "bob:pw", "--output_dir", str(tmp_path / "pairs")]  # fmt: skip
    server = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/progress"
    try:
        wait_until(lambda: httpx.get(base, auth=("alice", "secret")).status_code == 200, 90, "the page")
        assert httpx.get(base, auth=("bob", "pw")).json() == {"done": 0, "left": 2}
        assert httpx.get(base, auth=("bob", "secret")).status_code == 401
        assert httpx.get(base).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert server.returncode == 130 and len(errors) == 1 and "interrupted" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr and not (tmp_path / "pairs").exists()


def test_a_page_that_stops_with_prompts_left_stops_the_export(tmp_path, monkeypatch):
    """The server thread ends on its own (a crash after start): one sentence, and the export never runs."""
    import uvicorn

    make_store(tmp_path / "feedback.sqlite")

    def starts_then_dies(self, sockets=None):
        self.started = True
        time.sleep(0.2)
        for sock in sockets or []:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", starts_then_dies)
    from rlhf_recipes.feedback import app

    build_app, given = app.build_app, []  # what label.yaml's `guidelines:` file gives the page (browser test: shown)
    monkeypatch.setattr(app, "build_app", lambda *args: given.append(args[-1]) or build_app(*args))
    argv = ["--config", str(CONFIGS / "label.yaml"), "--store", str(tmp_path / "feedback.sqlite"), "--port",
            str(free_port()), "--heldout_pairs", "null", "--output_dir", str(tmp_path / "pairs")]  # fmt: skip
    with pytest.raises(
        UserError, match="the ranking page stopped with 2 prompts of round 1 left .* nothing was exported"
    ):
        stages.get("label").run(argv)
    assert not (tmp_path / "pairs").exists()
    assert given == [(CONFIGS / "label-guidelines.md").read_text(encoding="utf-8")]


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path):
    from rlhf_recipes.feedback.app import MAX_BODY, build_app

    store, _ = make_store(tmp_path / "feedback.sqlite")
    task = store.next_task("api", 1)
    with serving_in_thread(build_app(store, 1)) as base:
        body = {"ticket": task.ticket, "ranks": [1, 2, 3, 4], "status": "ranked", "pad": "x" * MAX_BODY}
        assert httpx.post(f"{base}/api/rank", json=body).status_code == 413
        page = httpx.post(f"{base}/gradio_api/queue/join", content=b"x" * (MAX_BODY + 1))
        assert page.status_code == 413
    assert saved(store) == {}


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_serving_is_a_503_and_loses_nothing(small_disk, capfd):
    """The disk under the store fills while people rank: the API answers 503 with one sentence and the page says
    so; nothing was saved, the ticket stays unused; with space again, the same answer is saved."""
    from rlhf_recipes.feedback.app import build_app
    from rlhf_recipes.feedback.page import RankingPage

    store, _ = make_store(small_disk / "feedback.sqlite")
    big = "x" * 200_000  # one ranking's row cannot be made this big; a prompt's can: fill the WAL first
    tasks = [store.next_task(name, 1, per_prompt=2) for name in ("api", "page")]
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 8 * 1024))
    with pytest.raises(Exception, match="disk is full"):  # the store refuses writes as the disk is full
        store.add_prompt([{"role": "user", "content": big}])
    with serving_in_thread(build_app(store, 1, per_prompt=2)) as base:
        body = {"ticket": tasks[0].ticket, "ranks": [1, 2, 3, 4], "status": "ranked"}
        refused = httpx.post(f"{base}/api/rank", json=body)
        assert refused.status_code == 503 and "the disk holding it is full" in refused.json()["detail"]
        assert "nothing was saved" in refused.json()["detail"] and tasks[0].ticket not in refused.text
        page = RankingPage(store, 1, 2, login=False)
        page.build("t")
        shown = page.answer(None, "page", tasks[1], [], tasks[1].ticket, "ranked", [4, 3, 2, 1])
        assert "the disk holding it is full" in shown[page.outputs.index(page.message)]
        assert saved(store) == {}
        filler.unlink()
        assert httpx.post(f"{base}/api/rank", json=body).status_code == 200
        assert httpx.post(f"{base}/api/rank", json=body).status_code == 409  # a replay after the save
    assert [labeller for _, labeller in saved(store)] == ["api"]
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------- the page itself
def test_the_page_asks_the_name_once_marks_cut_answers_and_shows_the_guidelines(tmp_path, browser):  # noqa: F811
    store, ids = make_store(tmp_path / "feedback.sqlite")
    cut_prompt = store.add_prompt([{"role": "user", "content": "Tell me a long story."}])
    texts = [f"Story {i}: once upon a time" for i in range(4)]
    ids.update(
        zip(texts, store.add_candidates(cut_prompt, 1, texts, "m", cut=[True, False, True, False]), strict=True)
    )
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("Right before wrong: **the facts first**.")
    port = free_port()
    code = (
        "import sys; from rlhf_recipes.feedback.app import serve; from pathlib import Path; "
        "serve(sys.argv[1], round=1, port=int(sys.argv[2]), guidelines=Path(sys.argv[3]).read_text())"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "feedback.sqlite"), str(port), str(guidelines)]
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: httpx.get(f"{base}api/progress").status_code == 200, 60)
        page = Page(browser, ids)
        browser.get(base)  # no ?labeller=: the name is asked, nothing else to answer yet
        wait_until(lambda: "Your name, please" in page.text("prompt"), 20, "the name asked")
        panel = browser.find_element(page.by.ID, "guidelines")
        panel.find_element(page.by.TAG_NAME, "button").click()  # folded: one click shows the labelling guidelines
        wait_until(lambda: "the facts first" in panel.text, 10, "the guidelines")
        name = browser.find_element(page.by.CSS_SELECTOR, "#name input")
        name.send_keys("dana\n")
        page.wait_progress(0)
        shown = page.shown()
        assert page.type_keys("1234") <= 5
        page.wait_progress(1)
        browser.refresh()  # the name is kept by the browser: not asked again
        page.wait_progress(1)
        assert "Your name" not in page.text("prompt")
        assert not any(box.is_displayed() for box in browser.find_elements(page.by.CSS_SELECTOR, "#name input"))
        assert page.type_keys("s") == 2  # skip the second prompt: the third has the cut answers
        wait_until(lambda: "Tell me a long story." in page.text("prompt"), 20, "the prompt with cut answers")
        answers = [page.text(f"answer-text-{letter}") for letter in "ABCD"]
        marked = {text.splitlines()[-1]: "cut short" in text for text in answers}
        assert marked == dict(zip(texts, [True, False, True, False], strict=True))
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    rows = Store(str(tmp_path / "feedback.sqlite")).rankings()
    assert [(r["labeller"], r["status"]) for r in rows] == [("dana", "ranked"), ("dana", "skipped")] and len(
        shown
    ) == 4
