"""The ranking page (Gradio): a prompt and its K answers shuffled as A, B, C, D, no model names; ranks by one click
per answer or typed as digits (`2143`, ties `1122`) then Enter, `s` skip, `f` unsafe, `b` back. The labeller's name
comes from the login, `?labeller=NAME`, or is asked once on the page (kept in the browser); answers that sampling cut
at the length limit are marked; the guidelines (a Markdown file, `guidelines:` in label.yaml) fold out above.
"""

from __future__ import annotations

import gradio as gr

from .store import HUMAN, Rejected, Store, Task

LETTERS = "ABCDEFGHI"  # one digit key per answer: at most 9 answers a prompt
KEYS_HELP = "Ranks of A, B, C… as digits, best = 1, ties share a digit (2143, 1122); s skip, f unsafe, b back; Enter"
FOCUS_KEYS = "() => { const box = document.querySelector('#keys textarea, #keys input'); if (box) box.focus(); }"
NAME_HELP = "asked once: it tells your rankings from other people's (kept in this browser)"
CUT_MARK = "*(cut short: sampling stopped at the length limit before this answer ended)*"


class RankingPage:
    """The Gradio page. Its state per browser session: the Task shown, the prompts answered so far (for Back) and the
    labeller's name (a login's name, `?labeller=NAME`, or asked once on the page and kept in the browser)."""

    def __init__(self, store: Store, round: int, per_prompt: int, login: bool, guidelines: str | None = None):
        self.store, self.round, self.per_prompt, self.login = store, round, per_prompt, login
        self.guidelines = guidelines

    def build(self, title: str) -> gr.Blocks:
        with gr.Blocks(title=title, analytics_enabled=False) as demo:
            task, history = gr.State(None), gr.State([])
            who = gr.BrowserState("", storage_key="rlhf-recipes-labeller")  # the name typed once, kept by the browser
            gr.Markdown(f"## {title}")
            if self.guidelines:
                with gr.Accordion("Guidelines: how to rank", open=False, elem_id="guidelines"):
                    gr.Markdown(self.guidelines)
            with gr.Row(visible=False, elem_id="name-row") as name_row:
                name = gr.Textbox(label="Your name", placeholder=NAME_HELP, elem_id="name", max_lines=1, scale=4)
                start = gr.Button("Start", variant="primary", elem_id="start", scale=1)
            progress = gr.Markdown(elem_id="progress")
            prompt = gr.Markdown(elem_id="prompt")
            columns, texts, ranks = [], [], []
            for letter in LETTERS:
                with gr.Column(visible=False, elem_id=f"answer-{letter}", variant="panel") as column:
                    texts.append(gr.Markdown(elem_id=f"answer-text-{letter}"))
                    rank = gr.Radio([1, 2], label=f"Rank of {letter}", elem_id=f"rank-{letter}", interactive=True)
                    ranks.append(rank)
                columns.append(column)
            self.message = gr.Markdown(elem_id="message")
            self.keys = gr.Textbox(label="Keys", placeholder=KEYS_HELP, elem_id="keys", autofocus=True, max_lines=1)
            with gr.Row():
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
                skip = gr.Button("Skip", elem_id="skip")
                unsafe = gr.Button("Flag unsafe", variant="stop", elem_id="unsafe")
                back = gr.Button("Back", elem_id="back")
            # the ticket of the prompt on the screen when an event fired: an answer to a prompt the page has since
            # moved on from (a click queued behind an Enter) is refused instead of saved for the new prompt
            seen = gr.Textbox(visible=False, elem_id="ticket")
            self.outputs = [task, history, seen, who, name_row, progress, prompt, self.message, self.keys]
            self.outputs += [*columns, *texts, *ranks]
            shown = [who, task, history, seen]
            events = [
                (demo.load, self.first, [who]),
                (start.click, self.named, [name]),
                (name.submit, self.named, [name]),
                (submit.click, self.clicked, [*shown, *ranks]),
                (self.keys.submit, self.typed, [*shown, self.keys]),
                (skip.click, self.skipped, shown),
                (unsafe.click, self.unsafe, shown),
                (back.click, self.back, shown),
            ]
            for listener, fn, inputs in events:
                # one queue for every event of every session: answers are saved one at a time, in order
                options = dict(api_visibility="private", show_progress="hidden", concurrency_id="store")
                event = listener(fn, inputs, self.outputs, **options)
                event.then(None, js=FOCUS_KEYS)  # the keys box has focus whenever a prompt appears
        return demo

    # ------------------------------------------------------------------------------ event handlers (request first)
    def first(self, request: gr.Request, who: str):
        labeller = self.labeller(request, who)
        if labeller is None:  # no login, no ?labeller=, never given on this browser: ask once
            return self.show(None, [], None, "")
        return self.fetch(labeller, [], "")

    def named(self, request: gr.Request, name: str):
        name = " ".join((name or "").split())[:200]
        if not name:
            return self.error("Type your name first: it tells your rankings from other people's.")
        return self.fetch(self.labeller(request, name), [], f"Hello {name}: your rankings are saved under this name.")

    def clicked(self, request: gr.Request, who: str, task: Task | None, history: list, seen: str, *ranks):
        ranks = list(ranks[: len(task.answers)]) if task else []
        if None in ranks:
            missing = ", ".join(LETTERS[i] for i, r in enumerate(ranks) if r is None)
            return self.error(f"Give every answer a rank before submitting (missing: {missing}).")
        return self.answer(request, who, task, history, seen, "ranked", ranks)

    def typed(self, request: gr.Request, who: str, task: Task | None, history: list, seen: str, keys: str):
        text = "".join(keys.split()).replace(",", "").lower()
        actions = {"s": self.skipped, "f": self.unsafe, "b": self.back}
        if text in actions or task is None:
            return actions.get(text, self.skipped)(request, who, task, history, seen)
        count = len(task.answers)
        if not text.isdigit() or len(text) != count or not all(1 <= int(d) <= count for d in text):
            return self.error(
                f"Type {count} digits from 1 to {count}, the ranks of A–{LETTERS[min(count, 9) - 1]} in order"
                f" ({''.join(str(i + 1) for i in range(count))}; ties share a digit), or s to skip, f to flag"
                f" unsafe, b to go back; {keys.strip()!r} is not that."
            )
        return self.answer(request, who, task, history, seen, "ranked", [int(d) for d in text])

    def skipped(self, request: gr.Request, who: str, task: Task | None, history: list, seen: str):
        return self.answer(request, who, task, history, seen, "skipped", None)

    def unsafe(self, request: gr.Request, who: str, task: Task | None, history: list, seen: str):
        return self.answer(request, who, task, history, seen, "unsafe", None)

    def back(self, request: gr.Request, who: str, task: Task | None, history: list, seen: str):
        labeller = self.labeller(request, who)
        if not history or labeller is None:
            return self.error("There is no earlier prompt in this session to go back to.")
        try:
            reopened = self.store.reopen(labeller, history[-1], self.round)
            before = self.earlier_ranks(reopened, labeller)
            note = "it was skipped or flagged" if before is None else "its ranking is filled in"
            message = f"Back to your previous prompt ({note}); what you submit now replaces your earlier answer."
            return self.show(reopened, history[:-1], labeller, message, before)
        except Rejected as error:  # the store failed (503): one sentence on the page, the labeller can retry
            return self.error(_sentence(error.message))

    # ------------------------------------------------------------------------------------------------- helpers
    def answer(self, request, who, task: Task | None, history: list, seen: str, status: str, ranks: list | None):
        """Save the labeller's answer to the task shown, then show the next prompt; nothing is saved on an error."""
        if task is None:
            return self.error("There is no prompt to answer; reload the page to look for new ones.")
        if seen != task.ticket:
            return self.error("The page had moved on to another prompt before that answer came; answer this one.")
        try:
            self.store.submit(task.ticket, ranks, status)
        except Rejected as error:  # 404/409/422, or 503 when the store failed (a full disk): nothing was saved
            return self.error(_sentence(error.message))
        saved = {"ranked": "Saved.", "skipped": "Skipped.", "unsafe": "Flagged as unsafe."}[status]
        history = [*[p for p in history if p != task.prompt_id], task.prompt_id]
        return self.fetch(self.labeller(request, who), history, saved)

    def fetch(self, labeller: str, history: list, message: str):
        """Show the labeller's next prompt; a store that fails meanwhile is one sentence (what was saved stays)."""
        try:
            return self.show(self.store.next_task(labeller, self.round, self.per_prompt), history, labeller, message)
        except Rejected as error:
            return self.error(
                f"{message} The next prompt could not be shown: {error.message} Reload the page.".strip()
            )

    def show(self, task: Task | None, history: list, labeller: str | None, message: str = "", preset=None):
        """Every output for a newly shown task, for "nothing left" (task None), or for the name asked (no labeller)."""
        done, left = self.store.progress(labeller, self.round, self.per_prompt) if labeller else (0, 0)
        count = len(task.answers) if task else 0
        if labeller is None:
            prompt = "**Your name, please**: type it above and press Enter (asked once on this browser)."
        elif task is None:
            prompt = f"Nothing left to rank in round {self.round}: thank you. Reload the page later for new prompts."
        else:
            prompt = render_prompt(task.messages)
        if count > len(LETTERS):
            message = f"This prompt has {count} answers and the page shows at most {len(LETTERS)}; please skip it."
        columns = [gr.Column(visible=i < count) for i in range(len(LETTERS))]
        texts = [answer_markdown(LETTERS[i], task, i) if i < count else "" for i in range(len(LETTERS))]
        ranks = [
            gr.Radio(choices=list(range(1, count + 1)) or [1], value=preset[i] if preset and i < count else None)
            for i in range(len(LETTERS))
        ]
        progress = f"done {done} · left {left}" if labeller else ""
        named = gr.Row(visible=labeller is None and not self.login)
        head = [task, history, task.ticket if task else "", labeller or "", named, progress, prompt, message, ""]
        return [*head, *columns, *texts, *ranks]

    def error(self, message: str):
        """One sentence on the page and the keys box emptied to type again; every other output stays as it is."""
        out = [gr.skip()] * len(self.outputs)
        out[self.outputs.index(self.message)], out[self.outputs.index(self.keys)] = message, ""
        return out

    def labeller(self, request: gr.Request | None, who: str | None = None) -> str | None:
        """The login's name; else `?labeller=NAME`; else the name given on the page; else None (to be asked)."""
        if self.login:
            return request.username
        params = dict(request.query_params) if request is not None else {}
        name = " ".join((params.get("labeller") or who or "").split())[:200]
        return name or None

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


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:]


def answer_markdown(letter: str, task: Task, index: int) -> str:
    """An answer as the page shows it: its letter, a mark when sampling cut it at the length limit, its text."""
    cut = CUT_MARK + "\n\n" if index < len(task.cut) and task.cut[index] else ""
    return f"**{letter}**\n\n{cut}{task.answers[index]}"


def render_prompt(messages: list[dict]) -> str:
    """The last user turn as the prompt, with any earlier turns above it."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    earlier = [f"**{m.get('role', '?')}:** {m.get('content', '')}" for m in messages[:last]]
    head = "**Earlier in the conversation**\n\n" + "\n\n".join(earlier) + "\n\n---\n\n" if earlier else ""
    return f"{head}**Prompt**\n\n{messages[last].get('content', '') if messages else ''}"
