"""Inference cost against input resolution, several models interleaved at each size (`--sweep-res`)."""
import gc
from dataclasses import replace
from typing import List, Sequence

from .measure import create_at_size
from .subjects import BenchSettings, check_settings, measure_subjects, prepare, Subject

SWEEP_MODELS = ('cvt_13', 'lg_tiny', 'vit_small_patch16_224', 'swin_tiny_patch4_window7_224')


def sweep_resolution(names: Sequence[str], resolutions: Sequence[int],
                     settings: BenchSettings = BenchSettings(batch_size=1, train=False, latency=False)) -> List[dict]:
    """Inference img/s and memory against resolution, models interleaved at each size.

    Adds `pixels_per_sec` (img/s x H x W) and `pixel_rate_vs_first` (that over the same at the first
    resolution: 1.0 means cost linear in pixels; a quadratic attention falls towards 0).
    """
    s = replace(settings, train=False, latency=False)
    for name in names:
        check_settings(name, s)
    rows, first = [], {}
    for res in resolutions:
        img_size = (res, res)
        subjects, failed = [], []
        for name in names:
            try:
                subjects.append(Subject(name, prepare(create_at_size(name, img_size), s, training=False), None))
            except Exception as e:  # a model that cannot be built at this size is reported, not fatal
                failed.append(dict(model=name, infer_img_size=[res, res], error=f'{type(e).__name__}: {e}'[:200]))
        measured = measure_subjects(subjects, s, img_size, probe=False)[0] if subjects else {}
        for name, row in measured.items():
            row = dict(model=name, **row)
            row['pixels_per_sec'] = row['infer_samples_per_sec'] * res * res
            first.setdefault(name, row['pixels_per_sec'])
            row['pixel_rate_vs_first'] = row['pixels_per_sec'] / first[name]
            rows.append(row)
        rows.extend(failed)
        del subjects
        gc.collect()
    return rows


def plot_sweep(rows: List[dict], path) -> str:
    """Three panels against resolution, one line per model: img/s, pixel rate relative to the first size
    (flat = cost linear in pixels, falling = worse than linear), and peak memory."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for name in dict.fromkeys(r['model'] for r in rows):
        ok = [r for r in rows if r['model'] == name and 'error' not in r]
        res = [r['infer_img_size'][0] for r in ok]
        axes[0].plot(res, [r['infer_samples_per_sec'] for r in ok], 'o-', label=name)
        axes[1].plot(res, [r['pixel_rate_vs_first'] for r in ok], 'o-', label=name)
        axes[2].plot(res, [r.get('infer_peak_mem_mb', float('nan')) for r in ok], 'o-', label=name)
    first = min((r['infer_img_size'][0] for r in rows if 'error' not in r), default=0)
    axes[0].set(title='inference throughput', xlabel='resolution (px)', ylabel='img/s', yscale='log')
    axes[1].set(title=f'pixels/s relative to {first} px (1 = linear cost)', xlabel='resolution (px)',
                ylabel='(img/s x pixels) / same at first size')
    axes[1].axhline(1.0, color='grey', lw=0.8, ls='--')
    axes[2].set(title='inference peak memory', xlabel='resolution (px)', ylabel='MiB', yscale='log')
    for ax in axes:
        ax.set_xscale('log')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
