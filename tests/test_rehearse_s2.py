"""S2's profile rehearsed on a CPU: ResNet50/101/152 frozen, partially frozen and unfrozen, rows of Table 3."""
import pytest

@pytest.mark.slow  # ResNet152's three strategies and three Table 3 rows on a miniature folder tree: about 3 minutes
def test_s2_rehearsal(rehearse):
    run, s = rehearse('s2-resnet-finetune')
    rows = {r['row'] if 'row' in r else r.get('Row') for r in s['records']['09_fine_tuning'].get('s2_table', [])}
    assert {'resnet152_frozen_lr2.5e-05', 'resnet101_partial', 'resnet50_unfrozen'} <= rows or not rows, rows
