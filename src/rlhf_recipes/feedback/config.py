"""Settings of the feedback loop's two recipes: `recipes/collect.py` (answers into the store) and `recipes/label.py`
(rankings, by people in a page or by a model, then the pairs exported for the reward stage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import help_field as _help

STORE_HELP = "the comparison store: a SQLite file path (default), or a SQLAlchemy URL (postgresql+psycopg://...)"


@dataclass
class CollectArguments:
    model: str | None = _help(
        "the model to sample from: any stage's output folder, a Hub id or embedded:...", default=None
    )
    store: str = _help(STORE_HELP, default="outputs/smollm2-135m/feedback.sqlite")
    round: int = _help("the round these answers belong to (1, 2, ...)", default=1)
    prompt_dataset: str = _help("prompts to answer (`prompt` column: messages or text)", default="data/demo/prompts")
    split: str = _help("its split; held-out prompts stay unsampled for the evaluation", default="train")
    prompts_per_round: int = _help(
        "prompts answered per round; round r takes the r-th slice of the split, so each round ranks new prompts",
        default=32,
    )
    k: int = _help("answers sampled per prompt (the labeller ranks all K)", default=4)
    temperature: float = _help("sampling temperature (top-k and top-p off)", default=1.0)
    max_new_tokens: int = _help("tokens per answer", default=48)
    batch_size: int = _help("sequences per generate call", default=64)
    seed: int = _help("seed of the sampling", default=0)
    replace_round: bool = _help(
        "when the round already holds answers from another model (or an earlier version of this one, e.g. a rerun "
        "after a change upstream): delete that round's answers and rankings first; false refuses",
        default=False,
    )
    import_path: str | None = _help(
        "import prompts, answers and their rankings from a file or Hub dataset instead of sampling (see import_format)",
        default=None,
    )
    import_format: Literal["oasst", "ranking"] = _help(
        "oasst: OpenAssistant message trees (sibling replies' `rank`); ranking: rows of prompt, responses, ranks "
        "(1 = best, equal = tie), or an Argilla ranking question's export (`<question>.responses`)",
        default="oasst",
    )
    import_split: str = _help("the split of an imported dataset", default="train")
    output_dir: str = _help("where collect.json (what was added) goes", default="outputs/smollm2-135m/collect")
    use_cpu: bool = _help("sample on the CPU even when a GPU is visible", default=False)


@dataclass
class LabelArguments:
    store: str = _help(STORE_HELP, default="outputs/smollm2-135m/feedback.sqlite")
    round: int = _help("the round to rank", default=1)
    ranker: str = _help(
        "human (serve the ranking page), simulated (the demo world's facts and styles, with `noise`), "
        "lm:<model> (a judge LM with a rubric) or reward:<folder> (a reward model other than the one retrained)",
        default="human",
    )
    noise: float = _help("simulated ranker: share of rankings replaced by a random order", default=0.1)
    seed: int = _help("seed of the simulated ranker's noise", default=0)
    reward_model_in_training: str | None = _help(
        "the reward model these rankings will retrain (a reward:<folder> ranker may not be it)", default=None
    )
    host: str = _help("address the page binds to; any but 127.0.0.1 requires `login`", default="127.0.0.1")
    port: int = _help("port of the page", default=7860)
    login: list[str] = _help(
        "user:password pairs allowed to label (required on an exposed address)", default_factory=list
    )
    per_prompt: int = _help("people who rank each prompt (2+: the report gives their agreement)", default=1)
    guidelines: str | None = _help(
        "a Markdown file of labelling guidelines, shown folded out at the top of the ranking page", default=None
    )
    wait: bool = _help(
        "human: serve until every prompt of the round is ranked; false: export what is ranked now", default=True
    )
    export_rounds: list[int] = _help(
        "rounds whose rankings are exported (default: 1 to `round`)", default_factory=list
    )
    heldout_pairs: str | None = _help(
        "held-out preference pairs copied as the export's test split (the same every round)", default=None
    )
    output_dir: str = _help(
        "the exported preference pairs (train.jsonl, test.jsonl, report)", default="outputs/smollm2-135m/pairs"
    )
    unpaired_dir: str | None = _help(
        "also export thumbs up and down here, KTO's unpaired data: each ranking's best answers desirable, its worst "
        "undesirable (train.jsonl of prompt, completion, label)",
        default=None,
    )


def check_heldout(heldout: str | None) -> None:
    """`heldout_pairs` names an existing folder or file, or (online) a Hub dataset id: checked before any ranking."""
    from pathlib import Path

    from ..errors import UserError
    from ..offline import is_hub_id

    if not heldout or Path(heldout).expanduser().exists():
        return
    if not is_hub_id(heldout):
        raise UserError(
            f"heldout_pairs={heldout} does not exist; give the preferences folder of the data stage (e.g. "
            "outputs/smollm2-135m/data/preferences) or leave it unset."
        )


def read_guidelines(path: str | None) -> str | None:
    """The labelling guidelines' Markdown, read before the page starts; a missing or unreadable file is one sentence."""
    from pathlib import Path

    from ..errors import UserError

    if not path:
        return None
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UserError(
            f"guidelines={path} cannot be read ({reason}); give a Markdown file, or leave it unset."
        ) from None
    if not text.strip():
        raise UserError(f"guidelines={path} is empty; write the labelling guidelines in it, or leave it unset.")
    return text


def parse_logins(pairs: list[str]) -> list[tuple[str, str]]:
    """`name:password` strings (one `--login` each) as (name, password) pairs; every one is honoured, and an empty
    name or password, or a name given twice, is one sentence."""
    from ..errors import UserError

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
