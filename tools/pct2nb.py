#!/usr/bin/env python
"""Build a notebook from a percent-format script (authoring aid, not part of the library).

Cells start at lines `# %%` (code), `# %% [markdown]` (markdown, each line's leading `# ` removed)
or `# %% tags=["parameters"]` (code with tags). Usage: python tools/pct2nb.py draft.py nbs/NN_name.ipynb
"""
import json, re, sys
import nbformat

HEAD = re.compile(r'^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$')

def convert(text):
    "Cells of a notebook from percent-format `text`."
    cells, kind, tags, buf = [], None, [], []
    def flush():
        if kind is None: return
        src = '\n'.join(buf).strip('\n')
        if kind == 'md':
            src = '\n'.join(l[2:] if l.startswith('# ') else l.lstrip('#') for l in src.split('\n'))
            cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            if tags: c.metadata['tags'] = tags
            cells.append(c)
    for line in text.split('\n'):
        m = HEAD.match(line)
        if m:
            flush()
            kind, tags, buf = ('md' if m['md'] else 'code'), (json.loads(m['tags']) if m['tags'] else []), []
        else: buf.append(line)
    flush()
    return cells

if __name__ == '__main__':
    src, dst = sys.argv[1], sys.argv[2]
    nb = nbformat.v4.new_notebook()
    nb.cells = convert(open(src).read())
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    nbformat.write(nb, dst)
    print('wrote', dst, len(nb.cells), 'cells')
