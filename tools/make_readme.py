#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as Python blocks).

nbdev 2's own `nbdev_readme` needs Quarto, which is not a Python package; this keeps the README generated from
the index notebook with nothing but nbformat. Cells marked `#| hide` are left out.
"""
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent
HEADER = '<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n'

def render(nb)->str:
    "README text of the index notebook `nb`."
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if not src or src.startswith('#| hide') or '#| hide' in src.splitlines()[:1]: continue
        if c.cell_type == 'markdown': parts.append(src)
        elif c.cell_type == 'code':
            lines = [l for l in src.splitlines() if not l.startswith('#|')]
            if lines: parts.append('```python\n' + '\n'.join(lines) + '\n```')
    return HEADER + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text = render(nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4))
    out = ROOT/'README.md'
    if not out.exists() or out.read_text(encoding='utf-8') != text:
        out.write_text(text, encoding='utf-8'); print('wrote', out)
    else: print('README.md up to date')
