"""The `cvtlab` command: thin sub-commands over the library API.

Every user error (bad file, flag or shape) ends as one line on stderr and exit code 2, never a traceback.
"""
import argparse
import json
import sys
from typing import List, Optional

from rich.table import Table

from .console import console
from .errors import ConfigError, CvtlabError


def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def cmd_models(args) -> int:
    from .registry import describe_models
    rows = describe_models(args.models or None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # marks for paper figures not read from the model's own paper: derived by cvtlab, or tabled by a later paper
    later = sorted({r['paper_source'] for r in rows if r['paper_source'] not in (None, 'paper', 'derived')})
    marks = {'derived': '*', **{src: '\u2020' * (i + 1) for i, src in enumerate(later)}}
    notes = ['* derived for the reconstruction (docs/lg_transformer.md), not read from a paper'] * any(
        r['paper_source'] == 'derived' for r in rows)
    notes += [f"{marks[src]} the paper's model as tabled by {src}" for src in later]
    table = Table(title='cvtlab model zoo (GMACs = multiply-accumulates incl. attention; paper values beside ours)',
                  caption='; '.join(notes) or None)
    for col, justify in [('model', 'left'), ('params', 'right'), ('paper', 'right'), ('GMACs@224', 'right'),
                         ('paper', 'right'), ('GMACs@384', 'right'), ('paper', 'right'),
                         ('input', 'center'), ('weights', 'left')]:
        table.add_column(col, justify=justify)
    for r in rows:
        mark = marks.get(r['paper_source'], '')
        weights = ', '.join(r['weights']) or '-'
        if r['paper_top1'] is not None:
            weights += f" (paper top-1 {r['paper_top1']}{mark})"
        table.add_row(
            r['model'], f"{r['params'] / 1e6:.2f}M",
            _fmt(r['paper_params_m'], '.2f') + ('M' + mark if r['paper_params_m'] else ''),
            f"{r['gmacs'][224]:.2f}", _fmt(r['paper_gmacs'].get(224), '.2f') + (mark if r['paper_gmacs'] else ''),
            f"{r['gmacs'][384]:.2f}", _fmt(r['paper_gmacs'].get(384), '.1f'),
            'x'.join(map(str, r['input_size'][1:])), weights)
    console.print(table)
    print(f'* {len(rows)} models')
    return 0


def cmd_convert(args) -> int:
    from .registry import convert_checkpoint
    s = convert_checkpoint(args.src, args.dst, args.model)
    print(f"* converted {s['layout']} checkpoint ({s['keys']} keys mapped, 0 dropped) -> {s['folder']} "
          f"(config.json + model.safetensors): {s['architecture']}, {s['params']:,} params")
    return 0


def cmd_train(args) -> int:
    from .config import config_from_args
    from .trainer import train
    dtype = getattr(args, 'train_dtype', None)  # --dtype as in predict / eval / benchmark: the autocast dtype
    if dtype is not None:
        amp = 'bf16' if dtype == 'bf16' else 'none'
        if getattr(args, 'amp', amp) != amp:
            raise ConfigError(f'--dtype {dtype} and --amp {args.amp} disagree: give one of them')
        args.amp = amp
    summary = train(config_from_args(args))
    if summary.get('interrupted'):
        print(f"* interrupted at epoch {summary['epoch'] + 1}; resume with: cvtlab train --output "
              f"{summary['output']} --resume")
        return 0
    print(f"* best Acc@1 {summary['best_top1']:.3f} Acc@5 {summary['best_top5']:.3f} (epoch {summary['best_epoch']}), "
          f"final Acc@1 {summary['final_top1']:.3f}, {summary['images_per_sec']:.0f} img/s, "
          f"{summary['wall_time_s']:.0f} s -> {summary['output']}")
    return 0


def cmd_recipes(args) -> int:
    from .config import recipe_names, recipe_text
    if args.name:
        print(recipe_text(args.name), end='')
    else:
        for name in recipe_names():
            first = recipe_text(name).splitlines()[0].lstrip('# ')
            print(f'{name:12s} {first.split(":", 1)[-1].strip()}')
    return 0


def cmd_eval(args) -> int:
    from .inference import evaluate
    r = evaluate(args.checkpoint, args.data, model=args.model, pretrained=args.pretrained,
                 batch_size=args.batch_size, data_root=args.data_root, download=args.download, output=args.output,
                 fuse=args.fuse, dtype=args.dtype, backend=args.backend, hub_download=args.hub_download)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != 'confusion'}, indent=2))
    else:
        table = Table(title=f"per-class accuracy on {r['count']} images")
        table.add_column('class')
        table.add_column('top-1 %', justify='right')
        for name, acc in zip(r['classes'], r['per_class']):
            table.add_row(name, f'{acc:.2f}')
        console.print(table)
        if r.get('files'):
            print('wrote ' + ', '.join(r['files']))
    backend = f" ({r['backend']})" if args.backend != 'torch' else ''
    print(f"* Acc@1 {r['top1']:.3f} Acc@5 {r['top5']:.3f} loss {r['loss']:.3f}{backend}",
          file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_predict(args) -> int:
    from .inference import predict
    results, errors = predict(args.images, checkpoint=args.checkpoint, model=args.model,
                              pretrained=args.pretrained, top_k=args.top_k, batch_size=args.batch_size,
                              fuse=args.fuse, dtype=args.dtype, backend=args.backend, tta=args.tta, out=args.out)
    for e in errors:
        print(f'cvtlab: error: {e}', file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        table = Table(title=f'top-{args.top_k} predictions')
        for col in ('image', 'label', 'prob'):
            table.add_column(col, justify='right' if col == 'prob' else 'left')
        for r in results:
            for rank, t in enumerate(r['top']):
                table.add_row(r['image'] if rank == 0 else '', t['label'], f"{t['prob']:.3f}")
        console.print(table)
    backend = f" ({results[0]['backend']})" if results and args.backend != 'torch' else ''
    written = f' -> {args.out}' if args.out else ''
    print(f'* {len(results)} images predicted, {len(errors)} unreadable{backend}{written}', file=sys.stderr)
    return 2 if errors else 0


def cmd_push(args) -> int:
    from .hub import push_to_hub
    r = push_to_hub(args.source, args.repo_id, private=args.private, dry_run=args.dry_run,
                    commit_message=args.message)
    files = ', '.join(r['files'])
    visibility = 'private' if r['private'] else 'default visibility'
    if r['uploaded']:
        print(f"* pushed {args.source} -> {r['url']} ({files}; revision {r['commit']})")
    else:
        print(f"* dry run: {r['folder']} holds what would be uploaded to {r['repo_id']} ({visibility}): {files}")
    return 0


def _run_data(source: str):
    """The data a run was trained on (the config.yaml of a run directory, or of the run holding a best/ or
    last/ folder), else None."""
    from pathlib import Path
    import yaml
    for config in (Path(source) / 'config.yaml', Path(source).parent / 'config.yaml'):
        if config.is_file():
            return yaml.safe_load(config.read_text()).get('data')
    return None


def cmd_export(args) -> int:
    from .export import calibration_batches, export_onnx
    from .registry import model_from_source
    model = model_from_source(args.source, args.pretrained)
    calibration = None
    if args.int8:
        from .deploy.int8 import int8_supported
        data = args.calibration_data or _run_data(args.source)
        if data is None:
            raise ConfigError('--int8 needs --calibration-data DATA (digits, cifar10, or a folder of images like '
                              'those the model will see): its activation ranges are measured on them')
        calibration = calibration_batches(model, data, args.calibration_images)
        reason = int8_supported()
        if reason:
            print(f'* note: {reason}')
    elif args.calibration_data:
        raise ConfigError('--calibration-data only applies with --int8')
    r = export_onnx(model, args.out, fuse=args.fuse, opset=args.opset, int8=args.int8, calibration=calibration)
    diffs = ', '.join(f'{k}: {v:.2e}' for k, v in r['max_abs_diff'].items())
    unfused = f" (unfused model: {max(r['max_abs_diff_unfused'].values()):.2e})" if r['fused'] else ''
    print(f"* exported {args.source} -> {r['onnx']} ({r['size_mb']:.1f} MiB{', BN folded' if r['fused'] else ''}) "
          f"+ {r['preprocess']}; onnxruntime vs PyTorch max |diff| {diffs}{unfused}")
    if args.int8:
        print(f"* int8 (from the checked fp32 graph, {r['fp32_size_mb']:.1f} MiB): top-1 agrees with fp32 on "
              f"{100 * r['int8_top1_agreement']:.1f}% of {r['calibration_images']} calibration images, "
              f"max |logit diff| {r['int8_max_abs_diff']:.3f}; {r['attention_matmuls_in_fp32']} attention "
              f"matmuls kept in fp32")
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve import Limits, serve
    except ImportError as e:
        raise ConfigError(f"cvtlab serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'cvtlab[serve]'") \
            from None
    if args.max_queue < max(args.max_batch, args.max_images):
        raise ConfigError('--max-queue must be at least --max-batch and --max-images')
    return serve(args.source, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                 max_queue=args.max_queue, backend=args.backend, dtype=args.dtype,
                 limits=Limits(max_bytes=args.max_bytes, max_images=args.max_images),
                 pretrained=not args.random_weights)


def cmd_explain(args) -> int:
    from .explain import explain
    r = explain(args.image, checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained,
                output=args.output)
    print(f"* {args.image}: predicted {r['predicted']} ({r['prob']:.3f}); {len(r['maps'])} "
          f"{'attention' if r['kind'] == 'cvt' else 'path-contribution'} maps -> {r['png']}")
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f'must be in 0..65535, not {value}')
    return value


def _milliseconds(text: str) -> float:
    import math
    value = float(text)
    if not (math.isfinite(value) and 0 <= value <= 60_000):
        raise argparse.ArgumentTypeError(f'must be a number of milliseconds in 0..60000, not {text}')
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, not {value}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='cvtlab', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('models', help='the model zoo: params and GMACs beside the paper, weight tags')
    p.add_argument('models', nargs='*', help='architectures to show (default: all of cvtlab)')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=cmd_models)

    p = sub.add_parser('convert', help='official / HF transformers / cvtlab checkpoint -> a model folder that '
                                       'timm and HF transformers read too')
    p.add_argument('src', help='checkpoint file (.pth, .bin, .safetensors), model folder, run directory or hf-hub:ID')
    p.add_argument('dst', help='output folder (config.json + model.safetensors)')
    p.add_argument('--model', help='architecture to build (default: read off the checkpoint)')
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser('push', help='upload a run or model folder to the HF Hub, with a model card')
    p.add_argument('source', help='run directory (its best model), model folder, weights file or hf-hub:ID')
    p.add_argument('repo_id', help='Hub repository ORG/NAME (created if absent)')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--dry-run', metavar='OUT_DIR', help='write what would be uploaded to OUT_DIR, upload nothing')
    p.add_argument('--message', default='Upload model with cvtlab push', help='commit message')
    p.set_defaults(func=cmd_push)

    from .benchmark.cli import add_benchmark_parser
    add_benchmark_parser(sub)

    p = sub.add_parser('export', help='ONNX with dynamic batch/height/width, checked in onnxruntime')
    p.add_argument('source', help='model name, checkpoint file or run directory')
    p.add_argument('out', help='output .onnx file (preprocessing JSON written beside it)')
    p.add_argument('--format', choices=['onnx'], default='onnx', help='export format')
    p.add_argument('--fuse', action=argparse.BooleanOptionalAction, default=True,
                   help='export cvtlab.fuse_for_inference(model) (default; --no-fuse: the model as built)')
    p.add_argument('--pretrained', action='store_true', help='with a model name: load its weights')
    p.add_argument('--opset', type=_positive_int, default=17, help='ONNX opset')
    p.add_argument('--int8', action='store_true',
                   help='write an int8 model (onnxruntime static quantization; fastest on CPUs with VNNI)')
    p.add_argument('--calibration-data', help="with --int8: digits, cifar10 or a folder whose training images set the "
                                              "activation ranges (default: a run directory's own data)")
    p.add_argument('--calibration-images', type=_positive_int, default=256,
                   help='with --int8: how many images to calibrate on (default %(default)s)')
    p.set_defaults(func=cmd_export)

    p = sub.add_parser('serve', help='serve a model over HTTP: JSON API, dynamic batching, a web page')
    p.add_argument('source', help='run directory, model folder, weights file, hf-hub:ID, model name, or .onnx file')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default %(default)s: this machine only)')
    p.add_argument('--port', type=_port, default=8000, help='port (default %(default)s; 0: any free one)')
    p.add_argument('--max-batch', type=_positive_int, default=16, help='images per forward pass (default %(default)s)')
    p.add_argument('--max-wait-ms', type=_milliseconds, default=10,
                   help='how long a batch waits for more images after its first (default %(default)s)')
    p.add_argument('--max-queue', type=_positive_int, default=256,
                   help='images waiting at most; beyond, requests get 503 (default %(default)s)')
    p.add_argument('--max-bytes', type=_positive_int, default=10 * 2 ** 20,
                   help='largest request body in bytes (default 10 MB)')
    p.add_argument('--max-images', type=_positive_int, default=16, help='images per request (default %(default)s)')
    p.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime', 'auto'],
                   help="torch (default), onnxruntime (cvtlab's ONNX export), or auto (whichever measures faster)")
    p.add_argument('--dtype', choices=['fp32', 'bf16'], default='fp32', help='fp32, or bf16 on CPUs with bf16')
    p.add_argument('--random-weights', action='store_true', help='with a model name: random weights (for trying)')
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser('explain', help='attention maps (CvT) or path contributions (LG) as PNG overlays')
    p.add_argument('image', help='an image file')
    p.add_argument('--checkpoint', help='weights file or run directory')
    p.add_argument('--model', help='a cvtlab model name instead of a checkpoint')
    p.add_argument('--pretrained', action='store_true', help="with --model: load the model's weights")
    p.add_argument('--output', default='.', help='folder for the PNG')
    p.set_defaults(func=cmd_explain)

    from .config import add_config_flags
    p = sub.add_parser('train', help='train or fine-tune (default: cvt_tiny_stem on the embedded digits data)')
    p.add_argument('--recipe', help='named recipe (see `cvtlab recipes`) or a YAML file; default small-data')
    add_config_flags(p)
    p.add_argument('--dtype', choices=['fp32', 'bf16'], dest='train_dtype',
                   help='bf16: train in bf16 autocast over fp32 master weights (the same as --amp bf16)')
    p.set_defaults(func=cmd_train)

    p = sub.add_parser('recipes', help='list the training recipes, or print one')
    p.add_argument('name', nargs='?', help='recipe to print')
    p.set_defaults(func=cmd_recipes)

    for name, help_text in (('eval', 'top-1/top-5, per-class accuracy and a confusion matrix PNG'),
                            ('predict', 'top-k labels for image files, folders or globs')):
        p = sub.add_parser(name, help=help_text)
        if name == 'predict':
            p.add_argument('images', nargs='+', help='image files, folders or globs')
            p.add_argument('--top-k', type=_positive_int, default=5, help='labels per image')
            p.add_argument('--batch-size', type=_positive_int, default=32, help='images per forward pass')
            p.add_argument('--tta', choices=['flip'], help='test-time augmentation: average with the mirror image')
            p.add_argument('--out', help='also write the predictions (errors included) to FILE.csv or FILE.json')
            p.add_argument('--json', action='store_true', help='print JSON')
        p.add_argument('--checkpoint', help='run directory (its best model), model folder, weights file or hf-hub:ID')
        p.add_argument('--model', help='a timm / cvtlab model name instead of a checkpoint')
        p.add_argument('--pretrained', action='store_true', help="with --model: load the model's weights")
        p.add_argument('--fuse', action=argparse.BooleanOptionalAction, default=True,
                       help='run cvtlab.fuse_for_inference(model) (default; --no-fuse: the model as built)')
        p.add_argument('--dtype', choices=['fp32', 'bf16'], default='fp32',
                       help='bf16: weights and activations in bf16, LayerNorm in fp32 (CPUs with avx512_bf16 / AMX)')
        p.add_argument('--backend', choices=['torch', 'onnxruntime', 'auto'], default='torch',
                       help="torch (default), onnxruntime (cvtlab's own ONNX export), or auto: whichever a short "
                            "probe measures faster here (says which)")
        if name == 'eval':
            p.add_argument('--data', default='digits', help="'digits', 'cifar10', 'cifar100' or an image folder")
            p.add_argument('--data-root', default='~/.cache/cvtlab/data', help='where cifar is stored')
            p.add_argument('--download', action=argparse.BooleanOptionalAction, default=True)
            p.add_argument('--hub-download', action='store_true',
                           help='hfds:NAME may download from the HF Hub (default: the HF cache only)')
            p.add_argument('--batch-size', type=_positive_int, default=64)
            p.add_argument('--output', help='folder for confusion.png and eval.json (default: beside the checkpoint)')
            p.add_argument('--json', action='store_true', help='print JSON instead of a table')
        p.set_defaults(func=cmd_eval if name == 'eval' else cmd_predict)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, 'command', None) == 'eval' and args.output is None and args.checkpoint:
        from pathlib import Path
        ckpt = Path(args.checkpoint)
        if ckpt.exists():  # beside a local checkpoint; an hf-hub: id writes files only with --output
            args.output = str(ckpt if ckpt.is_dir() else ckpt.parent)
    try:
        return args.func(args)
    except CvtlabError as e:
        print(f'cvtlab: error: {e}', file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # unreadable paths, impossible shapes from user flags
        print(f'cvtlab: error: {type(e).__name__}: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('cvtlab: interrupted', file=sys.stderr)
        return 130
