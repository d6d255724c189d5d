"""S1's profile rehearsed on a CPU: CLAHE, four backbones with S1's head (Table 1), activations and Grad-CAM of its InceptionV3."""
import pytest
from drbook import registry

@pytest.mark.slow  # four backbones, Grad-CAM and activations on a miniature APTOS: about 3 minutes
def test_s1_rehearsal(rehearse):
    run, s = rehearse('s1-aptos2019')
    assert [r['Model'] for r in s['records']['08_transfer_learning']['s1_table']] == ['VGG16', 'ResNet50', 'InceptionV3', 'InceptionResNetV2']
    twelve = next(n for n in s['notebooks'] if n['notebook'] == '12_gradcam')  # Grad-CAM of the InceptionV3 08 trained, at mixed10
    assert twelve['parameters']['model'] == str(registry.resolve_reference('@08/InceptionV3-s1-adam', run=run))
    assert twelve['parameters']['layer'] == 'mixed10'
