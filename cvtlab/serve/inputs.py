"""Turning request bodies into images, refusing what is not one with an HTTP status and a reason.

Nothing from a request is used as a path: bytes are decoded in memory, file names are only echoed back.
"""
import io
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

from PIL import Image

__all__ = ['BadInput', 'Limits', 'decode_image', 'read_limited', 'images_from_request']
IMAGE_TYPES = ('image/', 'application/octet-stream')
# the formats a request may hold: common raster images only (Pillow also parses EPS through Ghostscript, FITS,
# and dozens of rarer formats, none of which a classifier's users send and each more parser to attack)
FORMATS = ('PNG', 'JPEG', 'WEBP', 'GIF', 'BMP', 'TIFF')


class BadInput(Exception):
    """A request the server refuses: `status` (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * 2 ** 20  # a request's whole body
    max_images: int = 16  # images in one request
    max_pixels: int = 25_000_000  # width x height of one image, read from its header before decoding
    max_request_pixels: int = 50_000_000  # all of a request's images together: its decoded memory is bounded
    min_side: int = 8  # smaller images carry too little to classify (and 1x1 uploads are usually mistakes)


def decode_image(data: bytes, limits: Limits, name: str = 'image', budget: Optional[int] = None) -> Image.Image:
    """An RGB image from encoded bytes (one of FORMATS), or BadInput. `budget`: pixels the request has left
    (default `limits.max_pixels`); both are checked on the header, before any pixel is decoded."""
    if not data:
        raise BadInput(400, f'{name}: empty file')
    budget = limits.max_pixels if budget is None else min(budget, limits.max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            width, height = image.size
            if width * height > limits.max_pixels:
                raise BadInput(413, f'{name}: {width}x{height} pixels is over the limit of {limits.max_pixels:,} '
                                    f'(a decompression bomb, or an image to downscale first)')
            if width * height > budget:
                raise BadInput(413, f'{name}: the request\'s images hold over {limits.max_request_pixels:,} pixels '
                                    f'together; send fewer or smaller ones')
            image.load()  # the pixels: a truncated or corrupt file fails here
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput(413, f'{name}: refused as a decompression bomb ({e})') from None
    except Image.UnidentifiedImageError:
        raise BadInput(400, f'{name}: not an image in a format this server reads ({", ".join(FORMATS)})') from None
    except Exception as e:  # OSError (truncated), SyntaxError / ValueError (corrupt) and Pillow's others
        raise BadInput(400, f'{name}: truncated or corrupt image ({type(e).__name__})') from None
    if min(width, height) < limits.min_side:
        raise BadInput(422, f'{name}: {width}x{height} pixels is too small (at least {limits.min_side} per side)')
    from ..data import to_rgb
    return to_rgb(image)


async def read_limited(request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes` (whatever Content-Length says)."""
    declared = request.headers.get('content-length')
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadInput(413, f'body of {int(declared):,} bytes is over the limit of {max_bytes:,}')
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadInput(413, f'body is over the limit of {max_bytes:,} bytes')
        chunks.append(chunk)
    return b''.join(chunks)


async def images_from_request(request, limits: Limits) -> List[Tuple[str, Image.Image]]:
    """(name, image) for every image in a request: a multipart form (any number of file fields, up to
    `max_images`) or a raw body of type image/* or application/octet-stream. Decoding runs on a worker thread,
    never on the event loop, within the request's pixel budget."""
    from starlette.concurrency import run_in_threadpool
    named = await _encoded_images(request, limits)
    images, budget = [], limits.max_request_pixels
    for name, data in named:
        image = await run_in_threadpool(decode_image, data, limits, name, budget)
        budget -= image.width * image.height
        images.append((name, image))
    return images


async def _encoded_images(request, limits: Limits) -> List[Tuple[str, bytes]]:
    """(name, encoded bytes) of the request's images, as sent."""
    body = await read_limited(request, limits.max_bytes)
    kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
    if kind == 'multipart/form-data':
        from starlette.formparsers import MultiPartParser

        async def the_body():  # the body is read already (size-limited): parse it from memory
            yield body
        try:
            form = await MultiPartParser(request.headers, the_body(), max_files=limits.max_images,
                                         max_fields=limits.max_images + 8).parse()
        except Exception as e:  # starlette's parser: malformed multipart, too many parts
            if 'too many files' in str(e).lower():
                raise BadInput(413, f'more than {limits.max_images} images in one request') from None
            raise BadInput(400, f'malformed multipart body ({str(e)[:100]})') from None
        try:
            uploads = [value for _, value in form.multi_items() if hasattr(value, 'read')]
            if not uploads:
                raise BadInput(400, 'the multipart body holds no file (send the image as a file field)')
            named = [(upload.filename or f'image {i}', await upload.read()) for i, upload in enumerate(uploads)]
        finally:
            await form.close()
    elif kind.startswith(IMAGE_TYPES) or kind == '':
        if not body:
            raise BadInput(400, 'empty body: send an image as the body or as a multipart file field')
        named = [('body', body)]
    else:
        raise BadInput(415, f'content type {kind!r}: send image/*, application/octet-stream or multipart/form-data')
    return named
