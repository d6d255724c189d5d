"""Each seed profile's CPU rehearsal: the same chapters and parameters on a miniature dataset in the real layout."""
import json, subprocess, sys
from pathlib import Path
import pytest
from drbook import data
from drbook.profiles import check_model_references, read_dataset, check_parameters, check_table_csv, chapter_notebooks, load_profile
from drbook.rehearsal import MARKER, rehearsal_profile, write_miniature

SEEDS = ['s1-aptos2019', 's2-resnet-finetune', 's3-eyepacs2015', 's4-multilabel']

def drbook(*args):
    return subprocess.run([str(Path(sys.executable).parent/'drbook'), *args], capture_output=True, text=True)

@pytest.mark.parametrize('name', SEEDS)
def test_the_rehearsal_changes_only_what_cannot_run_here(name, tmp_path):
    real, reh = load_profile(name), rehearsal_profile(name, data_root=tmp_path)
    plan, real_plan = check_parameters(reh), check_parameters(real)
    nbs = chapter_notebooks(None, reh['notebooks'])
    check_table_csv(nbs, reh)
    assert reh['name'] == f'{name}-rehearsal' and not reh['require_gpu'] and reh['paper'] == real['paper']
    assert set(plan) == set(real_plan) and [p.stem for p in nbs] == [p.stem for p in chapter_notebooks(None, real['notebooks'])]
    scaled = {(nb, k) for nb, p in real['rehearsal']['parameters'].items() for k in p}
    for nb, params in real_plan.items():
        for k, v in params.items():
            if k == 'weights' and v == 'imagenet': assert plan[nb][k] == 'none', (nb, k)
            elif k == 'require_gpu': assert plan[nb][k] is False
            elif (nb, k) not in scaled and ('*', k) not in scaled: assert plan[nb][k] == v, (nb, k)  # everything else as the real run
    for ds, spec in reh['datasets'].items():  # the miniature is read by the profile's own reader, in the real layout
        assert Path(spec['root']).is_relative_to(tmp_path) and (Path(spec['root'])/MARKER).is_file()
        table = read_dataset(ds, spec, reh['name'])  # every reading the profile's `options` ask for (S3: train and test)
        assert table['grade'].value_counts().tolist() == [real['rehearsal']['datasets'][ds]['per_grade']] * 5 \
            or spec['reader'] == 'idrid-segmentation'
    if name == 's3-eyepacs2015': assert set(table['split']) == {'train', 'test'}  # Kaggle's test set is the test split
    if name == 's3-eyepacs2015':  # 10 takes the models 07, 08 and 09 save earlier in the same run
        check_model_references(nbs, reh)
        assert plan['10_ensembles']['members'] == real_plan['10_ensembles']['members']

def test_a_miniature_never_replaces_the_users_files(tmp_path):
    mine = tmp_path/'aptos'; mine.mkdir(); (mine/'train.csv').write_text('id_code,diagnosis\nmine,2\n')
    with pytest.raises(FileExistsError, match='not a drbook miniature'): write_miniature('aptos2019', mine, per_grade=2)
    assert (mine/'train.csv').read_text() == 'id_code,diagnosis\nmine,2\n'
    root = write_miniature('eyepacs2015', tmp_path/'eyepacs', per_grade=3, size=64)
    both = lambda: len(data.read_eyepacs(root)) + len(data.read_eyepacs(root, 'retinopathy_solution.csv', 'test', 'test'))
    assert both() == 15
    write_miniature('eyepacs2015', root, per_grade=2, size=64)  # an earlier miniature is replaced by the new request
    assert both() == 10 and json.loads((root/MARKER).read_text())['per_grade'] == 2

def test_a_profile_without_a_rehearsal_is_refused_and_check_shows_the_plan(tmp_path):
    r = drbook('reproduce', '--profile', 'sample', '--rehearse', '--runs', str(tmp_path))
    assert r.returncode == 2 and "has no `rehearsal:` block" in r.stderr, r.stderr
    r = drbook('reproduce', '--check', '--rehearse', '--profile', 's4-multilabel')
    assert r.returncode == 0, r.stderr
    assert "profile 's4-multilabel-rehearsal'" in r.stdout and "dataset 'idrid': 60 rows read" in r.stdout
    assert "weights='none'" in r.stdout and 'image_size=64' in r.stdout
