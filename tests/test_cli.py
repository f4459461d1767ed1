"""The `cvtlab` command end to end."""
import json
import subprocess
import sys

import pytest
import timm
import torch

from cvtlab.cli import main
from cvtlab.convert import cvtlab_to_official


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'cvtlab', *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_models_table_and_json(capsys):
    result = run_cli('models', 'cvt_13', 'cvt_w24')  # counting every model's GMACs takes ~20 s
    assert result.returncode == 0, result.stderr
    for text in ('cvt_13', 'cvt_w24', '20.00M', '19.98M', '4.57', '4.53', '60.92', 'ms_in22k_ft_in1k_384', '2 models'):
        assert text in result.stdout
    assert main(['models', '--json', 'cvt_21']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]['params'] == 31_622_696 and abs(rows[0]['gmacs']['224'] - 7.178) < 0.01


def test_convert_official_checkpoint(tmp_path):
    model = timm.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))
    torch.save(cvtlab_to_official(model.state_dict()), tmp_path / 'CvT-tiny.pth')
    result = run_cli('convert', tmp_path / 'CvT-tiny.pth', tmp_path / 'tiny.safetensors')
    assert result.returncode == 0, result.stderr
    assert 'converted official checkpoint' in result.stdout
    config = json.loads((tmp_path / 'tiny.json').read_text())
    assert config['architecture'] == 'cvt_13' and config['model_args']['depths'] == [1, 1, 2]


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['models', '--bogus'])
    assert exit_.value.code == 2 and 'unrecognized arguments: --bogus' in capsys.readouterr().err
    result = run_cli('nonsense')  # through the installed entry point
    assert result.returncode == 2 and 'Traceback' not in result.stderr and 'invalid choice' in result.stderr
