"""The `cvtlab` command end to end."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import cvtlab
from cvtlab.cli import build_parser, main
from cvtlab.convert import cvtlab_to_official


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'cvtlab', *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_models_table_and_json(capsys):
    result = run_cli('models', 'cvt_13', 'cvt_w24')  # counting every model's GMACs takes ~20 s
    assert result.returncode == 0, result.stderr
    for text in ('cvt_13', 'cvt_w24', '20.00M', '19.98M', '4.57', '4.53', '60.92', 'ms_in22k_ft_in1k_384', '2 models'):
        assert text in result.stdout
    assert 'derived' not in result.stdout  # no marks without marked figures
    # LG: LG-T's figures as tabled by a later paper (marked with it), LG-S's derived (pointing at the design note)
    assert main(['models', 'lg_tiny', 'lg_small']) == 0
    out = capsys.readouterr().out
    for text in ('32.60M\u2020', '4.80\u2020', 'paper top-1 82.1\u2020', '2210.05958', '61.00M*', '9.47*',
                 'docs/lg_transformer.md'):
        assert text in out, text
    assert main(['models', '--json', 'cvt_21']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]['params'] == 31_622_696 and abs(rows[0]['gmacs']['224'] - 7.178) < 0.01


def test_convert_official_checkpoint(tmp_path):
    model = timm.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))
    torch.save(cvtlab_to_official(model.state_dict()), tmp_path / 'CvT-tiny.pth')
    result = run_cli('convert', tmp_path / 'CvT-tiny.pth', tmp_path / 'tiny')
    assert result.returncode == 0, result.stderr
    assert 'converted official checkpoint' in result.stdout and 'config.json + model.safetensors' in result.stdout
    config = json.loads((tmp_path / 'tiny' / 'config.json').read_text())
    assert config['architecture'] == 'cvt_13' and config['model_args']['depths'] == [1, 1, 2]
    assert config['num_classes'] == 1000 and 'num_classes' not in config['model_args']


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['models', '--bogus'])
    assert exit_.value.code == 2 and 'unrecognized arguments: --bogus' in capsys.readouterr().err
    result = run_cli('nonsense')  # through the installed entry point
    assert result.returncode == 2 and 'Traceback' not in result.stderr and 'invalid choice' in result.stderr


@pytest.mark.parametrize('command', [['eval', '--model', 'cvt_tiny'], ['predict', 'x.png', '--model', 'cvt_tiny'],
                                     ['export', 'cvt_tiny', 'x.onnx'], ['benchmark', 'cvt_tiny']])
def test_inference_commands_fuse_unless_told_not_to(command):
    parser = build_parser()
    assert parser.parse_args(command).fuse is True
    assert parser.parse_args([*command, '--no-fuse']).fuse is False


def test_predict_fused_and_unfused_agree(tmp_path, monkeypatch):
    from PIL import Image
    import cvtlab.deploy
    rng = torch.Generator().manual_seed(0)
    for i in range(2):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f'{i}.png')
    fused_models = []
    real_fuse = cvtlab.deploy.fuse_for_inference
    monkeypatch.setattr(cvtlab.deploy, 'fuse_for_inference', lambda m, *a, **k: fused_models.append(
        real_fuse(m, *a, **k)) or fused_models[-1])
    torch.manual_seed(0)
    fused, errors = cvtlab.predict([str(tmp_path)], model='cvt_tiny', top_k=3)
    assert len(fused_models) == 1  # the transform is the default
    torch.manual_seed(0)
    plain, _ = cvtlab.predict([str(tmp_path)], model='cvt_tiny', top_k=3, fuse=False)
    assert len(fused_models) == 1
    assert not errors and [r['image'] for r in fused] == [r['image'] for r in plain]
    for f, p in zip(fused, plain):
        assert [t['prob'] for t in f['top']] == pytest.approx([t['prob'] for t in p['top']], abs=1e-5)


def _internal_imports(path: Path, module: str, is_package: bool) -> set:
    """cvtlab modules that `module` (the file `path`) imports anywhere in its body, relative imports resolved."""
    base = module.split('.') if is_package else module.split('.')[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = base[:len(base) - node.level + 1] if node.level else []
            parent = '.'.join(prefix + ([node.module] if node.module else []))
            found.update(f'{parent}.{a.name}' for a in node.names)  # a submodule, or a name in `parent`
    return {name for name in found if name.split('.')[0] == 'cvtlab'}


def test_no_import_cycles_and_only_the_cli_imports_it():
    """cvtlab's import graph (function-level imports included) has no cycle, and no library module
    imports `cvtlab.cli` (it sits on top of everything)."""
    root = Path(cvtlab.__file__).parent
    files = {}
    for path in root.rglob('*.py'):
        parts = ('cvtlab',) + path.relative_to(root).with_suffix('').parts
        files['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = (path, parts[-1] == '__init__')

    def module_of(name):  # the longest prefix that is a module (`cvtlab.errors.ConfigError` -> `cvtlab.errors`)
        while name not in files:
            name = name.rpartition('.')[0]
        return name
    graph = {m: {module_of(n) for n in _internal_imports(p, m, pkg)} - {m} for m, (p, pkg) in files.items()}
    assert [m for m, deps in graph.items() if 'cvtlab.cli' in deps] == ['cvtlab.__main__']
    state = {}  # depth-first search: 1 on the current path, 2 finished

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, 'import cycle: ' + ' -> '.join(path[path.index(d):] + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_predict_on_onnxruntime_and_auto_say_which_and_agree(tmp_path, capsys):
    from PIL import Image
    rng = torch.Generator().manual_seed(1)
    for i in range(3):
        pixels = torch.randint(0, 256, (36, 44, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f'{i}.png')
    torch.manual_seed(0)
    ref, _ = cvtlab.predict([str(tmp_path)], model='cvt_tiny', top_k=3)
    for backend in ('onnxruntime', 'auto'):
        torch.manual_seed(0)  # the same random weights
        got, errors = cvtlab.predict([str(tmp_path)], model='cvt_tiny', top_k=3, backend=backend)
        assert not errors and all(r['backend'].split(' ')[0] in ('torch', 'onnxruntime') for r in got)
        assert backend == 'auto' or got[0]['backend'] == 'onnxruntime'
        assert 'auto:' in got[0]['backend'] or backend != 'auto'  # auto says why
        for g, r in zip(got, ref):
            assert [t['index'] for t in g['top']] == [t['index'] for t in r['top']]
            assert [t['prob'] for t in g['top']] == pytest.approx([t['prob'] for t in r['top']], abs=1e-5)
    assert main(['predict', str(tmp_path), '--model', 'cvt_tiny', '--backend', 'onnxruntime']) == 0
    assert '(onnxruntime)' in capsys.readouterr().err
    assert main(['predict', str(tmp_path), '--model', 'cvt_tiny', '--backend', 'onnxruntime', '--dtype', 'bf16']) == 2
    assert 'runs fp32' in capsys.readouterr().err
