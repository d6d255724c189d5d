"""S2's profile rehearsed on a CPU: ResNet50/101/152 frozen, partially frozen and unfrozen, rows of Table 3."""
import pytest
from drbook.finetune import S2_TABLE3

@pytest.mark.slow  # ResNet152's three strategies and three Table 3 rows on a miniature folder tree: about 4 minutes
def test_s2_rehearsal(rehearse):
    run, s = rehearse('s2-resnet-finetune')
    nine = s['records']['09_fine_tuning']
    rows = [r['S2 Table 3 row'] for r in nine['s2_table']]
    assert rows == ['resnet152_frozen_lr2.5e-05', 'resnet101_partial', 'resnet50_unfrozen']
    assert {S2_TABLE3[r]['backbone'] for r in rows} == {'ResNet50', 'ResNet101', 'ResNet152'}  # every backbone and strategy kind
    assert [r['ResNet152: stage 2'] for r in nine['strategies']] == ['frozen', '455', 'unfrozen']
    assert nine['n_images'] == 60  # the miniature: 12 eyes per grade in <grade>/ folders
