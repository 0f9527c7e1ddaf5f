"""The comparison store's database: its schema, how it is opened and checked, and what its faults say.

One SQLAlchemy Core schema on two back ends: a SQLite file (Python's own sqlite3 driver) in WAL mode with
`synchronous=FULL`, or a URL (`postgresql+psycopg://user@host/db`). A fault of the database or the disk under it (a
full disk, a read-only or damaged file, a lock held too long) is a `StoreFault`: one sentence for the command line
(it is a UserError) and an HTTP 503 for the ranking page (it is a Rejected); the transaction it hit is rolled back,
so nothing half-saved is left and the same request can be sent again.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import sqlalchemy as sa

from ..errors import UserError

metadata = sa.MetaData()
prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),  # sha256 of the messages: one row per prompt
    sa.Column("messages", sa.Text, nullable=False),  # JSON chat messages
    sa.Column("source", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)
candidates = sa.Table(
    "candidates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # sample index within (prompt, round, model)
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("model", sa.String(500), nullable=False),
    sa.Column("lineage", sa.Text, nullable=False, default="{}"),  # JSON: the model's lineage summary
    sa.Column("sampling", sa.Text, nullable=False, default="{}"),  # JSON: temperature, top_p, max_new_tokens, seed
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("prompt_id", "round", "model", "position"),
)
rankings = sa.Table(
    "rankings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("ranker", sa.String(500), nullable=False),  # human | simulated(noise=0.1) | lm:<model> | reward:<path>
    sa.Column("labeller", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ranked | skipped | unsafe
    sa.Column("ranking", sa.Text, nullable=False, default="[]"),  # JSON tiers of candidate ids, best first
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("prompt_id", "round", "ranker", "labeller"),
)
tickets = sa.Table(
    "tickets",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("labeller", sa.String(200), nullable=False),
    sa.Column("shown", sa.Text, nullable=False),  # JSON candidate ids in the order shown
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
)
# sqlite3's words for a fault -> what it means for the person who has to fix it
_FAULTS = (
    ("disk is full", "the disk holding it is full", "free some space"),
    ("disk full", "the disk holding it is full", "free some space"),
    ("readonly database", "it is read-only", "make it writable"),
    ("unable to open", "it cannot be opened", "check that its folder exists and is writable"),
    ("not a database", "it is damaged or not a comparison store", "restore it from a backup or give another store"),
    ("malformed", "it is damaged", "restore it from a backup or give another store"),
    ("is locked", "another program holds its lock", "close that program"),
    ("i/o error", "the disk reported an I/O error", "check the disk"),
)


class Rejected(Exception):
    """A request the store refuses, with the HTTP status that says why (404 unknown, 409 replayed, 422 malformed)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class StoreFault(Rejected, UserError):
    """The database or its disk failed (503 to the page, one sentence on the command line); nothing was saved."""

    def __init__(self, message: str):
        super().__init__(503, message)


def fault_message(store: str, error: sa.exc.DBAPIError, doing: str = "saved") -> str | None:
    """One sentence for a database fault, None for anything else (a bug: its traceback stays)."""
    reason = " ".join(str(getattr(error, "orig", error)).split())
    if "i/o error" in reason.lower() and "://" not in store and _nearly_full(Path(store).expanduser().parent):
        reason += ", with the disk full"  # SQLite says I/O error when it cannot grow its shared-memory file
    for words, meaning, fix in _FAULTS:
        if words in reason.lower():
            return f"the comparison store {store} failed ({meaning}: {reason}); nothing was {doing}: {fix} and retry."
    return None


def _nearly_full(folder: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(folder).free < 1 << 20  # under 1 MiB: SQLite cannot map its -shm (32 KiB) and WAL
    except OSError:
        return False


@contextlib.contextmanager
def faults(store: str, doing: str = "saved"):
    """Database faults inside the block become a StoreFault (the transaction was rolled back)."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        message = fault_message(store, error, doing)
        if message is None:
            raise
        raise StoreFault(message) from None


def store_url(store: str) -> str:
    """A database URL from a store setting: a SQLAlchemy URL as it is, anything else a SQLite file path."""
    if "://" in store:
        return store
    return f"sqlite:///{Path(store).expanduser()}"


def display_name(store: str) -> str:
    """The store as messages and reports show it: a file path as given, a URL with its password hidden."""
    if "://" not in store:
        return store
    try:
        return sa.engine.make_url(store).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return store.split("://", 1)[0] + "://..."


def open_engine(store: str, create: bool = True) -> sa.Engine:
    """The engine of a store, its tables created if missing; a store that cannot be opened is one sentence."""
    url, shown = store_url(store), display_name(store)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.is_dir():
            raise UserError(
                f"store={store} is a folder; give the path of a SQLite file (e.g. {path}/feedback.sqlite)."
            )
        if not create and not path.is_file():
            raise UserError(
                f"store={store} does not exist, so there is nothing to rank; collect answers into it first "
                "(recipes/collect.py --model <a stage's output> --round N), or check the path."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as error:
        raise UserError(f"store: cannot open {shown!r} ({error}); give a file path or a SQLAlchemy URL.") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # a writing transaction takes the write lock at its start (BEGIN IMMEDIATE): a read-then-write by one
        # labeller can never deadlock against another's, it waits (busy_timeout) instead; reads do not lock
        sa.event.listen(engine, "begin", _sqlite_begin)
    try:
        with faults(shown, "changed"):
            metadata.create_all(engine)
    except StoreFault as error:
        raise UserError(str(error)) from None
    except sa.exc.OperationalError as error:  # a server that refuses the connection, a wrong password, ...
        raise UserError(f"store: cannot open {shown!r}: {' '.join(str(error.orig).split())}.") from None
    return engine


def check_usable(engine: sa.Engine, store: str) -> None:
    """Before serving or collecting: a SQLite store is read whole (`quick_check`) and written once (its header's
    user_version set to itself), so a damaged, read-only or full store is one sentence at start, not mid-way."""
    if engine.dialect.name != "sqlite":
        return
    with faults(store, "changed"):
        with engine.connect() as db:
            problems = [row[0] for row in db.exec_driver_sql("PRAGMA quick_check").all()]
        if problems != ["ok"]:
            raise StoreFault(
                f"the comparison store {store} failed (it is damaged: {'; '.join(problems[:3])}); nothing was "
                "changed: restore it from a backup or give another store and retry."
            )
        with engine.begin() as db:
            version = db.exec_driver_sql("PRAGMA user_version").scalar()
            db.exec_driver_sql(f"PRAGMA user_version = {int(version)}")


def dump(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")


def _sqlite_pragmas(connection, _record) -> None:
    connection.isolation_level = None  # sqlite3's own implicit BEGIN off: the "begin" event above issues it
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the labeller who is saving, nor wait for them
    cursor.execute("PRAGMA synchronous=FULL")  # a committed ranking is on disk before the page says saved
    cursor.execute("PRAGMA busy_timeout=10000")  # two labellers saving at once wait for each other, not fail
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
