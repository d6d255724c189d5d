"""drbook.splits: the split by patient, balancing, class and label weights, and prepare_splits on real files."""
import subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from drbook.data import REPORT_COLUMNS
from drbook.preprocess import ImageReadError
from drbook.splits import balance, class_weights, label_pos_weights, load_graded, prepare_splits, split_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_splits_have_one_home():
    "No other drbook module defines or exports a name of drbook.splits (drbook.preprocess held them before)."
    import ast, drbook.splits
    mine = set(drbook.splits.__all__)
    for f in sorted((ROOT/'drbook').glob('*.py')):
        if f.stem in ('splits', '_modidx'): continue
        tree = ast.parse(f.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        exported = {ast.literal_eval(e) for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in n.targets)
                    for e in n.value.elts}
        assert not (defined | exported) & mine, (f.name, sorted((defined | exported) & mine))


def test_no_tensorflow_import():
    code = 'import sys, drbook.splits; print("tensorflow" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip() == 'False'


@pytest.fixture()
def cohort():
    "600 patients with one or two eyes, grades skewed like screening data, a few rows without a patient."
    rng = np.random.default_rng(0)
    rows = []
    for p in range(600):
        g = int(rng.choice(5, p=[0.6, 0.12, 0.16, 0.06, 0.06]))
        for eye in ['left', 'right'][:int(rng.integers(1, 3))]:
            rows.append({'patient': f'p{p}', 'eye': eye, 'grade': int(np.clip(g + rng.integers(-1, 2), 0, 4))})
    for i in range(30): rows.append({'patient': None, 'eye': None, 'grade': int(rng.integers(0, 5))})
    t = pd.DataFrame(rows).astype({'patient': 'string', 'grade': 'Int64'})
    t['image_path'] = [f'/nowhere/{i}.jpg' for i in range(len(t))]
    return t


def test_split_groups_patients_and_stratifies(cohort):
    fr = (0.8, 0.1, 0.1)
    parts = split_table(cohort, fr, seed=3)
    assert sorted(np.concatenate([p.index for p in parts])) == list(cohort.index)  # each row exactly once
    owners = pd.concat([p['patient'].dropna().drop_duplicates().to_frame().assign(k=k) for k, p in enumerate(parts)])
    assert not owners['patient'].duplicated().any()  # no patient in two splits
    n_c = cohort['grade'].value_counts()
    for k, p in enumerate(parts):
        got = p['grade'].value_counts().reindex(n_c.index, fill_value=0)
        assert (abs(got - fr[k] * n_c) <= 2 + 0.02 * n_c).all(), (k, got.to_dict(), (fr[k] * n_c).to_dict())
    assert [p.index.tolist() for p in split_table(cohort, fr, seed=3)] == [p.index.tolist() for p in parts]
    assert [p.index.tolist() for p in split_table(cohort, fr, seed=4)] != [p.index.tolist() for p in parts]
    train, val = split_table(cohort, '90/10', seed=3)
    assert len(val) / len(cohort) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match='summing to 1'): split_table(cohort, (0.8, 0.3))


def test_balance(cohort):
    vc = lambda t: t['grade'].value_counts().sort_index()
    counts = vc(cohort)
    both = balance(cohort, 100, seed=1)
    assert (vc(both) == 100).all()
    under = balance(cohort, 100, how='under', seed=1)
    assert (vc(under) == counts.clip(upper=100)).all()
    assert not under['image_path'].duplicated().any() and set(under['image_path']) <= set(cohort['image_path'])
    over = balance(cohort, 100, how='over', seed=1)
    assert (vc(over) == counts.clip(lower=100)).all()
    for g, rows in over.groupby('grade'):  # repeats are copies of the class's own rows, every original kept
        assert set(rows['image_path']) == set(cohort.loc[cohort['grade'] == g, 'image_path'])
    assert (vc(balance(cohort, seed=1)) == counts.min()).all()  # default: the smallest class
    assert balance(cohort, 50, seed=1).equals(balance(cohort, 50, seed=1))
    with pytest.raises(ValueError, match='NA'): balance(cohort.assign(grade=cohort['grade'].astype('Float64').where(cohort.index > 0)), 10)


def test_class_weights():
    s3 = class_weights(np.repeat(range(5), [25810, 2443, 5292, 873, 708]), 's3')  # EyePACS 2015 training labels
    assert list(s3.values()) == pytest.approx([0.27219, 2.87548, 1.32743, 8.04673, 9.92203], rel=2e-4)  # S3 Table 3
    from sklearn.utils.class_weight import compute_class_weight
    y = np.random.default_rng(0).choice(5, 500, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    assert list(class_weights(y).values()) == pytest.approx(compute_class_weight('balanced', classes=np.arange(5), y=y))
    assert sum(class_weights(y)[c] * (y == c).sum() for c in range(5)) == pytest.approx(len(y))  # total weight kept
    with pytest.raises(ValueError, match='no examples'): class_weights([0, 0, 1], classes=[0, 1, 2])


def test_label_pos_weights():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({f'has_{k}': rng.random(300) < p for k, p in zip(['MA', 'HE', 'EX', 'SE'], [0.5, 0.3, 0.2, 0.05])}).astype('boolean')
    t.loc[:9, 'has_SE'] = pd.NA  # unknown lesions: left out
    known = t.dropna().astype(bool)
    pos = [known[f'has_{k}'].sum() for k in ['MA', 'HE', 'EX', 'SE']] + [(~known.any(axis=1)).sum()]
    w = label_pos_weights(t, 'neg_pos')
    assert list(w) == ['MA', 'HE', 'EX', 'SE', 'healthy']
    assert list(w.values()) == pytest.approx([(len(known) - p) / p for p in pos])
    inv = label_pos_weights(t)
    assert list(inv.values()) == pytest.approx([len(known) / (5 * p) for p in pos])
    with pytest.raises(ValueError, match='lacks'): label_pos_weights(t.drop(columns='has_EX'))


def test_prepare_splits_reports_unreadable_images_and_splits_the_rest(tmp_path, monkeypatch):
    "Real sample photographs plus a truncated copy and a missing file: the bad rows are reported, never split."
    monkeypatch.setenv('DRBOOK_CACHE', str(tmp_path/'cache'))
    table = load_graded(max_images=20, seed=0)
    good = Path(table['image_path'].iloc[0])
    (tmp_path/'truncated.jpg').write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    bad = table.iloc[:2].assign(image_path=[str(tmp_path/'truncated.jpg'), str(tmp_path/'gone.jpg')], patient=['x1', 'x2'])
    mixed = pd.concat([table, bad], ignore_index=True)
    splits, report = prepare_splits(mixed, 's3', 32, seed=0)
    assert dict(report.dtypes.astype(str)) == REPORT_COLUMNS
    assert sorted(Path(p).name for p in report['path']) == ['gone.jpg', 'truncated.jpg']
    assert sorted(report['row']) == [len(table), len(table) + 1]  # the rows of `mixed` that failed
    kept = pd.concat(splits.values())
    assert len(kept) == len(table) and kept['preprocessed_path'].notna().all()
    assert not set(kept['image_path']) & {str(tmp_path/'truncated.jpg'), str(tmp_path/'gone.jpg')}
    with pytest.raises(ImageReadError): prepare_splits(mixed, 's3', 32, seed=0, errors='raise')
    with pytest.raises(ValueError, match="errors='ignore'"): prepare_splits(table, '', errors='ignore')  # checked without a recipe too
