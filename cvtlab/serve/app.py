"""The HTTP application: a FastAPI app over a `cvtlab.Classifier`, its requests batched dynamically.

    POST /predict   one image (raw body) or several (multipart file fields) -> top-k labels as JSON
    POST /explain   one image -> PNG heat map (CvT: attention rollout; LG: path contributions)
    POST /page      the web page's form without JavaScript -> an HTML result page
    GET  /          the web page;  GET /health;  GET /info (model, classes, preprocessing, backend, ...)

Refused input answers 4xx JSON `{"error": reason}` and the server goes on; a full queue answers 503.
"""
import contextlib
import dataclasses
import logging
from typing import List, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError, DataError
from .batcher import DynamicBatcher, QueueFull
from .inputs import BadInput, Limits, images_from_request
from .overlay import explainable, overlay_png
from .page import index_page, result_page

__all__ = ['create_app']
_logger = logging.getLogger('cvtlab.serve')


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def create_app(classifier, *, explain_model: Optional[torch.nn.Module] = None, max_batch: int = 16,
               max_wait_ms: float = 10, max_queue: int = 256, limits: Limits = Limits()) -> FastAPI:
    """The app serving `classifier` (a `cvtlab.Classifier`). `explain_model`: the same model as built (not
    fused), for `/explain` and the page's heat map; None turns them off."""
    import cvtlab
    if limits.max_images > max_queue:  # such a request could never be accepted: a 503 forever
        raise ConfigError(f'max_images ({limits.max_images}) must not exceed max_queue ({max_queue})')

    def run_batch(images: List[torch.Tensor]) -> List[torch.Tensor]:  # on the inference thread
        return list(classifier.probabilities(torch.stack(images)))  # each: num_classes probabilities

    batcher = DynamicBatcher(run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    explain = explain_model is not None and explainable(explain_model)
    info = dict(model=classifier.model_name, num_classes=classifier.num_classes, classes=classifier.label_names,
                preprocessing={k: _jsonable(v) for k, v in classifier.data_config.items()},
                backend=classifier.backend, dtype=classifier.dtype, version=cvtlab.__version__,
                max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_bytes=limits.max_bytes,
                max_images=limits.max_images, max_pixels=limits.max_pixels,
                max_request_pixels=limits.max_request_pixels, explain=explain)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()  # after uvicorn has let the requests in flight finish

    app = FastAPI(title=f'cvtlab: {classifier.model_name}', version=cvtlab.__version__, lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, e: BadInput):
        return JSONResponse({'error': e.reason}, status_code=e.status)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        return JSONResponse({'error': f'busy: {e}; retry shortly'}, status_code=503, headers={'Retry-After': '1'})

    @app.exception_handler(DataError)
    async def unusable(request: Request, e: DataError):  # decoded, yet the model's preprocessing refused it
        return JSONResponse({'error': str(e)}, status_code=422)

    @app.exception_handler(Exception)
    async def failure(request: Request, e: Exception):  # a bug or a failed batch: still JSON, and logged
        _logger.exception('request failed')
        return JSONResponse({'error': f'internal error: {type(e).__name__}'}, status_code=500)

    def top_k_of(request: Request) -> int:
        text = request.query_params.get('top_k', '5')
        if not (text.isascii() and text.isdigit() and len(text) <= 6) or int(text) < 1:
            raise BadInput(422, f'top_k must be a positive integer, not {text[:20]!r}')
        return min(int(text), classifier.num_classes)

    async def classify(request: Request):
        """(names, images as model input, top-k per image) of the request's images."""
        k = top_k_of(request)
        batcher.check_room(1)  # shed load before reading and decoding the body
        named = await images_from_request(request, limits)
        inputs = await run_in_threadpool(lambda: [classifier.preprocess(image) for _, image in named])
        probs = await batcher.submit(inputs)
        tops = []
        for p in probs:
            values, indices = p.topk(k)
            tops.append([dict(label=classifier.label(int(i)), index=int(i), prob=float(v))
                         for v, i in zip(values, indices)])
        return [name for name, _ in named], inputs, tops

    @app.post('/predict')
    async def predict(request: Request):
        names, _, tops = await classify(request)
        return {'model': classifier.model_name,
                'predictions': [dict(name=n, top=t) for n, t in zip(names, tops)]}

    async def heat_map(x: torch.Tensor) -> bytes:
        cfg = classifier.data_config
        return await batcher.call(overlay_png, explain_model, x[None], cfg['mean'], cfg['std'])

    @app.post('/explain')
    async def explain_image(request: Request):
        if not explain:
            raise BadInput(404, f'{classifier.model_name} has no heat map here (CvT and LG models served from '
                                f'weights have one; ONNX files do not)')
        batcher.check_room(1)
        named = await images_from_request(request, dataclasses.replace(limits, max_images=1))
        x = await run_in_threadpool(classifier.preprocess, named[0][1])
        return Response(await heat_map(x), media_type='image/png')

    @app.post('/page', response_class=HTMLResponse)
    async def page_result(request: Request):
        try:
            names, inputs, tops = await classify(request)
            heat = await heat_map(inputs[0]) if explain else None
        except BadInput as e:
            return HTMLResponse(result_page(info, '', [], error=e.reason), status_code=e.status)
        except QueueFull:
            return HTMLResponse(result_page(info, '', [], error='The server is busy: try again in a moment.'),
                                status_code=503, headers={'Retry-After': '1'})
        except DataError as e:
            return HTMLResponse(result_page(info, '', [], error=str(e)), status_code=422)
        return HTMLResponse(result_page(info, names[0], tops[0], heat))

    @app.get('/', response_class=HTMLResponse)
    async def index():
        return HTMLResponse(index_page(info, explain))

    @app.get('/health')
    async def health():
        return {'status': 'ok', 'model': classifier.model_name}

    @app.get('/info')
    async def get_info():
        return dict(info, stats=batcher.stats.as_dict())

    return app
