"""Data preparation (`recipes/prepare_data.py`, the stage "data"), one concern per module:

- `config`   the YAML's dataclasses, their rules, `--help`'s schema, `parse_argv` (the registry's parser)
- `files`    extensions and compressions read, and the walk that names the file and line of a row
- `find`     finding a source's files (and the split of a folder) or its Hub id
- `sources`  reading a source, detecting its format, converting it to the output kind
- `formats`  the input formats and their conversion into TRL's standard formats (the output kinds)
- `cleaning` normalisation, filters, exact and near-duplicate removal, decontamination
- `report`   report.json, report.md and the token-length histograms
- `prepare`  the run: load everything, clean, mix, write each dataset aside, rename all into place
"""
