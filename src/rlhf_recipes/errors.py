"""The ground floor: what a user can get wrong, said in one sentence, and the exit codes (imports nothing of the project).

- `UserError`: a mistake the user can fix (bad config, bad data, missing token): printed as one line, exit code 2.
- `suggest`: the "did you mean" of every unknown-name error.
- `environment_error`: one sentence for a fault of the machine (full disk, read-only folder), from whatever library
  raised it; None for anything else (a bug keeps its traceback).
"""

from __future__ import annotations

import difflib

EXIT_USER_ERROR = 2  # a UserError or a machine fault: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


class UserError(Exception):
    """An error the user can fix (bad config, bad data, missing token): printed as one sentence, exit code 2."""


RESUMES = "rerun the same command: a training stage resumes from its last complete checkpoint"
# What libraries that are not Python say for a full disk: the tokenizers library raises a plain Exception ("No space
# left on device (os error 28)"), safetensors a SafetensorError, SQLite "database or disk is full", and torch.save an
# enforce failure of its zip writer that names no errno at all.
_FULL_DISK = ("no space left on device", "(os error 28)", "[errno 28]", "database or disk is full")
_QUOTA = ("disk quota exceeded", "(os error 122)", "[errno 122]")
_TORCH_WRITE = ("inline_container.cc", ("unexpected pos", "file write failed"))


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those it was raised from or during, innermost last (a cycle is cut)."""
    out = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def environment_error(error: BaseException) -> str | None:
    """One sentence for a fault of the machine rather than of the code (full disk, read-only or forbidden path), from
    an OSError anywhere in the chain or from what a non-Python library says; None for anything else (a bug)."""
    import errno

    for link in _chain(error):
        if not isinstance(link, OSError) or link.errno is None:
            continue
        where = f" ({link.filename})" if getattr(link, "filename", None) else ""
        if link.errno == errno.ENOSPC:
            return f"the disk is full{where}; free some space and {RESUMES}."
        if link.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"cannot write{where}: {link.strerror.lower()}; choose a writable output folder and rerun."
        if link.errno == errno.EDQUOT:
            return f"the disk quota is exceeded{where}; free some space and {RESUMES}."
    said = " ".join(" ".join(str(link).split()) for link in _chain(error))
    text = said.lower()
    if any(words in text for words in _FULL_DISK):
        return f"the disk is full ({said[:160]}); free some space and {RESUMES}."
    if any(words in text for words in _QUOTA):
        return f"the disk quota is exceeded ({said[:160]}); free some space and {RESUMES}."
    if _TORCH_WRITE[0] in text and any(words in text for words in _TORCH_WRITE[1]):
        return (
            f"writing a PyTorch file failed ({said[:160]}), most likely on a full disk; free some space and {RESUMES}."
        )
    return None


def suggest(key: str, known: list[str]) -> str:
    """The "did you mean" of every unknown-name error in the project."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else "; remove it or check the spelling against `--help`."
