"""`drbook` subcommands report bad input the same way: exit status 2 and one line `drbook <command>: <cause>`."""
import json
import nbformat
import pytest
from drbook.cli import main

def one_error_line(capsys, argv, command):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'drbook {command}: '), err
    return err

def test_every_subcommand_reports_bad_input_on_one_line_with_status_2(capsys, tmp_path):
    assert 'not found' in one_error_line(capsys, ['reproduce', '--profile', 'no-such-profile'], 'reproduce')
    assert 'not a run folder' in one_error_line(capsys, ['records', str(tmp_path)], 'records')
    assert 'not a finished run folder' in one_error_line(capsys, ['compare', str(tmp_path), str(tmp_path)], 'compare')
    assert 'not a finished run folder' in one_error_line(capsys, ['reference', '--update', str(tmp_path)], 'reference')
    bad = tmp_path/'bad.yaml'; bad.write_text('parameters: [1, 2]\n')
    assert 'bad.yaml' in one_error_line(capsys, ['reproduce', '--check', '--profile', str(bad)], 'reproduce')

def test_a_model_reference_nobody_published_is_refused_by_check(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv('DRBOOK_RUNS', str(tmp_path/'runs'))
    nbs = tmp_path/'nbs'; nbs.mkdir()
    for stem in ('08_x', '12_y'):
        nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell("model = ''", metadata={'tags': ['parameters']})]
        nbformat.write(nb, nbs/f'{stem}.ipynb')
    prof = tmp_path/'p.yaml'
    prof.write_text(json.dumps({'parameters': {'12_y': {'model': '@08/InceptionV3-s1-adam'}}}))
    assert main(['reproduce', '--check', '--profile', str(prof), '--nbs', str(nbs)]) == 0  # 08 runs first
    capsys.readouterr()
    err = one_error_line(capsys, ['reproduce', '--check', '--profile', str(prof), '--nbs', str(nbs), '--only', '12'], 'reproduce')
    assert '12_y' in err and 'chapter 08 is not in this run' in err, err

@pytest.mark.slow  # imports TensorFlow for drbook predict
def test_predict_reports_a_missing_model_on_one_line(capsys, tmp_path):
    (tmp_path/'photos').mkdir()
    assert 'missing.keras' in one_error_line(capsys, ['predict', str(tmp_path/'missing.keras'), str(tmp_path/'photos'), '--out', str(tmp_path/'out')], 'predict')
