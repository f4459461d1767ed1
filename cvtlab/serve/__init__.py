"""`cvtlab serve`: a model over HTTP (FastAPI + uvicorn), with dynamic batching and a web page.

    from cvtlab.serve import load_for_serving, create_app
    app = create_app(*load_for_serving('runs/mine'))        # any ASGI server can run it
"""
import asyncio
import contextlib
import signal
import socket
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch.nn as nn

from ..errors import ConfigError
from .app import create_app
from .batcher import DynamicBatcher, QueueFull
from .inputs import BadInput, Limits

# after a stop signal: how long accepted connections get for their requests to be read before idle ones close
SHUTDOWN_READ_S = 0.2

__all__ = ['create_app', 'load_for_serving', 'serve', 'DynamicBatcher', 'QueueFull', 'BadInput', 'Limits']


def load_for_serving(source: str, backend: str = 'torch', dtype: str = 'fp32', batch_size: int = 16,
                     pretrained: bool = True):
    """(Classifier, the model as built for heat maps or None) for anything cvtlab loads: a run directory, a
    model folder, a weights file, `hf-hub:ID`, a model name (with its weights), or an exported `.onnx` file
    (fp32 or int8; it runs as exported, without heat maps)."""
    from ..classifier import Classifier
    if str(source).endswith('.onnx'):  # runs as exported: no model to draw heat maps from
        return Classifier.from_pretrained(source, dtype=dtype, batch_size=batch_size), None
    from ..registry import model_from_source
    from .overlay import explainable
    model = model_from_source(source, pretrained).eval()
    if not explainable(model):  # no heat maps: one copy of the model is enough
        return Classifier(model, backend=backend, dtype=dtype, batch_size=batch_size, inplace=True), None
    return Classifier(model, backend=backend, dtype=dtype, batch_size=batch_size), model  # fuses a copy


def serve(source: str, host: str = '127.0.0.1', port: int = 8000, max_batch: int = 16, max_wait_ms: float = 10,
          max_queue: int = 256, backend: str = 'torch', dtype: str = 'fp32', limits: Limits = Limits(),
          pretrained: bool = True, log_level: str = 'info') -> int:
    """Serve `source` until SIGTERM / Ctrl-C; the requests in flight then finish before it exits (0)."""
    import uvicorn
    sock = _listening_socket(host, port)  # first: a taken port fails before the model is loaded
    classifier, explain_model = load_for_serving(source, backend, dtype, max_batch, pretrained)
    app = create_app(classifier, explain_model=explain_model, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_queue=max_queue, limits=limits)
    port = sock.getsockname()[1]  # the one the system chose, for --port 0
    print(f'* serving {classifier.model_name} ({classifier.backend}, {classifier.dtype}) at http://{host}:{port}/ '
          f'- batches of up to {max_batch} images, {max_wait_ms:g} ms wait', flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30)
    _graceful_server(config).run(sockets=[sock])
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, or a one-line ConfigError (taken port, foreign address)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f'port must be in 0..65535, not {port}')
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ConfigError(f'cannot serve on {host}:{port}: {e.strerror or e}') from None
    sock.set_inheritable(True)
    return sock


def _graceful_server(config):
    """A uvicorn server for `config` whose stop on a signal is a clean exit (defined here: uvicorn is imported
    only when serving)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGTERM / SIGINT end with exit status 0 once the graceful shutdown is
        done (the requests in flight answered): uvicorn re-raises the signal afterwards, which makes a clean
        stop look like a crash to supervisors and tests."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets=None):
            # Stop accepting, then give the event loop a moment to read what accepted connections already
            # sent: uvicorn closes a connection whose request it has not started reading as idle, which
            # dropped a request sent just before the signal on a loaded machine (seen in the suite under xdist)
            for server in self.servers:
                server.close()
            await asyncio.sleep(SHUTDOWN_READ_S)
            await super().shutdown(sockets=sockets)
    return Server(config)
