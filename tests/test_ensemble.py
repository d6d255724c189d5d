"""drbook.ensemble: S3's voting and weights on hand-made numbers, S3's Table 3, stacking that never sees test labels,
saved member scores and the manifests that are refused."""
import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import json
import numpy as np
import pandas as pd
import pytest
from drbook.splits import class_weights
from drbook.ensemble import (MemberSpec, accuracy_weights, aligned_grades, average_to_grades,
                             cv_folds, load_model_scores, majority_vote, member_probabilities, member_recalls,
                             logistic_stacker, parse_members, recall_weights, s3_stacker_model, save_member_scores,
                             stack, stack_features, weighted_average, member_name, reference_splits,
                             score_member, check_member_scores)
from drbook.registry import table_fingerprint
from drbook.metrics import qwk


def _splits(n=(20, 30, 25), seed=0):
    "Split tables with image ids and grades 0–4 (every grade in each split)."
    rng, out, start = np.random.default_rng(seed), {}, 0
    for name, k in zip(('train', 'val', 'test'), n):
        grades = np.concatenate([np.arange(5), rng.integers(0, 5, k - 5)])
        out[name] = pd.DataFrame({'image_id': [f'img{start + i:03d}' for i in range(k)], 'grade': pd.array(grades, 'Int64')})
        start += k
    return out


def _noisy_members(splits, folder, seed=0):
    "Three saved members whose outputs are noisy versions of the true grades: softmax, ordinal and regression."
    rng = np.random.default_rng(seed)
    for name, task in (('soft', 'multiclass'), ('ord', 'ordinal'), ('reg', 'regression')):
        scores = {}
        for split in ('val', 'test'):
            g = splits[split].grade.to_numpy(int) + rng.normal(0, 0.8, len(splits[split]))
            if task == 'regression': scores[split] = g
            elif task == 'ordinal': scores[split] = 1 / (1 + np.exp(-(g[:, None] - np.arange(4) - 0.5) * 3))
            else:
                z = -np.abs(g[:, None] - np.arange(5)) * 2
                scores[split] = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        save_member_scores(folder, name, task, scores, splits)
    return load_model_scores(folder, tables=splits)


# --- S3's rules on hand-made numbers

def test_majority_vote_tie_break_goes_to_the_most_accurate_member():
    votes = [[2, 0, 1, 4],
             [2, 1, 1, 3],
             [3, 1, 0, 3],
             [3, 0, 0, 4]]
    # eye 0: 2 vs 3 tied; eye 1: 0 vs 1 tied; eye 2: 1 vs 0 tied; eye 3: 4 vs 3 tied
    assert majority_vote(votes, [0.9, 0.8, 0.7, 0.6]).tolist() == [2, 0, 1, 4]
    assert majority_vote(votes, [0.6, 0.7, 0.8, 0.9]).tolist() == [3, 0, 0, 4]
    assert majority_vote(votes, [0.5, 0.9, 0.5, 0.5]).tolist() == [2, 1, 1, 3]
    # no tie: the majority wins whatever the accuracies
    assert majority_vote([[1], [2], [2]], [0.99, 0.1, 0.1]).tolist() == [2]
    # the best member's grade is not among the tied ones: the most accurate member that voted a tied grade decides
    assert majority_vote([[4], [1], [2], [1], [2]], [0.9, 0.2, 0.3, 0.1, 0.1]).tolist() == [2]
    # equal accuracies: the first member in order
    assert majority_vote([[1], [3]], [0.5, 0.5]).tolist() == [1]


def test_majority_vote_bad_input():
    with pytest.raises(ValueError, match='one accuracy per member'): majority_vote([[0, 1]], [0.5, 0.5])
    with pytest.raises(ValueError, match='outside the ICDR grades'): majority_vote([[0, 7]], [0.5])


def test_accuracy_weights():
    np.testing.assert_allclose(accuracy_weights([0.7, 0.7, 0.6]), [0.35, 0.35, 0.3])
    with pytest.raises(ValueError): accuracy_weights([0.5, np.nan])
    with pytest.raises(ValueError): accuracy_weights([0.0, 0.0])


def test_recall_weights_by_hand():
    recalls = np.array([[0.9, 0.1, 0.2, 0.0, 0.0],
                        [0.5, 0.4, 0.4, 0.3, 0.2]])
    cw = [0.27219, 2.87548, 1.32743, 8.04673, 9.92203]
    raw = [0.9 * 0.27219 + 0.1 * 2.87548 + 0.2 * 1.32743,
           0.5 * 0.27219 + 0.4 * 2.87548 + 0.4 * 1.32743 + 0.3 * 8.04673 + 0.2 * 9.92203]
    np.testing.assert_allclose(recall_weights(recalls, cw), np.array(raw) / sum(raw))
    np.testing.assert_allclose(recall_weights(recalls, dict(enumerate(cw))), np.array(raw) / sum(raw))
    with pytest.raises(ValueError, match='zero recall'): recall_weights(np.zeros((2, 5)), cw)


def test_member_recalls():
    y = [0, 0, 1, 1, 2, 4]
    r = member_recalls(y, [[0, 1, 1, 1, 0, 4], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(r, [[0.5, 1, 0, 0, 1], [1, 0, 0, 0, 0]])  # grade 3 absent: 0


def test_s3_table3_class_weights_from_its_class_counts():
    counts = [25808, 2443, 5292, 873, 708]  # S3 Table 1, the EyePACS training set
    w = class_weights(np.repeat(np.arange(5), counts), method='s3')
    np.testing.assert_allclose(list(w.values()), [0.27219, 2.87548, 1.32743, 8.04673, 9.92203], atol=1e-5)


def test_weighted_average_and_both_readings():
    p = np.array([[[0.1, 0.5, 0.4, 0, 0]], [[0.1, 0.2, 0.7, 0, 0]]])
    avg = weighted_average(p, [0.5, 0.5])
    np.testing.assert_allclose(avg, [[0.1, 0.35, 0.55, 0, 0]])
    assert average_to_grades(avg, 'argmax').tolist() == [2]
    assert average_to_grades(avg, 'round').tolist() == [1]  # expected grade 1.45
    with pytest.raises(ValueError, match='summing to 1'): weighted_average(p, [1, 1])


def test_parse_members():
    assert parse_members('x=transfer/VGG16/sigmoid/3') == [MemberSpec('x', 'transfer', 'VGG16', 'sigmoid', 3)]
    with pytest.raises(ValueError, match='unknown task'): parse_members('x=scratch/sample/softmax')
    with pytest.raises(ValueError, match='letters, digits'): parse_members('x y=scratch/sample')


# --- stacking

@pytest.mark.slow  # a subprocess or several trainings: a few seconds
def test_stacking_never_sees_test_labels(tmp_path):
    splits = _splits()
    members = _noisy_members(splits, tmp_path)
    for method, kw in (('logistic', {}), ('dense', {'epochs': 5})):
        before = stack(members, splits, method, folds=3, seed=1, **kw)
        rng = np.random.default_rng(7)
        relabelled = {**splits, 'test': splits['test'].assign(grade=pd.array(rng.integers(0, 5, len(splits['test'])), 'Int64'))}
        assert (relabelled['test'].grade != splits['test'].grade).any()
        after = stack(members, relabelled, method, folds=3, seed=1, **kw)
        np.testing.assert_allclose(after['test'], before['test'], atol=1e-6)
        np.testing.assert_allclose(after['val'], before['val'], atol=1e-6)
        assert before['test'].shape == (25, 5) and np.allclose(before['test'].sum(1), 1, atol=1e-5)
    # test tables without any grade at all: nothing of the test split is read but its scores
    no_labels = {**splits, 'test': splits['test'].drop(columns='grade')}
    np.testing.assert_allclose(stack(members, no_labels, folds=3, seed=1)['test'],
                               stack(members, splits, folds=3, seed=1)['test'])


def test_stacking_is_cross_fitted(tmp_path):
    "Each eye's out-of-fold validation prediction comes from a stacker fitted on the other folds only."
    splits = _splits()
    members = _noisy_members(splits, tmp_path)
    base = stack(members, splits, 'logistic', folds=5, seed=0)
    y, X = aligned_grades(members, splits['val'], 'val'), stack_features(members, 'val')
    folds = cv_folds(y, 5, seed=0)
    for k, (fit_idx, out_idx) in enumerate(folds):
        assert not set(fit_idx) & set(out_idx)
        np.testing.assert_allclose(base['val'][out_idx], logistic_stacker(X[fit_idx], y[fit_idx], seed=k)(X[out_idx]))
    test_mean = np.mean([logistic_stacker(X[f], y[f], seed=k)(stack_features(members, 'test')) for k, (f, _) in enumerate(folds)], 0)
    np.testing.assert_allclose(base['test'], test_mean)
    val = splits['val'].copy(); val['grade'] = pd.array((val.grade.to_numpy(int) + 1) % 5, 'Int64')
    assert not np.allclose(stack(members, {**splits, 'val': val}, 'logistic', folds=5)['test'], base['test'])  # it learns from val labels


def test_stacking_learns_from_informative_members(tmp_path):
    splits = _splits((20, 60, 40))
    members = _noisy_members(splits, tmp_path)
    out = stack(members, splits, 'logistic', folds=5)
    assert qwk(splits['test'].grade.to_numpy(int), out['test'].argmax(1)) > 0.6


def test_cv_folds_cover_every_eye_once():
    y = np.repeat(np.arange(5), [10, 3, 6, 2, 9])
    folds = cv_folds(y, 4, seed=0)
    held = np.sort(np.concatenate([out for _, out in folds]))
    assert held.tolist() == list(range(len(y)))
    for fit_idx, out_idx in folds: assert not set(fit_idx) & set(out_idx)
    with pytest.raises(ValueError, match='at least 2 folds'): cv_folds([1], 5)


def test_s3_stacker_model_shape():
    m = s3_stacker_model(11)
    assert [l.name for l in m.layers][-4:] == ['dense_512', 'dense_128', 'logits', 'predictions']
    assert m.output.shape[-1] == 5


# --- saved scores and refused manifests

def test_round_trip_and_checks(tmp_path):
    splits = _splits()
    members = _noisy_members(splits, tmp_path)
    assert [m['name'] for m in members] == ['ord', 'reg', 'soft']
    assert members[0]['image_ids']['test'] == splits['test'].image_id.tolist()
    assert aligned_grades(members, splits['val'], 'val').tolist() == splits['val'].grade.tolist()
    p = member_probabilities(members[0], 'test')
    assert p.shape == (25, 5) and np.allclose(p.sum(1), 1)
    man = json.loads((tmp_path/'soft.json').read_text())
    assert man['task'] == 'multiclass' and man['tables'] == table_fingerprint(splits)
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(
        f'{n}{s}' for n in ('soft', 'ord', 'reg') for s in ('.json', '.val.npy', '.test.npy'))


def test_members_of_other_order_length_or_table_are_refused(tmp_path):
    splits = _splits()
    _noisy_members(splits, tmp_path)
    soft = np.full((25, 5), 0.2)
    reordered = {**splits, 'test': splits['test'].iloc[::-1]}
    save_member_scores(tmp_path, 'z_order', 'multiclass', {'val': np.full((30, 5), 0.2), 'test': soft}, reordered)
    with pytest.raises(ValueError, match=r'z_order\.json: its test images differ or are in another order'):
        load_model_scores(tmp_path)
    (tmp_path/'z_order.json').unlink()
    other = _splits(seed=5)  # same ids, other grades: another table
    save_member_scores(tmp_path, 'z_table', 'multiclass', {'val': np.full((30, 5), 0.2), 'test': soft}, other)
    with pytest.raises(ValueError, match=r"z_table\.json: member 'z_table' was made on other split tables"): load_model_scores(tmp_path)
    with pytest.raises(ValueError, match=r'made on other split tables'): load_model_scores(tmp_path, tables=other | {'test': splits['test']})
    (tmp_path/'z_table.json').unlink()
    # a manifest edited to claim fewer images than the tables
    man = json.loads((tmp_path/'soft.json').read_text())
    man['splits']['test']['image_ids'] = man['splits']['test']['image_ids'][:-1]
    (tmp_path/'soft.json').write_text(json.dumps(man))
    with pytest.raises(ValueError, match=r'soft\.test\.npy'): load_model_scores(tmp_path)


def test_bad_scores_are_refused_naming_the_file(tmp_path):
    splits = _splits()
    _noisy_members(splits, tmp_path)
    good = np.load(tmp_path/'soft.test.npy')
    for bad, msg in ((np.where(np.arange(5) == 2, np.nan, good), r'soft\.test\.npy\[0, 2\] is nan'),
                     (np.where(np.arange(5) == 1, np.inf, good), r'soft\.test\.npy\[0, 1\] is inf'),
                     (good * 0.8, r'soft\.test\.npy: row 0 sums to 0\.8000'),
                     (good[:, :4], r'soft\.test\.npy.*shape'),
                     (good[:-3], 'length mismatch')):
        np.save(tmp_path/'soft.test.npy', bad)
        with pytest.raises(ValueError, match=msg): load_model_scores(tmp_path)
    (tmp_path/'soft.test.npy').unlink()
    with pytest.raises(FileNotFoundError, match=r'soft\.json: its test scores'): load_model_scores(tmp_path)


def test_wrong_task_empty_folder_and_missing_split(tmp_path):
    splits = _splits()
    _noisy_members(splits, tmp_path)
    with pytest.raises(ValueError, match=r"reg\.json: member 'reg' is task 'regression'"):
        load_model_scores(tmp_path, tasks=('multiclass', 'ordinal'))
    with pytest.raises(ValueError, match='no saved member scores'): load_model_scores(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match='no such folder'): load_model_scores(tmp_path/'missing')
    with pytest.raises(ValueError, match="has no scores for split 'train'"): load_model_scores(tmp_path, splits=('train',))
    (tmp_path/'junk.json').write_text('{not json')
    with pytest.raises(ValueError, match=r'junk\.json: not a member manifest'): load_model_scores(tmp_path)
    with pytest.raises(ValueError, match="does not have"): save_member_scores(tmp_path, 'x', 'multiclass', {'dev': good_probs()}, splits)
    with pytest.raises(ValueError, match='letters, digits'): save_member_scores(tmp_path, '../x', 'multiclass', {}, splits)


def _empty(tmp_path):
    d = tmp_path/'empty'; d.mkdir(); return d


def good_probs(): return np.full((3, 5), 0.2)


def test_duplicate_member_names_across_folders(tmp_path):
    splits = _splits()
    _noisy_members(splits, tmp_path/'a'); _noisy_members(splits, tmp_path/'b')
    with pytest.raises(ValueError, match='member names must differ'): load_model_scores([tmp_path/'a', tmp_path/'b'])


# --- the paired bootstrap



# --- members by reference

def test_member_names_from_references_and_folders():
    assert member_name('@08/InceptionV3-s1-adam') == '08_InceptionV3-s1-adam'
    assert member_name('@12a/x y') == '12a_x_y'
    assert member_name('/tmp/models/exp5-0123456789ab/model.keras') == member_name('/tmp/models/exp5-0123456789ab') == 'exp5-0123456789ab'


def test_a_referenced_member_scores_the_same_rows_at_its_own_size(tmp_path):
    from types import SimpleNamespace
    from drbook.splits import load_graded, prepare_splits
    from drbook.scratch import build_scratch_cnn
    table = load_graded('')
    fractions = (0.7, 0.15, 0.15)
    mine, _ = prepare_splits(table, '', 64, fractions, seed=42)  # the chapter's own splits, at 64 px
    trained_on = table_fingerprint({k: mine[k] for k in ('train', 'val')})
    meta = {'recipe': None, 'image_size': 48, 'task': 'multiclass', 'config': {'tables': trained_on}}  # what is read of a Trained
    member = SimpleNamespace(name='m', folder=tmp_path, model=build_scratch_cnn('sample', 48), meta=meta)
    theirs = reference_splits(member, table, fractions, 42, mine, '@07/m')
    assert table_fingerprint(theirs) == table_fingerprint(mine)
    scores = score_member(member, theirs, batch_size=64)
    assert {k: check_member_scores(v, 'multiclass').shape for k, v in scores.items()} == {k: (len(mine[k]), 5) for k in ('val', 'test')}
    with pytest.raises(ValueError, match=r"@07/m: preprocessed its way \(no recipe, 48 px\) the splits hold other rows"):
        reference_splits(member, table, fractions, 7, mine, '@07/m')  # another seed: other rows
    elsewhere = SimpleNamespace(name='m', folder=tmp_path, model=member.model, meta={**meta, 'config': {'tables': 'f' * 64}})
    with pytest.warns(UserWarning, match='trained on other training/validation rows'):
        reference_splits(elsewhere, table, fractions, 42, mine, '@07/m')


def test_ensemble_records_equal_the_results_tables_values():
    "10's scalar records: qwk_gain_<slug> and test_accuracy_<slug> of every ensemble row, S3's three under their names."
    from drbook import metrics
    from drbook.ensemble import ensemble_records, record_slug
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 20)
    preds = {'cnn_a': np.where(rng.random(100) < 0.6, y, rng.integers(0, 5, 100)), 'cnn_b': rng.integers(0, 5, 100),
             'majority vote': np.where(rng.random(100) < 0.7, y, 0), 'average (accuracy w., rounded)': np.clip(y + rng.integers(-1, 2, 100), 0, 4),
             'average (recall w., rounded)': np.where(rng.random(100) < 0.5, y, 2), 'average grade + cut-points, TTA': y}
    results = {k: metrics.evaluate(y, np.eye(5)[p], 'multiclass', n_boot=50, seed=0) for k, p in preds.items()}
    comparison = metrics.compare_with(y, {k: r['y_pred'] for k, r in results.items()}, 'cnn_a', n_boot=50, seed=0)
    table = metrics.results_table(results).join(comparison[['diff']]).rename(columns={'diff': 'qwk_minus_best'})  # as 10 builds it
    table.insert(0, 'kind', ['member'] * 2 + ['ensemble'] * 4)
    records = ensemble_records(table)
    assert len(records) == 8 and not any('cnn' in k for k in records)
    for name in list(preds)[2:]:
        assert records[f'test_accuracy_{record_slug(name)}'] == pytest.approx(table.loc[name, 'accuracy'])
        assert records[f'qwk_gain_{record_slug(name)}'] == pytest.approx(comparison.loc[name, 'diff'])
        assert 0 <= records[f'test_accuracy_{record_slug(name)}'] <= 1
    assert {'test_accuracy_majority_vote', 'test_accuracy_average_accuracy_w_rounded', 'test_accuracy_average_recall_w_rounded',
            'test_accuracy_average_grade_cut_points_tta'} <= set(records)
    assert records['test_accuracy_majority_vote'] == pytest.approx(np.mean(preds['majority vote'] == y))
