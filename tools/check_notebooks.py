#!/usr/bin/env python
"""Checks the notebook conventions nbdev_clean does not: committed notebooks carry no outputs (executed copies
live under runs/), every numbered notebook starts with `#| default_exp`, an H1 title, and one `parameters` cell,
and every numbered notebook that reads images declares `table_csv` (the rule is `drbook.profiles.reads_images`,
the one `drbook reproduce` also applies)."""
import sys
from functools import cache
from pathlib import Path
import nbformat
from drbook.profiles import declared_parameters, image_readers, reads_images

readers = cache(image_readers)  # drbook's functions that read images, found once from the notebooks

ROOT = Path(__file__).resolve().parent.parent

def problems(path:Path)->list:
    "What is wrong with the notebook at `path`, as messages naming it."
    nb, out = nbformat.read(path, as_version=4), []
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'code' and (c.outputs or c.execution_count):
            out.append(f'{path.name}: cell {i} has outputs (clear them: the course is executed by `make reproduce`)')
    if path.stem[:2].isdigit():
        params = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
        if len(params) != 1: out.append(f'{path.name}: needs exactly one cell tagged `parameters`, found {len(params)}')
        if not nb.cells or not nb.cells[0].source.startswith('#| default_exp'):
            out.append(f'{path.name}: the first cell must be `#| default_exp <module>`')
        if not any(c.cell_type == 'markdown' and c.source.startswith('# ') for c in nb.cells[:3]):
            out.append(f'{path.name}: an H1 title belongs in the first cells')
        calls = reads_images(path, readers())
        if calls and len(params) == 1 and 'table_csv' not in declared_parameters(path):
            out.append(f"{path.name}: reads images ({', '.join(calls)}) but its parameters cell does not declare "
                       "`table_csv` (a profile's table would not reach it)")
    return out

if __name__ == '__main__':
    msgs = [m for p in sorted((ROOT/'nbs').glob('*.ipynb')) for m in problems(p)]
    print('\n'.join(msgs) if msgs else 'check-notebooks: conventions hold')
    sys.exit(1 if msgs else 0)
