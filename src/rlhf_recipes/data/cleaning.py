"""Cleaning: Unicode and whitespace normalisation, empty/length/chat-template filters, exact and near-duplicate removal
(MinHash LSH from datasketch), and n-gram decontamination against what held-out records ask.

Per-record work runs in `annotate_batch` (a batched `datasets.map`, parallel with `num_proc`): it normalises the record
and computes everything the order-dependent steps need (a dedup key, a MinHash signature, the first long n-gram shared
with a held-out record). `deduplicate` then walks the rows once, in order, keeping the first of each duplicate group.
Every row that is dropped gets a reason from REASONS; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH

# Steps in the order they run, with the reasons for which each drops rows.
STEPS = (
    ("load", ()),
    ("convert", ("invalid",)),
    ("normalise", ()),
    ("filter_empty", ("empty", "identical_pair")),
    ("filter_length", ("too_short", "too_long")),
    ("chat_template", ("template_error", "no_assistant_tokens", "missing_eos")),
    ("exact_dedup", ("duplicate",)),
    ("near_dedup", ("near_duplicate",)),
    ("decontaminate", ("contaminated",)),
    ("mixture", ("downsampled",)),
)
REASONS = {reason: step for step, reasons in STEPS for reason in reasons}
MINHASH_SEED = 1

_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\u200b\ufeff\u00ad]|[^\S\n\t ]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


@dataclass
class Thresholds:
    """What `annotate_batch` needs from the cleaning config (kept small so that it pickles cheaply to workers)."""

    unicode_form: str
    min_tokens: int
    max_tokens: int | None
    minhash_num_perm: int
    minhash_ngram: int
    decontamination_ngram: int
    near_dedup: bool


def normalize_text(text: str, form: str = "NFC") -> str:
    """Unicode normal form, Unix newlines, no control or zero-width characters, no trailing spaces, <= 1 blank line."""
    text = unicodedata.normalize(form, text).replace("\r\n", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _ODD_SPACES.sub(" ", text.replace("\r", "\n"))
    text = _INVISIBLE.sub("", text)
    return _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("\n", text)).strip()


def normalize_record(record: dict, form: str) -> dict:
    """Every string of a converted record (text, or each message's content) normalised; a label kept as it is."""
    return {
        field: normalize_text(value, form)
        if isinstance(value, str)
        else [{"role": m["role"], "content": normalize_text(m["content"], form)} for m in value]
        if isinstance(value, list)
        else value
        for field, value in record.items()
    }


def record_text(record: dict) -> str:
    """The words of a record, for dedup and decontamination: the text, or the message contents one per line (an
    unpaired preference's label as a last line, so that one answer labelled both ways is not a duplicate)."""
    return "\n".join(
        value
        if isinstance(value, str)
        else "\n".join(m["content"] for m in value)
        if isinstance(value, list)
        else f"label: {value}"
        for value in record.values()
    )


def prompt_text(record: dict) -> str:
    """What a held-out record asks: the text of a text record, else its user turns (answers state facts a model may
    learn; shared system prompts would match everything)."""
    if "text" in record:
        return record["text"]
    first = record.get("messages") or record.get("prompt") or []
    return "\n".join(m["content"] for m in first if m["role"] == "user")


def is_empty(record: dict) -> bool:
    """No text at all, or a user/assistant turn (or a whole side of a pair) with nothing in it."""
    for value in record.values():
        if isinstance(value, bool):  # an unpaired preference's label
            continue
        if isinstance(value, str):
            if not value:
                return True
        elif not value or any(not m["content"] and m["role"] != "system" for m in value):
            return True
    return False


def exact_key(text: str) -> str:
    """Duplicate key: identical up to case and whitespace."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).hexdigest()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> list[str]:
    tokens = words(text)
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _shingles(text: str, n: int) -> list[bytes]:
    tokens = words(text)
    if len(tokens) <= n:
        return [" ".join(tokens).encode()]
    return [" ".join(tokens[i : i + n]).encode() for i in range(len(tokens) - n + 1)]


def _xxh32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def minhash_signatures(texts: list[str], num_perm: int, ngram: int) -> list[list[int]]:
    """datasketch MinHash hash values of each text's word n-gram shingles (xxhash; one shared permutation set)."""
    shingles = (_shingles(text, ngram) for text in texts)
    return [
        m.hashvalues.tolist()
        for m in MinHash.generator(shingles, num_perm=num_perm, seed=MINHASH_SEED, hashfunc=_xxh32)
    ]


class ReferenceSet:
    """What held-out records look like to decontamination: the long word n-grams and exact keys of `prompt_text`."""

    def __init__(self, ngram: int, min_overlap: float = 0.0):
        self.ngram, self.min_overlap = ngram, min_overlap
        self.ngrams: set[str] = set()
        self.keys: set[str] = set()

    def add(self, record: dict) -> None:
        text = prompt_text(record)
        if text.strip():
            self.keys.add(exact_key(text))
            if self.ngram > 0:
                self.ngrams.update(word_ngrams(text, self.ngram))

    def contamination(self, record: dict, text: str) -> str | None:
        """Why a training record overlaps the held-out sets (None if it does not)."""
        if exact_key(prompt_text(record)) in self.keys:
            return "asks exactly what a held-out record asks"
        grams = word_ngrams(text, self.ngram) if self.ngrams else []
        shared = [gram for gram in grams if gram in self.ngrams]
        if shared and len(shared) / len(grams) >= self.min_overlap:
            return (
                f"shares {len(shared)} of its {len(grams)} {self.ngram}-grams with held-out records, "
                f"e.g. '{shared[0]}'"
            )
        return None


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


def check_assistant_mask(input_ids: list[int], mask: list[int], eos_id: int, turns: int) -> tuple[str, str] | None:
    """(reason, detail) when the rendered conversation does not train every assistant turn up to an EOS, else None."""
    spans = _spans(mask)
    if not spans:
        return "no_assistant_tokens", "the chat template marks no assistant token (empty assistant mask)"
    if len(spans) < turns:
        return "no_assistant_tokens", f"only {len(spans)} of {turns} assistant turns are in the assistant mask"
    for start, end in spans:
        if input_ids[end - 1] != eos_id and (end >= len(input_ids) or input_ids[end] != eos_id):
            return "missing_eos", f"an assistant turn (tokens {start}-{end}) is not followed by the EOS token"
    return None


def _token_ids(tokenizer, conversations: list[list[dict]], **kwargs) -> list[list[int]]:
    return tokenizer.apply_chat_template(conversations, return_dict=True, **kwargs)["input_ids"]


def _measure(records: list[dict], kind: str, tokenizer) -> list[tuple[int | None, tuple[str, str] | None]]:
    """Token length of each record in the target tokenizer, plus a chat-template problem for SFT conversations."""
    if kind == "text":
        return [(len(ids), None) for ids in tokenizer([r["text"] for r in records])["input_ids"]]
    if kind == "prompts":
        rendered = _token_ids(tokenizer, [r["prompt"] for r in records], add_generation_prompt=True)
        return [(len(ids), None) for ids in rendered]
    if kind == "preferences":
        chosen = _token_ids(tokenizer, [r["prompt"] + r["chosen"] for r in records])
        rejected = _token_ids(tokenizer, [r["prompt"] + r["rejected"] for r in records])
        return [(max(len(c), len(r)), None) for c, r in zip(chosen, rejected, strict=True)]
    if kind == "unpaired":
        return [(len(ids), None) for ids in _token_ids(tokenizer, [r["prompt"] + r["completion"] for r in records])]
    conversations = [r["messages"] for r in records]
    out = tokenizer.apply_chat_template(conversations, return_dict=True, return_assistant_tokens_mask=True)
    results = []
    for ids, mask, messages in zip(out["input_ids"], out["assistant_masks"], conversations, strict=True):
        turns = sum(m["role"] == "assistant" for m in messages)
        results.append((len(ids), check_assistant_mask(ids, mask, tokenizer.eos_token_id, turns)))
    return results


def measure(records: list[dict], kind: str, tokenizer) -> list[tuple[int | None, tuple[str, str] | None]]:
    """`_measure` for a batch; a template that raises on one record costs that record only ("template_error")."""
    if not records:
        return []
    try:
        return _measure(records, kind, tokenizer)
    except Exception:  # chat templates raise arbitrary jinja errors ("roles must alternate")
        results = []
        for record in records:
            try:
                results.extend(_measure([record], kind, tokenizer))
            except Exception as error:
                results.append((None, ("template_error", f"the chat template fails: {' '.join(str(error).split())}")))
        return results


def annotate_batch(
    batch: dict,
    *,
    kind: str,
    fields: tuple[str, ...],
    thresholds: Thresholds,
    tokenizer,
    reference: ReferenceSet | None,
) -> dict:
    """Normalise a batch of converted records and annotate each with what the cleaning steps decide on."""
    size = len(batch[fields[0]])
    records = [{f: batch[f][i] for f in fields} for i in range(size)]
    normalised = [normalize_record(r, thresholds.unicode_form) for r in records]
    reasons: list[str | None] = [None] * size
    details: list[str | None] = [None] * size
    for i, record in enumerate(normalised):
        if batch["_error"][i] is not None:
            reasons[i], details[i] = "invalid", batch["_error"][i]
        elif is_empty(record):
            reasons[i], details[i] = "empty", "nothing left after normalisation (empty text or turn)"
        elif kind == "preferences" and record["chosen"] == record["rejected"]:
            reasons[i], details[i] = "identical_pair", "chosen and rejected are the same answer"
    todo = [i for i in range(size) if reasons[i] is None]
    tokens: list[int | None] = [None] * size
    for i, (length, problem) in zip(todo, measure([normalised[i] for i in todo], kind, tokenizer), strict=True):
        tokens[i] = length
        if problem is not None and problem[0] == "template_error":
            reasons[i], details[i] = problem
        elif length < thresholds.min_tokens:
            reasons[i], details[i] = "too_short", f"{length} tokens < min_tokens {thresholds.min_tokens}"
        elif thresholds.max_tokens is not None and length > thresholds.max_tokens:
            reasons[i], details[i] = "too_long", f"{length} tokens > max_tokens {thresholds.max_tokens}"
        elif problem is not None:
            reasons[i], details[i] = problem
    texts = [record_text(r) for r in normalised]
    out = {f: [r[f] for r in normalised] for f in fields}
    out.update(
        _text=texts,
        _key=[exact_key(t) for t in texts],
        _tokens=tokens,
        _reason=reasons,
        _detail=details,
        _changed=[n != r for n, r in zip(normalised, records, strict=True)],
        _contamination=[
            reference.contamination(r, t) if reference else None for r, t in zip(normalised, texts, strict=True)
        ],
    )
    if thresholds.near_dedup:
        live = [i for i in range(size) if reasons[i] is None]
        signatures = dict(
            zip(
                live,
                minhash_signatures([texts[i] for i in live], thresholds.minhash_num_perm, thresholds.minhash_ngram),
                strict=True,
            )
        )
        blank = [0] * thresholds.minhash_num_perm  # rows dropped already are never looked up
        out["_minhash"] = [signatures.get(i, blank) for i in range(size)]
    return out


class NearDuplicateIndex:
    """datasketch MinHashLSH over the rows kept so far; a candidate counts when its estimated Jaccard >= threshold."""

    def __init__(self, threshold: float, num_perm: int):
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sketches: dict[int, LeanMinHash] = {}

    def find_or_add(self, key: int, hashvalues) -> tuple[int, float] | None:
        """(earlier row, similarity) when `key` near-duplicates a row already added; else add it and return None."""
        sketch = LeanMinHash(seed=MINHASH_SEED, hashvalues=hashvalues, scheme="affine32")
        best = None
        for other in self.lsh.query(sketch):
            similarity = sketch.jaccard(self.sketches[other])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is None:
            self.lsh.insert(key, sketch)
            self.sketches[key] = sketch
        return best


def deduplicate(
    dataset, *, exact: bool, near: NearDuplicateIndex | None, batch_size: int = 10_000
) -> tuple[list, list, dict[int, int]]:
    """Walk the annotated rows in order: drop exact and near duplicates of earlier rows and held-out matches.

    Returns the final reasons and details per row, and for each duplicate the row it duplicates.
    """
    columns = ["_reason", "_detail", "_key", "_contamination"] + (["_minhash"] if near is not None else [])
    reasons, details = [], []
    first_of: dict[str, int] = {}
    duplicate_of: dict[int, int] = {}
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=batch_size):
        offset = len(reasons)
        reasons += batch.column("_reason").to_pylist()
        details += batch.column("_detail").to_pylist()
        keys, contamination = batch.column("_key").to_pylist(), batch.column("_contamination").to_pylist()
        if near is not None:  # one row of num_perm hash values per record
            signatures = batch.column("_minhash").combine_chunks().flatten().to_numpy().reshape(len(keys), -1)
        for j, key in enumerate(keys):
            i = offset + j
            if reasons[i] is not None:
                continue
            if exact and key in first_of:
                reasons[i], details[i], duplicate_of[i] = (
                    "duplicate",
                    "same text (up to case and spacing) as",
                    first_of[key],
                )
                continue
            first_of.setdefault(key, i)
            if near is not None:
                match = near.find_or_add(i, signatures[j])
                if match is not None:
                    reasons[i], details[i], duplicate_of[i] = (
                        "near_duplicate",
                        f"Jaccard ~{match[1]:.2f} with",
                        match[0],
                    )
                    continue
            if contamination[j] is not None:
                reasons[i], details[i] = "contaminated", contamination[j]
    return reasons, details, duplicate_of
