"""The comparison store: prompts, the K candidate answers sampled for them in each round, and their rankings.

One SQLAlchemy Core schema on two back ends. By default a single SQLite file (Python's own sqlite3 driver) in WAL
mode with `synchronous=FULL`: every ranking is its own transaction, so a server killed at any moment loses nothing
that was committed. A team whose labellers work on several machines passes a URL instead
(`postgresql+psycopg://user@host/db`); the same code runs there.

A ranking is a list of tiers of candidate ids, best first (`[[7], [5, 8], [6]]`: 7 best, 5 and 8 tied). Rankings
are unique per (prompt, round, ranker, labeller): a resubmit replaces, never duplicates. People rank through
*tickets*: each prompt shown to a labeller gets a one-time ticket that fixes the shuffled order they saw; a ticket
submitted twice (a replayed request) is refused with nothing changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import secrets
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from . import database
from .database import Rejected, StoreFault, candidates, prompts, rankings, tickets

__all__ = ["HUMAN", "STATUSES", "Rejected", "Store", "StoreFault", "Task", "tiers_from_ranks"]
STATUSES = ("ranked", "skipped", "unsafe")
HUMAN = "human"


@dataclass
class Task:
    """One prompt shown to one labeller: the ticket to submit with and the answers in the order shown."""

    ticket: str
    prompt_id: int
    round: int
    messages: list[dict]
    answers: list[str]  # shown order; the model that wrote each is not shown
    candidate_ids: list[int]
    cut: list[bool] = field(default_factory=list)  # shown order: sampling stopped at the length limit, not at EOS


def prompt_key(messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Store:
    """`Store(path_or_url)`; `create=False` refuses a SQLite file that does not exist yet (nothing to rank in it)."""

    def __init__(self, store: str, create: bool = True):
        self.url = database.display_name(store)  # what messages and reports show (no password)
        self.engine = database.open_engine(store, create)

    def check_usable(self) -> None:
        """A damaged, read-only or full store is one sentence now, before any work (database.check_usable)."""
        database.check_usable(self.engine, self.url)

    @contextlib.contextmanager
    def _write(self):
        with database.faults(self.url, "saved"), self.engine.begin() as db:
            yield db

    @contextlib.contextmanager
    def _read(self):
        with database.faults(self.url, "read"), self.engine.connect().execution_options(read_only=True) as db:
            yield db

    # ------------------------------------------------------------------------------------------------ writing
    def add_prompt(self, messages: list[dict], source: str = "") -> int:
        """The prompt's id, inserting it once (the same messages always get the same row)."""
        with self._write() as db:
            return self._prompt_id(db, messages, source)

    def _prompt_id(self, db, messages: list[dict], source: str) -> int:
        key = prompt_key(messages)
        row = db.execute(sa.select(prompts.c.id).where(prompts.c.key == key)).first()
        if row:
            return row.id
        values = dict(key=key, messages=database.dump(messages), source=source, created_at=time.time())
        return db.execute(prompts.insert().values(**values)).inserted_primary_key[0]

    def import_rankings(self, items: list, round: int, ranker: str, source: str) -> None:
        """Rankings made elsewhere, all in one transaction (a failure saves none of them): `items` of (messages,
        answer texts, tiers of answer indices best first, labeller). Answers are matched by text, so importing the
        same file again changes nothing (importers.py checks first that a prompt has one set of answers a round)."""
        with self._write() as db:
            for messages, texts, tiers, labeller in items:
                prompt_id = self._prompt_id(db, messages, source)
                query = sa.select(candidates.c.id, candidates.c.text).where(
                    candidates.c.prompt_id == prompt_id, candidates.c.round == round
                )
                ids = {row.text: row.id for row in db.execute(query)}
                for position, text in enumerate(texts):
                    if text not in ids:
                        values = dict(
                            prompt_id=prompt_id, round=round, position=position, text=text, model=ranker,
                            lineage=database.dump({"imported_from": source}), sampling="{}", created_at=time.time(),
                        )  # fmt: skip
                        ids[text] = db.execute(candidates.insert().values(**values)).inserted_primary_key[0]
                ranking = [[ids[texts[i]] for i in tier] for tier in tiers]
                self._save(db, prompt_id, round, ranker, labeller, ranking, "ranked")

    def answer_texts(self, round: int) -> dict[str, set[str]]:
        """prompt key -> the texts of its answers in `round` (what an import must match)."""
        query = (
            sa.select(prompts.c.key, candidates.c.text)
            .join(candidates, candidates.c.prompt_id == prompts.c.id)
            .where(candidates.c.round == round)
        )
        out: dict[str, set[str]] = {}
        with self._read() as db:
            for row in db.execute(query):
                out.setdefault(row.key, set()).add(row.text)
        return out

    def add_candidates(
        self, prompt_id: int, round: int, texts: list[str], model: str, lineage: dict | None = None,
        sampling: dict | None = None, cut: list[bool] | None = None,
    ) -> list[int]:  # fmt: skip
        """Insert one prompt's answers from one model in one transaction; already stored ones are kept as they are
        (a collect run killed half-way and rerun adds only what is missing). `cut[i]`: answer i stopped at the
        length limit before its end (kept in its `sampling`; the page marks it)."""
        ids = []
        with self._write() as db:
            for position, text in enumerate(texts):
                where = sa.and_(
                    candidates.c.prompt_id == prompt_id, candidates.c.round == round,
                    candidates.c.model == model, candidates.c.position == position,
                )  # fmt: skip
                row = db.execute(sa.select(candidates.c.id).where(where)).first()
                if row is None:
                    values = dict(
                        prompt_id=prompt_id, round=round, position=position, text=text, model=model,
                        lineage=database.dump(lineage or {}), created_at=time.time(),
                        sampling=database.dump({**(sampling or {}), **({"cut": True} if cut and cut[position] else {})}),
                    )  # fmt: skip
                    row = db.execute(candidates.insert().values(**values)).inserted_primary_key
                    ids.append(row[0])
                else:
                    ids.append(row.id)
        return ids

    def record(
        self, prompt_id: int, round: int, ranker: str, labeller: str, tiers: list[list[int]] | None,
        status: str = "ranked",
    ) -> int:  # fmt: skip
        """Save (or replace) one ranking, checked against the prompt's candidates of that round."""
        with self._write() as db:
            return self._save(db, prompt_id, round, ranker, labeller, tiers, status)

    def _save(self, db, prompt_id, round, ranker, labeller, tiers, status) -> int:
        if status not in STATUSES:
            raise Rejected(422, f"status must be one of {', '.join(STATUSES)}, not {status!r}.")
        tiers = [list(t) for t in (tiers or [])]
        if status == "ranked":
            known = set(self._candidate_ids(db, prompt_id, round))
            ranked = [c for tier in tiers for c in tier]
            if sorted(ranked) != sorted(known) or not all(tiers):
                raise Rejected(422, f"a ranking must place each of the {len(known)} answers exactly once.")
        key = dict(prompt_id=prompt_id, round=round, ranker=ranker, labeller=labeller)
        values = dict(
            status=status, ranking=database.dump(tiers if status == "ranked" else []), created_at=time.time()
        )
        where = sa.and_(*(rankings.c[k] == v for k, v in key.items()))
        existing = db.execute(sa.select(rankings.c.id).where(where)).first()
        if existing:  # a resubmit replaces
            db.execute(rankings.update().where(rankings.c.id == existing.id).values(**values))
            return existing.id
        return db.execute(rankings.insert().values(**key, **values)).inserted_primary_key[0]

    def clear_round(self, round: int) -> dict:
        """Delete one round's answers, rankings and tickets in one transaction (a round sampled again from another
        model); returns what was deleted."""
        with self._write() as db:
            counts = {
                "rankings": db.execute(rankings.delete().where(rankings.c.round == round)).rowcount,
                "tickets": db.execute(tickets.delete().where(tickets.c.round == round)).rowcount,
                "candidates": db.execute(candidates.delete().where(candidates.c.round == round)).rowcount,
            }
        return counts

    # -------------------------------------------------------------------------------------------- people ranking
    def next_task(
        self, labeller: str, round: int, per_prompt: int = 1, claim_seconds: float = 900, seed: int | None = None
    ) -> Task | None:
        """The next prompt of `round` for `labeller`: one they have not ranked, that fewer than `per_prompt` people
        have ranked, and that no other labeller holds an open ticket for (claimed in the last `claim_seconds`)."""
        now = time.time()
        with self._write() as db:
            if self.engine.dialect.name == "postgresql":  # one assignment at a time (SQLite: BEGIN IMMEDIATE)
                db.execute(sa.text("SELECT pg_advisory_xact_lock(715)"))
            pending = self._pending(db, labeller, round, per_prompt, now - claim_seconds)
            if not pending:
                return None
            return self._issue(db, pending[0], round, labeller, now, seed)

    def reopen(self, labeller: str, prompt_id: int, round: int) -> Task:
        """A fresh ticket for a prompt the labeller already saw (to change their ranking: the resubmit replaces)."""
        with self._write() as db:
            return self._issue(db, prompt_id, round, labeller, time.time(), None)

    def submit(self, ticket: str, ranks: list[int] | None = None, status: str = "ranked") -> int:
        """Save a labeller's answer to a ticket: `ranks[i]` is the rank (1 = best, equal = tie) of the i-th answer
        as shown. A ticket is used once: a replay is refused (409) and changes nothing."""
        with self._write() as db:
            row = db.execute(sa.select(tickets).where(tickets.c.token == str(ticket))).first()
            if row is None:
                raise Rejected(404, "unknown ticket; reload the page to get the next prompt.")
            if row.used_at is not None:
                raise Rejected(409, "this ticket was already submitted; reload the page to get the next prompt.")
            shown = json.loads(row.shown)
            tiers = None
            if status == "ranked":
                tiers = tiers_from_ranks(ranks, len(shown))
                tiers = [[shown[i] for i in tier] for tier in tiers]
            # used_at is set only if still unused: two racing submissions of one ticket, one wins
            claimed = db.execute(
                tickets.update()
                .where(sa.and_(tickets.c.token == row.token, tickets.c.used_at.is_(None)))
                .values(used_at=time.time())
            ).rowcount
            if claimed != 1:
                raise Rejected(409, "this ticket was already submitted; reload the page to get the next prompt.")
            return self._save(db, row.prompt_id, row.round, HUMAN, row.labeller, tiers, status)

    def progress(self, labeller: str, round: int, per_prompt: int = 1) -> tuple[int, int]:
        """(prompts this labeller has answered, prompts still waiting for anyone) in `round`."""
        with self._read() as db:
            mine = db.execute(
                sa.select(sa.func.count())
                .select_from(rankings)
                .where(rankings.c.round == round, rankings.c.ranker == HUMAN, rankings.c.labeller == labeller)
            ).scalar()
            left = len(self._pending(db, None, round, per_prompt, None))
        return mine, left

    def _pending(self, db, labeller, round, per_prompt, claimed_after) -> list[int]:
        tasks = self._prompt_ids(db, round)
        # open tickets are read before rankings: a ticket submitted between the two reads is then seen as a
        # ranking (submit marks the ticket and saves the ranking in one transaction), never as neither
        held: dict[int, set] = {}
        if claimed_after is not None:
            open_tickets = sa.select(tickets.c.prompt_id, tickets.c.labeller).where(
                tickets.c.round == round, tickets.c.used_at.is_(None), tickets.c.issued_at > claimed_after
            )
            for row in db.execute(open_tickets):
                held.setdefault(row.prompt_id, set()).add(row.labeller)
        people = sa.select(rankings.c.prompt_id, rankings.c.labeller, rankings.c.status).where(
            rankings.c.round == round, rankings.c.ranker == HUMAN
        )
        done: dict[int, set] = {}  # who answered it (a skip too: not shown to them again)
        counted: dict[int, int] = {}  # answers that fill its quota: a skip leaves it for someone else
        for row in db.execute(people):
            done.setdefault(row.prompt_id, set()).add(row.labeller)
            counted[row.prompt_id] = counted.get(row.prompt_id, 0) + (row.status != "skipped")
        out = []
        for prompt_id in tasks:
            by = done.get(prompt_id, set())
            others_holding = held.get(prompt_id, set()) - {labeller} - by  # a reopened ticket is not a 2nd claim
            if labeller in by or counted.get(prompt_id, 0) + len(others_holding) >= per_prompt:
                continue
            out.append(prompt_id)
        # a prompt this labeller already holds a ticket for comes first (a reload shows the same prompt again)
        return sorted(out, key=lambda p: (labeller not in held.get(p, set()), p))

    def _issue(self, db, prompt_id: int, round: int, labeller: str, now: float, seed) -> Task:
        ids = self._candidate_ids(db, prompt_id, round)
        if not ids:
            raise Rejected(404, f"prompt {prompt_id} has no answers in round {round}.")
        shown = list(ids)
        random.Random(seed if seed is not None else secrets.randbits(64)).shuffle(shown)
        token = secrets.token_urlsafe(18)
        db.execute(
            tickets.insert().values(
                token=token,
                prompt_id=prompt_id,
                round=round,
                labeller=labeller,
                shown=database.dump(shown),
                issued_at=now,
            )
        )
        query = sa.select(candidates.c.id, candidates.c.text, candidates.c.sampling).where(candidates.c.id.in_(ids))
        rows = {row.id: row for row in db.execute(query)}
        messages = json.loads(db.execute(sa.select(prompts.c.messages).where(prompts.c.id == prompt_id)).scalar())
        cut = [bool(json.loads(rows[i].sampling or "{}").get("cut")) for i in shown]
        return Task(token, prompt_id, round, messages, [rows[i].text for i in shown], shown, cut)

    # ------------------------------------------------------------------------------------------------ reading
    def _prompt_ids(self, db, round: int) -> list[int]:
        query = sa.select(candidates.c.prompt_id).where(candidates.c.round == round).distinct()
        return sorted(r.prompt_id for r in db.execute(query))

    def _candidate_ids(self, db, prompt_id: int, round: int) -> list[int]:
        query = sa.select(candidates.c.id).where(candidates.c.prompt_id == prompt_id, candidates.c.round == round)
        return [r.id for r in db.execute(query.order_by(candidates.c.id))]

    def prompt_ids(self, round: int) -> list[int]:
        with self._read() as db:
            return self._prompt_ids(db, round)

    def candidates(self, prompt_id: int, round: int) -> list[dict]:
        query = sa.select(candidates).where(candidates.c.prompt_id == prompt_id, candidates.c.round == round)
        with self._read() as db:
            return [dict(r._mapping) for r in db.execute(query.order_by(candidates.c.id))]

    def messages(self, prompt_id: int) -> list[dict]:
        with self._read() as db:
            return json.loads(db.execute(sa.select(prompts.c.messages).where(prompts.c.id == prompt_id)).scalar())

    def rankings(self, rounds: list[int] | None = None, ranker: str | None = None) -> list[dict]:
        query = sa.select(rankings)
        if rounds is not None:
            query = query.where(rankings.c.round.in_(list(rounds)))
        if ranker is not None:
            query = query.where(rankings.c.ranker == ranker)
        with self._read() as db:
            rows = [dict(r._mapping) for r in db.execute(query.order_by(rankings.c.id))]
        for row in rows:
            row["ranking"] = json.loads(row["ranking"])
        return rows

    def texts(self, candidate_ids: list[int]) -> dict[int, str]:
        with self._read() as db:
            query = sa.select(candidates.c.id, candidates.c.text).where(candidates.c.id.in_(list(candidate_ids)))
            return dict(db.execute(query).all())

    def close(self) -> None:
        self.engine.dispose()


def tiers_from_ranks(ranks, count: int) -> list[list[int]]:
    """Display positions grouped into tiers, best first, from one rank per shown answer (1 = best; equal = tie)."""
    if not isinstance(ranks, list | tuple) or len(ranks) != count:
        raise Rejected(422, f"give one rank for each of the {count} answers (e.g. {list(range(1, count + 1))}).")
    if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= count for r in ranks):
        raise Rejected(422, f"ranks must be whole numbers from 1 to {count}, not {list(ranks)}.")
    values = list(ranks)
    return [[i for i, r in enumerate(values) if r == level] for level in sorted(set(values))]
