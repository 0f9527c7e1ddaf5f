"""Hub ids on a machine that cannot reach the Hub: one sentence naming the id and how to run offline.

The project runs offline first (DESIGN.md): a model or dataset id such as `Qwen/Qwen2.5-0.5B-Instruct` works unchanged
where the Hub is reachable or the id is in the local Hub cache; elsewhere (HF_HUB_OFFLINE set, or no network) the
libraries fail with a traceback about connecting. `unreachable` tells such a failure from others, `sentence` says
what to do instead.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .errors import UserError

_TRUE = ("1", "ON", "YES", "TRUE")
_CONNECTION_WORDS = re.compile(
    r"connect|offline|network|resolve|timed? ?out|Max retries|Name or service|couldn't reach|LocalEntryNotFound|"
    r"outgoing traffic has been disabled|Couldn't find .* on the Hugging Face Hub",
    re.IGNORECASE,
)


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set: no Hub access is even tried."""
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in _TRUE for f in flags)


def is_hub_id(value: str) -> bool:
    """Whether `value` can only name a Hub repository: a valid repo id (`org/name` or `name`) that is no path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return not value.startswith((".", "/", "~")) and value.count("/") <= 1


def looks_like_hub_id(name: str) -> bool:
    """`org/name` (or a bare `name`) that is no local path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).exists()


def unreachable(error: BaseException) -> bool:
    """Whether a loading failure is the Hub being out of reach (offline mode, no network), not a bad id or file."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen, current = set(), error
    while current is not None and id(current) not in seen:  # the library often wraps the network error
        seen.add(id(current))
        if isinstance(current, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError | TimeoutError):
            return True
        if _CONNECTION_WORDS.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


@functools.cache
def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens (one try, seconds at most: the libraries would retry for a
    minute before they fail)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def check(repo_id: str, what: str, key: str, cached: bool | None = None, where: str = "") -> None:
    """Refuse, before any loading, a Hub id that cannot be fetched: offline and known not to be cached (`cached` is
    False; None: unknown, the library looks in its cache), or the Hub unreachable (and not cached)."""
    if cached:
        return
    if is_offline():
        if cached is False:
            raise refuse(repo_id, what, key, where)
    elif not hub_reachable():
        raise refuse(repo_id, what, key, where)


def sentence(repo_id: str, what: str, key: str, where: str = "") -> str:
    """What to do when the Hub id `repo_id` (a model or a dataset, given as `key` `where`) cannot be fetched."""
    from huggingface_hub import constants

    if is_offline():
        reason = "HF_HUB_OFFLINE is set and it is not in the local Hub cache"
    else:
        reason = f"the Hub ({constants.ENDPOINT}) cannot be reached from this machine"
    if what == "model":
        fix = (
            f"download it where the Hub is reachable (`hf download {repo_id} --local-dir DIR`) and pass the folder, "
            "or use the embedded model (embedded:SmolLM2-135M-Instruct)"
        )
    else:
        fix = (
            f"download it where the Hub is reachable (`hf download {repo_id} --repo-type dataset --local-dir DIR`) "
            "and pass the folder, or a local data folder"
        )
    return f"{key}={repo_id}{' ' + where if where else ''} is a Hub {what} id, and {reason}; {fix}."


def refuse(repo_id: str, what: str, key: str, where: str = "") -> UserError:
    return UserError(sentence(repo_id, what, key, where))
