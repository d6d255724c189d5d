"""S3's profile rehearsed on a CPU: experiments 1-5, VGG16 and MobileNetV2 transfer and fine-tuning, ensembles of saved models."""
from pathlib import Path
import pytest
from drbook import registry

@pytest.mark.slow  # nine chapters on a miniature EyePACS: several minutes
def test_s3_rehearsal_ensembles_the_models_07_08_09_saved_in_the_same_run(rehearse):
    run, s = rehearse('s3-eyepacs2015')
    index = registry.read_index(run)
    saved = [str((run/index[n]['folder']).resolve()) for n in ('07/exp3', '08/VGG16-s3_gap256-sgd', '09/block_16')]
    ten = next(n for n in s['notebooks'] if n['notebook'] == '10_ensembles')
    assert ten['parameters']['members'] == saved  # the member files are the ones those chapters wrote in this run
    assert all(Path(m).is_relative_to(run) and (Path(m)/'model.keras').is_file() for m in saved)
