"""S4's profile rehearsed on a CPU: ResNet50 in two stages with five sigmoids, on a miniature in IDRiD's segmentation layout."""
import pytest

@pytest.mark.slow  # ResNet50 in S4's two stages on a miniature IDRiD: about 1.5 minutes
def test_s4_rehearsal(rehearse):
    run, s = rehearse('s4-multilabel')
    assert 0 <= s['records']['13_lesions']['auc_healthy'] <= 1  # the miniature has healthy eyes: S4's fifth label is measured
