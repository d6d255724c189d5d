"""Importing drbook's data-side modules stays light: no TensorFlow, no network, no files written.
The one place this is tested."""
import subprocess, sys
import pytest

LIGHT = ['drbook.core', 'drbook.data', 'drbook.synthetic', 'drbook.preprocess', 'drbook.splits', 'drbook.tasks', 'drbook.metrics']

PROBE = r'''
import socket, sys, os
def refuse(*a, **k): raise AssertionError('network access at import')
socket.socket.connect = refuse
socket.create_connection = refuse
before = set(os.listdir('.'))
import importlib
for m in sys.argv[1:]: importlib.import_module(m)
heavy = sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules)
assert not heavy, f'{sys.argv[1:]} imported {heavy}'
assert set(os.listdir('.')) == before, 'files written at import'
print('ok')
'''

@pytest.mark.parametrize('module', LIGHT)
def test_light_modules_import_without_tensorflow_or_network(module, tmp_path):
    r = subprocess.run([sys.executable, '-c', PROBE, module], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]
