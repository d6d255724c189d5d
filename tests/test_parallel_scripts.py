"""Parallel work (drbook.core.imap_chunked, on joblib's loky) from the places users call it: a plain script file
without an `if __name__ == '__main__':` guard that imports TensorFlow first, and the same code fed to `python -`."""
import json, os, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT/'data_samples'

# No main guard on purpose: worker processes that ran this file again would import TensorFlow and start pools of their own.
SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    import pandas as pd
    from drbook.data import load_table
    from drbook.preprocess import find_corrupt, preprocess_dataset
    table = load_table(sys.argv[1]).iloc[:6]
    paths = list(table['image_path']) + [sys.argv[2]]  # six good images and one truncated file
    report = find_corrupt(paths, workers=2, progress=False)
    out, failures = preprocess_dataset(table, 'graham', size=64, cache_dir=sys.argv[3], workers=2, progress=False)
    print(json.dumps({'corrupt': list(report['path']), 'reasons': list(report['reason']),
                      'done': int(out['preprocessed_path'].notna().sum()), 'failed': len(failures),
                      'processed': out.attrs['preprocess']['processed'], 'tf': 'tensorflow' in sys.modules}))
''')


@pytest.fixture()
def inputs(tmp_path):
    "The arguments of SCRIPT: the samples table, a truncated copy of one sample, a cache folder."
    good = sorted((SAMPLES/'images').glob('*.jpg'))[0]
    bad = tmp_path/'truncated.jpg'
    bad.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    return [str(SAMPLES/'samples.csv'), str(bad), str(tmp_path/'cache')]


def check(result, inputs):
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got['tf'], 'the script was meant to import TensorFlow before the parallel work'
    assert got['corrupt'] == [inputs[1]] and 'truncated' in got['reasons'][0]
    assert (got['done'], got['failed'], got['processed']) == (6, 0, 6)
    assert len(list(Path(inputs[2]).glob('*/*.jpg'))) == 6


def run(args, tmp_path, **kw):
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'CUDA_VISIBLE_DEVICES': ''}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_script_file_without_main_guard_after_tensorflow(inputs, tmp_path):
    script = tmp_path/'prepare.py'
    script.write_text(SCRIPT)
    check(run([str(script), *inputs], tmp_path), inputs)


@pytest.mark.slow
def test_same_code_on_stdin(inputs, tmp_path):
    check(run(['-', *inputs], tmp_path, input=SCRIPT), inputs)
