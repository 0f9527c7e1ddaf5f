"""`rlhf-recipes init DIR`: a working folder for an installed package, laid out as the repository is, so that every
command of the README runs in it unchanged: `configs/<name>/` (a model folder's YAMLs, copied out of the package),
`configs/accelerate/`, and `data/demo/` (the demo data, written by its seeded generator: the same bytes as the
repository's). Nothing that exists is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .errors import UserError


def config_folders() -> list[str]:
    """The config folders shipped with the package (model folders, accelerate, data examples)."""
    from .stages import CONFIGS

    return sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def parse_args(argv: list[str]) -> argparse.Namespace:
    from .stages import EXAMPLES

    parser = argparse.ArgumentParser(
        prog="rlhf-recipes init",
        description="Copy a model folder's configs and the demo data out of the installed package into DIR.",
        epilog="then: cd DIR && rlhf-recipes pipeline --config configs/smollm2-135m/pipeline.yaml",
    )
    parser.add_argument("dir", help="the working folder to create (or an empty / unrelated one to add to)")
    parser.add_argument("--configs", default=EXAMPLES, help=f"the config folder to copy (default: {EXAMPLES})")
    parser.add_argument("--no-demo-data", action="store_true", help="do not write data/demo (the demo's data)")
    parser.error = lambda message: _refuse(f"{message}; see rlhf-recipes init --help")
    return parser.parse_args(argv)


def _refuse(message: str):
    raise UserError(message + ".")


def init(target: str | Path, configs: str, demo_data: bool = True) -> list[Path]:
    """Copy `configs/<configs>/` and `configs/accelerate/` (and write `data/demo/`) into `target`; returns what was
    written. A folder that is already there is left as it is and said so."""
    from .stages import CONFIGS

    known = config_folders()
    if configs not in known:
        raise UserError(f"there is no config folder '{configs}' in the package; the folders are {', '.join(known)}.")
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; give a folder to create (rlhf-recipes init DIR).")
    written = []
    for name in dict.fromkeys([configs, "accelerate"]):
        destination = target / "configs" / name
        if destination.exists():
            print(f"{destination} exists: left as it is")
            continue
        shutil.copytree(CONFIGS / name, destination, ignore=shutil.ignore_patterns("__pycache__"))
        written.append(destination)
    demo = target / "data" / "demo"
    if demo_data and not demo.exists():
        from .demo import write_demo_data

        write_demo_data(demo, seed=0)
        written.append(demo)
    elif demo_data:
        print(f"{demo} exists: left as it is")
    return written


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    written = init(args.dir, args.configs, demo_data=not args.no_demo_data)
    for path in written:
        print(f"wrote {path}")
    folder = f"configs/{args.configs}"
    commands = (
        (f"cd {args.dir}", ""),
        (f"rlhf-recipes pipeline --config {folder}/pipeline.yaml", "every stage on the demo data"),
        (f"rlhf-recipes plan --config {folder}/pipeline.yaml", "will it fit? (memory per stage)"),
        (f"rlhf-recipes sft --config {folder}/sft.yaml --dataset_name YOUR/FOLDER", "one stage on your data"),
        ("rlhf-recipes sft --help", "the keys of a stage's YAML"),
    )
    width = max(len(command) for command, _ in commands)
    print("\nNext:\n" + "\n".join(f"  {c:<{width}}  # {w}" if w else f"  {c}" for c, w in commands))
