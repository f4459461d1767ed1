"""The `cvtlab` command: thin sub-commands over the library API.

Every user error (bad file, flag or shape) ends as one line on stderr and exit code 2, never a traceback.
"""
import argparse
import json
import sys
from typing import List, Optional

from rich.console import Console
from rich.table import Table

from .errors import CvtlabError

# wide enough for the zoo table when output is piped (rich would fall back to 80 columns)
console = Console(width=None if sys.stdout.isatty() else 160)


def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def cmd_models(args) -> int:
    from .registry import describe_models
    rows = describe_models(args.models or None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title='cvtlab model zoo (GMACs = multiply-accumulates incl. attention; paper values beside ours)')
    for col, justify in [('model', 'left'), ('params', 'right'), ('paper', 'right'), ('GMACs@224', 'right'),
                         ('paper', 'right'), ('GMACs@384', 'right'), ('paper', 'right'),
                         ('input', 'center'), ('weights', 'left')]:
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(
            r['model'], f"{r['params'] / 1e6:.2f}M", _fmt(r['paper_params_m'], '.2f') + ('M' if r['paper_params_m'] else ''),
            f"{r['gmacs'][224]:.2f}", _fmt(r['paper_gmacs'].get(224), '.2f'),
            f"{r['gmacs'][384]:.2f}", _fmt(r['paper_gmacs'].get(384), '.1f'),
            'x'.join(map(str, r['input_size'][1:])), ', '.join(r['weights']) or '-')
    console.print(table)
    print(f'* {len(rows)} models')
    return 0


def cmd_convert(args) -> int:
    from .registry import convert_checkpoint
    s = convert_checkpoint(args.src, args.dst, args.model)
    print(f"* converted {s['layout']} checkpoint ({s['keys']} keys mapped, 0 dropped) -> {s['weights']} + "
          f"{s['config']}: {s['architecture']}, {s['params']:,} params")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='cvtlab', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('models', help='the model zoo: params and GMACs beside the paper, weight tags')
    p.add_argument('models', nargs='*', help='architectures to show (default: all of cvtlab)')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=cmd_models)

    p = sub.add_parser('convert', help='official / HF transformers / cvtlab checkpoint -> cvtlab safetensors + JSON')
    p.add_argument('src', help='checkpoint file (.pth, .bin, .safetensors) or HF save_pretrained directory')
    p.add_argument('dst', help='output .safetensors path (a .json config is written beside it)')
    p.add_argument('--model', help='architecture to build (default: read off the checkpoint)')
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
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
