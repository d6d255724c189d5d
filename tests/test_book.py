"""`make book` (tools/build_book.py): the course as an HTML book from a run's executed notebooks, never re-executed."""
import importlib.util, io, json
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parent.parent

def _build_book():
    spec = importlib.util.spec_from_file_location('build_book', ROOT/'tools'/'build_book.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def _png()->bytes:
    from PIL import Image
    buf = io.BytesIO(); Image.new('RGB', (40, 30), (200, 60, 20)).save(buf, format='PNG')
    return buf.getvalue()

def _chapter(path:Path, title:str):
    "An executed-looking chapter: a title, a hidden cell, a cell that would fail if run, with a figure and TF's C++ log as outputs."
    import base64
    code = nbformat.v4.new_code_cell("raise SystemExit('the book must not execute notebooks')", execution_count=1, outputs=[
        nbformat.v4.new_output('stream', name='stderr', text='I0000 00:00:1796012289.286951    4866 port.cc:153] oneDNN custom\n'),
        nbformat.v4.new_output('display_data', data={'image/png': base64.b64encode(_png()).decode(), 'text/plain': '<Figure>'}),
        nbformat.v4.new_output('stream', name='stdout', text='stored output of the run\n')])
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f'# {title}\n> A fabricated chapter.'),
        nbformat.v4.new_code_cell('#| hide\nsecret_hidden_cell = 1', execution_count=0),
        nbformat.v4.new_markdown_cell('## A section\n\nWith $x^2$ in it.'), code])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, str(path))

def _run(root:Path, names:list, ok:bool=True)->Path:
    "A run folder like `drbook reproduce` writes, with the chapters `names` executed."
    (root/'notebooks').mkdir(parents=True)
    for i, n in enumerate(names): _chapter(root/'notebooks'/f'{n}.ipynb', f'Chapter {n}')
    (root/'summary.json').write_text(json.dumps({'ok': ok, 'notebooks': [{'notebook': n, 'status': 'ok'} for n in names]}))
    (root/'summary.md').write_text('# drbook run: profile `test`\n\n| notebook | status |\n|---|---|\n| 00_alpha | ok |\n')
    return root

def test_latest_complete_run(tmp_path):
    bb = _build_book()
    assert bb.latest_run(tmp_path) is None
    _run(tmp_path/'sample-20260101-000000', ['00_alpha'])
    _run(tmp_path/'sample-20260102-000000', ['00_alpha'], ok=False)  # newer, but failed
    (tmp_path/'sample-20260103-000000').mkdir()  # newest, still running (no summary)
    assert bb.latest_run(tmp_path).name == 'sample-20260101-000000'
    assert [p.stem for p in bb.run_chapters(tmp_path/'sample-20260101-000000')] == ['00_alpha']

def test_no_run_says_make_reproduce(tmp_path, monkeypatch, capsys):
    bb = _build_book()
    monkeypatch.setattr(bb, 'RUNS', tmp_path)
    monkeypatch.setattr(bb, 'latest_run', lambda: None)
    assert bb.main(['--out', str(tmp_path/'book')]) == 1
    assert 'make reproduce' in capsys.readouterr().err

@pytest.mark.slow
def test_book_from_a_small_run(tmp_path):
    for m in ('sphinx', 'myst_nb', 'sphinx_book_theme'):
        pytest.importorskip(m, reason=f'{m} is not installed (the dev extra installs the book tools)')
    bb = _build_book()
    names = ['00_alpha', '03_beta']
    run = _run(tmp_path/'sample-20260101-000000', names)
    index = bb.build(run, tmp_path/'book')
    html = index.parent
    assert index.exists() and 'Chapter 00_alpha' in index.read_text(encoding='utf-8')  # navigation on the landing page
    for n in names:
        page = (html/f'{n}.html').read_text(encoding='utf-8')
        assert '<img' in page, f'{n}: no figure'
        assert 'stored output of the run' in page  # outputs shown as stored: nothing was executed
        assert 'secret_hidden_cell' not in page and 'oneDNN' not in page
    assert '<img' in (html/'03_beta.html').read_text(encoding='utf-8')
    api = (html/'api'/'index.html').read_text(encoding='utf-8')
    assert 'drbook.core' in api
    core = (html/'api'/'core.html').read_text(encoding='utf-8')
    assert 'work_dir' in core and 'record' in core
    assert (html/'run_summary.html').exists() and (html/'search.html').exists()

def test_progress_bars_show_their_last_state_and_tensorflow_logs_are_dropped():
    bb = _build_book()
    bar = 'preprocess:   0%|          | 0/4\rpreprocess:  50%|#####     | 2/4\rpreprocess: 100%|##########| 4/4\n'
    gone = 'synthetic:   0%|          | 0/5\rsynthetic: 100%|##########| 5/5\r                                \r'  # leave=False
    outs = bb._quiet([nbformat.v4.new_output('stream', name='stderr', text=bar + gone + 'UserWarning: masks: 1 of 3 are empty\n'),
                      nbformat.v4.new_output('stream', name='stderr', text=gone + 'I0000 00:00:1796012289.286951    4866 port.cc:153] oneDNN\n'),
                      nbformat.v4.new_output('stream', name='stdout', text='kept as it is\r\n')])
    assert [o.text for o in outs] == ['preprocess: 100%|##########| 4/4\nUserWarning: masks: 1 of 3 are empty\n', 'kept as it is\r\n']
